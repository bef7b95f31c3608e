"""How far the two ends of an edge disagree in a learned Hamming log-field.

A network with the scalar head (``head="scalar"``) gives one value per state, so the log-ratio
across an edge ``(l, z) -> (l', w)`` seen from ``z`` is minus the one seen from ``w``: the
currents derive from a potential. A ratio head (``head="ratios"``) outputs each vertex's
log-ratios separately, and nothing but training ties the two ends together. For kernel-walk
queries ``z`` around a run's reference data (the held-out images, or fresh exact draws of a
mixture; the recipe's query law, half the distances where the walk goes) this measures
``d(z -> w) + d(w -> z)`` (0 for a potential) by layer band, on two kinds of edges:

- ``uniform``: one uniform forward edge from each query (``bands``): its RMS next to the mean ``|d|``;
- ``walk``: one edge drawn as the walk at ``z`` draws it, in proportion to the positive
  out-currents of the field (either direction; ``walk_bands``): its RMS and mean, and the mean of
  each end's log-ratio. The walk picks among many noisy log-ratios, so the ends it takes can
  disagree on average where a uniform edge does not.

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


@torch.no_grad()
def edge_disagreement(
    field: HammingNetField,
    layer: torch.Tensor,
    z: torch.Tensor,
    slot: torch.Tensor,
    direction: torch.Tensor | None = None,
):
    """``(d, mismatch)``, ``(n,)`` float64 each: the log-ratio ``S_{l'}(w) - S_l(z)`` across the edge
    in ``slot`` of ``(n, D)`` states ``z`` at ``(n,)`` layers, as the walk at ``z`` reads it, and its
    sum with the log-ratio back that the walk at ``(l', w)`` reads. ``direction`` ``(n,)``: 0
    forward (to ``l + 1``, layers below ``L``), 1 backward (to ``l - 1``, layers above 0); None:
    all forward."""
    if direction is None:
        direction = torch.zeros_like(layer)
    w = field.circuit.apply_slot(z, slot)
    there = torch.where(direction == 0, layer + 1, layer - 1)
    rows = torch.arange(z.shape[0], device=z.device)
    here, ahead, behind = field.outlet_log_fields(layer, z)
    far, far_ahead, far_behind = field.outlet_log_fields(there, w)
    d = torch.where(direction == 0, ahead[rows, slot], behind[rows, slot]) - here
    back = field.circuit.reverse_slot(z, w)
    d_back = torch.where(direction == 0, far_behind[rows, back], far_ahead[rows, back]) - far
    return d, d + d_back


@torch.no_grad()
def walk_edges(
    field: HammingNetField, layer: torch.Tensor, z: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(keep, direction, slot)``: one edge of each ``(n, D)`` state at ``(n,)`` layers drawn in
    proportion to the positive parts of the field's out-currents (bidirectional), as the walk draws
    its next move; ``keep`` ``(n,)`` bool marks the states with a positive out-current (the others,
    at layer ``L``, only flow into the sink), and ``direction``, ``slot`` ``(m,)`` int64 are theirs."""
    N = field.circuit.num_neighbours
    currents = field.outlet_currents(layer, z, "bidirectional")[:, : 2 * N].clamp_min(0)
    keep = currents.sum(1) > 0
    drawn = torch.multinomial(currents[keep], 1, generator=generator).squeeze(1)
    return keep, drawn // N, drawn % N


def run(args: argparse.Namespace) -> dict:
    with RunFolder(args.run_folder).locked() as folder:
        run_ = runner.Run.of_folder(folder)
        field = run_.load_field()
        config = json.loads((folder / "config.json").read_text())
    c, g = field.circuit, torch.Generator().manual_seed(args.seed)
    data = run_.target.reference_and_floor(args.queries, g)[0]  # held-out images, or exact draws
    layer_all, z_all = KernelQueries(c, walk_fraction=0.5)(data, args.queries, g)[:2]
    below = layer_all < c.num_layers
    layer, z = layer_all[below], z_all[below]
    slot = torch.randint(0, c.num_neighbours, (z.shape[0],), generator=g)
    forward, mismatch = edge_disagreement(field, layer, z, slot)
    bands, walk_bands = {}, {}
    for lo, hi in BANDS:
        m = (layer >= lo) & (layer < min(hi, c.num_layers))
        if bool(m.any()):
            bands[f"{lo}-{hi}"] = {
                "edges": int(m.sum()),
                "mismatch_rms": float(mismatch[m].square().mean().sqrt()),
                "mean_abs_log_ratio": float(forward[m].abs().mean()),
            }
    keep, direction, slot = walk_edges(field, layer_all, z_all, g)
    layer_all, z_all = layer_all[keep], z_all[keep]
    d, mismatch = edge_disagreement(field, layer_all, z_all, slot, direction)
    for lo, hi in BANDS:
        m = (layer_all >= lo) & (layer_all < (hi if hi < c.num_layers else hi + 1))
        if bool(m.any()):
            walk_bands[f"{lo}-{hi}"] = {
                "edges": int(m.sum()),
                "mismatch_rms": float(mismatch[m].square().mean().sqrt()),
                "mismatch_mean": float(mismatch[m].mean()),
                "mean_log_ratio": float(d[m].mean()),
                "mean_log_ratio_back": float((mismatch - d)[m].mean()),
            }
    train = config["train"]
    return {
        "run": Path(args.run_folder).name,
        "head": train["model_kwargs"].get("head", "scalar"),
        "consistency_weight": train.get("consistency_weight", 0.0),
        "queries": args.queries,
        "seed": args.seed,
        "bands": bands,
        "walk_bands": walk_bands,
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
            f"uniform edges, layers {band}: {v['edges']} edges, RMS disagreement {v['mismatch_rms']:.3f}, "
            f"mean |log-ratio| {v['mean_abs_log_ratio']:.3f}"
        )
    for band, v in row["walk_bands"].items():
        print(
            f"walk edges, layers {band}: {v['edges']} edges, disagreement RMS {v['mismatch_rms']:.3f} "
            f"mean {v['mismatch_mean']:+.3f}, log-ratio there {v['mean_log_ratio']:+.3f} and back "
            f"{v['mean_log_ratio_back']:+.3f}"
        )
    return row


if __name__ == "__main__":
    main()
