"""Helper for tests/test_distributed.py, run under ``torchrun --nproc_per_node=2`` (gloo, CPU).

Usage: ``python -m torch.distributed.run --standalone --nproc_per_node=2 _distributed_train.py OUT_DIR``.
Every rank trains with :func:`distributed_case_kwargs` and writes ``OUT_DIR/rank<r>.pt``.
"""

from __future__ import annotations

import os
import sys

import torch

import ecd2g_fast as E
from ecd2g_fast.training import train


def distributed_cases() -> dict:
    """The runs compared between 2 processes and 1 (shared with the test)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(50, (400, 1), generator=g)
    y = torch.randint(15, 35, (400, 1), generator=g)
    # SGD: Adam turns the summation-order differences of the all-reduced gradients into full steps
    common = dict(
        steps=25,
        batch_size=64,
        num_queries=61,
        seed=3,
        progress=False,
        checkpoint_every=10,
        optimizer="sgd",
        lr=0.01,
    )
    return {
        "current-data": (E.Circuit(50, 1, 10), x, y, dict(model="current", queries="data", **common)),
        "potential-uniform": (
            E.Circuit(50, 1, 10),
            x,
            y,
            dict(model="potential", queries="uniform", **common),
        ),
        # the Hamming ratio head with its consistency term (two network calls per step)
        "hamming-ratios": (
            E.HammingCircuit(2, 6, 4),
            torch.zeros(400, 6, dtype=torch.int64),
            torch.randint(0, 2, (400, 6), generator=g),
            dict(
                model="hamming",
                queries="kernel",
                model_kwargs={"width": 16, "depth": 1, "head": "ratios", "sink": "learned"},
                sink_labels="contrast",
                consistency_weight=4.0,
                **common,
            ),
        ),
    }


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    out = {}
    for name, (c, x, y, kwargs) in distributed_cases().items():
        r = train(c, x, y, checkpoint_path=os.path.join(out_dir, f"{name}.pt"), **kwargs)
        out[name] = {
            "losses": r.losses,
            "model": r.model.state_dict(),
            "last_iterate": r.last_iterate.state_dict(),
            "world_size": r.world_size,
        }
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
