"""One training step of :func:`ecd2g_fast.training.train`, both models, batch 256 and 65536.

Workload: the 2D experiment's circuit (K = 64, D = 2, M = 4096, L = 10), uniform source samples,
a 2D Gaussian target (100k samples each), ``num_queries = batch_size``, uniform queries. A step is
everything :func:`train` does per step: drawing the data and queries, the target pass
(``backend="auto"``), normalisation, forward/backward of the MLP (bf16 autocast on CUDA), the SGD
update and the weight average.

Two ways to run it:

* ``pytest benchmarks/bench_training.py --benchmark-only`` (``make bench``): one case per model,
  batch size and device under pytest-benchmark.
* ``python benchmarks/bench_training.py [--device cuda] [--batches ...] [--repeats R]``: best of R
  steps after two warm-up steps, a table with steps/s, queries/s and (CUDA) the peak memory, one
  JSON row per case appended to ``benchmarks/results/training.jsonl``.

Before timing, each case checks that its loss is finite (a correctness check for a step has
nothing more specific to compare to; the training tests cover the numbers).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  (benchmarks/ is not a package)

import ecd2g_fast as E
from ecd2g_fast import distributed
from ecd2g_fast.training import _Options, _Trainer

K, D, L = 64, 2, 10
MODELS = ("current", "potential")
BATCHES = (256, 65536)
RESULTS = Path(__file__).parent / "results" / "training.jsonl"


def make_trainer(model: str, batch: int, device: str = "cpu", seed: int = 0) -> _Trainer:
    """A ready trainer (what :func:`train` builds before its loop) for one case."""
    g = torch.Generator().manual_seed(seed)
    circuit = E.Circuit(K, D, L)
    source = torch.randint(K, (100_000, D), generator=g)
    target = (torch.randn(100_000, D, generator=g) * K / 10 + (K - 1) / 2).round().clamp(0, K - 1).long()
    options = _Options(
        model=model, steps=10**9, batch_size=batch, num_queries=batch, queries="uniform", lr=0.01,
        momentum=0.9, weight_decay=0.0, ema_decay=0.999, model_kwargs={}, seed=seed, amp=None,
        backend="auto", checkpoint_path=None, checkpoint_every=10**9, resume=False, progress=False,
    )  # fmt: skip
    return _Trainer(distributed.setup(device), circuit, source, target, options)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()




def checked_step(trainer: _Trainer, step_model) -> float:
    loss = trainer.train_step(step_model)
    if not math.isfinite(loss):
        raise AssertionError(f"non-finite loss {loss}; not timed")
    return loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    meta = {
        "op": "train_step",
        "K": K,
        "D": D,
        "L": L,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "commit": harness.short_commit(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average_1min": os.getloadavg()[0],
    }
    print(f"device={meta['device']} threads={meta['threads']} load={meta['load_average_1min']:.1f}")
    print(f"{'model':<10}{'batch':>8}{'best ms':>10}{'steps/s':>10}{'Mqueries/s':>12}{'peak MiB':>10}")
    rows = []
    for model in args.models:
        for batch in args.batches:
            trainer = make_trainer(model, batch, args.device)
            step_model = trainer.wrap()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            for _ in range(2):
                checked_step(trainer, step_model)
            runs = []
            for _ in range(args.repeats):
                _sync(device)
                start = time.perf_counter()
                trainer.train_step(step_model)
                _sync(device)
                runs.append(time.perf_counter() - start)
            best = min(runs)
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
            rows.append({**meta, "model": model, "batch": batch, "seconds": best, "peak_mib": peak})
            print(f"{model:<10}{batch:>8}{best * 1e3:>10.2f}{1 / best:>10.1f}{batch / best / 1e6:>12.3f}{peak:>10.0f}")
    if not args.no_save:
        harness.append_jsonl(RESULTS, rows)


# ----------------------------------------------------------------------------- pytest-benchmark

try:
    import pytest
except ImportError:  # the script mode needs no pytest
    pytest = None

if pytest is not None:

    @pytest.mark.parametrize("device", harness.devices())
    @pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"B={b}")
    @pytest.mark.parametrize("model", MODELS)
    def test_bench_train_step(benchmark, model, batch, device):
        trainer = make_trainer(model, batch, device)
        step_model = trainer.wrap()
        checked_step(trainer, step_model)

        def run():
            loss = trainer.train_step(step_model)
            _sync(torch.device(device))
            return loss

        benchmark.extra_info.update(model=model, batch=batch, K=K, D=D, L=L, threads=torch.get_num_threads())
        benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)


if __name__ == "__main__":
    main()
