"""How far the two ends of an edge disagree in a learned Hamming log-field.

A network with the scalar head (``head="scalar"``) gives one value per state, so the log-ratio
across an edge ``(l, z) -> (l+1, w)`` seen from ``z`` is minus the one seen from ``w``: the
currents derive from a potential. A ratio head (``head="ratios"``) outputs each vertex's
log-ratios separately, and nothing but training ties the two ends together. For kernel-walk
queries ``z`` around a run's reference data (the held-out images, or fresh exact draws of a
mixture; the recipe's query law, half the distances where the walk goes) and one uniform edge forward from each, this measures ``d(z -> w) + d(w -> z)``
(0 for a potential) by layer band: its RMS next to the mean ``|d|``.

    python -m benchmarks.edge_consistency RUN_FOLDER [--queries 4000] [--seed 0]

Rows are printed and appended to ``benchmarks/results/edge_consistency.jsonl``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ecd2g_fast.experiments import runner
from ecd2g_fast.experiments.folder import RunFolder
from ecd2g_fast.hamming import HammingNetField
from ecd2g_fast.hamming.learning import KernelQueries

from . import harness

RESULTS = Path(__file__).parent / "results" / "edge_consistency.jsonl"
BANDS = ((0, 32), (32, 48), (48, 56), (56, 64))


def reverse_slot(circuit, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``(n,)`` int64: the slot of ``(n, D)`` states ``w`` that leads back to ``z`` (each ``w[b]`` one
    slot of ``z[b]`` away)."""
    coordinate = (z != w).long().argmax(1)  # the changed coordinate (any, for the stay slot)
    return circuit.slot_of(w, coordinate, z.gather(1, coordinate[:, None]).squeeze(1))


@torch.no_grad()
def edge_disagreement(field: HammingNetField, layer: torch.Tensor, z: torch.Tensor, slot: torch.Tensor):
    """``(d_forward, mismatch)``, ``(n,)`` float64 each: the log-ratio ``S_{l+1}(w) - S_l(z)`` across
    the forward edge in ``slot`` of ``(n, D)`` states ``z`` at ``(n,)`` layers below ``L``, as the
    walk at ``z`` reads it, and its sum with the backward log-ratio the walk at ``(l+1, w)`` reads."""
    w = field.circuit.apply_slot(z, slot)
    rows = torch.arange(z.shape[0], device=z.device)
    here, ahead, _ = field.outlet_log_fields(layer, z)
    there, _, behind = field.outlet_log_fields(layer + 1, w)
    forward = ahead[rows, slot] - here
    return forward, forward + behind[rows, reverse_slot(field.circuit, z, w)] - there


def run(args: argparse.Namespace) -> dict:
    with RunFolder(args.run_folder).locked() as folder:
        run_ = runner.Run.of_folder(folder)
        field = run_.load_field()
        config = json.loads((folder / "config.json").read_text())
    c, g = field.circuit, torch.Generator().manual_seed(args.seed)
    data = run_.target.reference_and_floor(args.queries, g)[0]  # held-out images, or exact draws
    layer, z = KernelQueries(c, walk_fraction=0.5)(data, args.queries, g)[:2]
    below = layer < c.num_layers
    layer, z = layer[below], z[below]
    slot = torch.randint(0, c.num_neighbours, (z.shape[0],), generator=g)
    forward, mismatch = edge_disagreement(field, layer, z, slot)
    bands = {}
    for lo, hi in BANDS:
        m = (layer >= lo) & (layer < min(hi, c.num_layers))
        if bool(m.any()):
            bands[f"{lo}-{hi}"] = {
                "edges": int(m.sum()),
                "mismatch_rms": float(mismatch[m].square().mean().sqrt()),
                "mean_abs_log_ratio": float(forward[m].abs().mean()),
            }
    head = config["train"]["model_kwargs"].get("head", "scalar")
    return {
        "run": Path(args.run_folder).name,
        "head": head,
        "queries": args.queries,
        "seed": args.seed,
        "bands": bands,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_folder")
    parser.add_argument("--queries", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    row = run(args)
    harness.append_jsonl(RESULTS, [row])
    for band, v in row["bands"].items():
        print(
            f"layers {band}: {v['edges']} edges, RMS disagreement {v['mismatch_rms']:.3f}, mean |log-ratio| {v['mean_abs_log_ratio']:.3f}"
        )
    return row


if __name__ == "__main__":
    main()
