"""Learning noise -> data on a Hamming circuit at D = 64: a first measurement, not yet an experiment.

Task ``bernoulli-mixture-64``: a mixture of ten product-Bernoulli distributions on ``{0, 1}^64``
(:class:`ecd2g_fast.experiments.highdim.BernoulliMixture`, seed 0), fresh exact samples every step;
uniform noise as the source. ``train(HammingCircuit(2, 64, L), noise, data)`` with the Hamming
model's default recipe (width and depth and steps from the command line), then ``--walkers``
bidirectional walks of the EMA field, capped at ``--max-moves`` moves (walkers still moving are
counted, not sampled: a learned log-field can cycle across a bridged dead end). Metrics of the
finished walkers against 20,000 exact draws, next to the floor of as many exact draws
(:func:`~ecd2g_fast.experiments.highdim.sample_metrics`).

    python -m benchmarks.highdim_learning [--steps 10000] [--width 256] [--depth 3] [--layers 64]
        [--walkers 1000] [--max-moves 1000] [--threads 1]

Writes one JSON line per run to ``benchmarks/results/highdim_learning.jsonl`` (settings, seconds,
metrics, machine, the command).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import ecd2g_fast as E
from ecd2g_fast.experiments.highdim import BernoulliMixture, sample_metrics

from . import harness

RESULTS = harness.RESULTS / "highdim_learning.jsonl"
DIM = 64


def run(args: argparse.Namespace) -> dict:
    mixture = BernoulliMixture.make(DIM, 10, seed=0)
    circuit = E.HammingCircuit(2, DIM, args.layers)
    data_rng = torch.Generator().manual_seed(1)
    noise_rng = torch.Generator().manual_seed(2)

    def data(n: int) -> torch.Tensor:
        return mixture.sample(n, data_rng)[0]

    def noise(n: int) -> torch.Tensor:
        return torch.randint(0, 2, (n, DIM), generator=noise_rng)

    start = time.perf_counter()
    result = E.train(
        circuit,
        noise,
        data,
        steps=args.steps,
        model_kwargs={"width": args.width, "depth": args.depth},
        progress=not args.quiet,
    )
    train_seconds = time.perf_counter() - start
    field = result.field
    x0 = noise(args.walkers)
    start = time.perf_counter()
    with torch.no_grad():
        out, moves = E.sample(
            field, x0, generator=3, max_moves=args.max_moves, unfinished="keep", return_moves=True
        )
    sample_seconds = time.perf_counter() - start
    finished = moves >= 0
    eval_rng = torch.Generator().manual_seed(4)
    reference = mixture.sample(20_000, eval_rng)[0]
    floor = mixture.sample(int(finished.sum()), eval_rng)[0]
    return {
        "task": "bernoulli-mixture-64",
        "steps": args.steps,
        "width": args.width,
        "depth": args.depth,
        "layers": args.layers,
        "parameters": sum(p.numel() for p in result.model.parameters()),
        "train_seconds": train_seconds,
        "final_loss": float(result.losses[-100:].mean()),
        "walkers": args.walkers,
        "max_moves": args.max_moves,
        "finished": int(finished.sum()),
        "bridged_dead_ends": int(field.bridged),
        "mean_moves": float(moves[finished].double().mean()) if bool(finished.any()) else None,
        "sample_seconds": sample_seconds,
        "metrics": sample_metrics(out[finished], reference, floor, 2, mixture),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--layers", type=int, default=64)
    parser.add_argument("--walkers", type=int, default=1000)
    parser.add_argument("--max-moves", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    meta = harness.run_metadata("cpu", argv)
    row = {**run(args), "meta": meta}
    harness.append_jsonl(RESULTS, [row])
    print(json.dumps(row, indent=1))
    return row


if __name__ == "__main__":
    main()
