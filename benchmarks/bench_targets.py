"""The current-target pass (eq. 13): every available backend on Q = B queries and batch rows.

Workload: K = 256 categories, D in {1, 2, 64} (M = 256 and 65536: exact int64 keys; 256**64:
hashed keys), L = 10, Q = B = B' in {256, 8192, 65536}. The source batch ``x`` is uniform, the
target batch ``y`` has duplicates (drawn from 64 states), half the queries ``z`` are rows of ``x``
(hits), a quarter have ``w == z``.

Two ways to run it:

* ``pytest benchmarks/bench_targets.py --benchmark-only`` (``make bench``): one case per backend,
  size and D, under pytest-benchmark.
* ``python benchmarks/bench_targets.py [--device cuda] [--threads T] [--sizes ...] [--dims ...]``:
  best of 5 per case, a table with queries/s and the speed-up over "torch" measured in the same
  run, one JSON row per case appended to ``benchmarks/results/targets.jsonl``. On a shared CPU
  ``--threads 1`` gives repeatable numbers.

Every call passes ``check_values=False`` (the pass as the trainer calls it: the default range
check adds a device-to-host copy, a sync on CUDA, to each call). Each backend's output is checked
against the "torch" backend before it is timed. "reference"
(pairwise, O(Q B D)) runs only where ``Q B D <= 2**24``; "triton" runs only on CUDA (on CPU it
would be Triton's interpreter, a correctness tool).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  (benchmarks/ is not a package)

import ecd2g_fast as E
from ecd2g_fast import backends
from ecd2g_fast.targets import current_targets

K, L = 256, 10
SIZES = (256, 8192, 65536)
DIMS = (1, 2, 64)
BACKENDS = ("reference", "torch", "triton")
REFERENCE_MAX_WORK = 2**24
RESULTS = Path(__file__).parent / "results" / "targets.jsonl"


def workload(size: int, dim: int, device: str = "cpu", seed: int = 0):
    """``(circuit, layer, z, w, x, y)`` of one case, on ``device``."""
    g = torch.Generator().manual_seed(seed)
    circuit = E.Circuit(K, dim, L)
    x = torch.randint(0, K, (size, dim), generator=g)
    pool = torch.randint(0, K, (64, dim), generator=g)
    y = pool[torch.randint(0, 64, (size,), generator=g)]
    z = torch.randint(0, K, (size, dim), generator=g)
    z[: size // 2] = x[torch.randint(0, size, (size // 2,), generator=g)]
    w = torch.randint(0, K, (size, dim), generator=g)
    w[::4] = z[::4]
    layer = torch.randint(0, L, (size,), generator=g)
    return circuit, *(t.to(device) for t in (layer, z, w, x, y))


def runnable(name: str, size: int, dim: int, device: torch.device) -> str | None:
    """``None`` if the backend runs on this case, else why not."""
    if name == "reference" and size * size * dim > REFERENCE_MAX_WORK:
        return f"reference is O(Q B D): Q B D > {REFERENCE_MAX_WORK}"
    if name == "triton" and device.type != "cuda":
        return "triton on CPU is the interpreter"
    try:
        backends.select("current_targets", name, device)
    except ValueError as error:
        return str(error)
    return None


def check_against_torch(name: str, case, out: torch.Tensor) -> None:
    """Raise unless ``out`` equals the "torch" backend's result to 1e-12 of each target's terms."""
    circuit, layer, z, w, x, y = case
    expected = current_targets(circuit, layer, z, w, x, y, backend="torch")
    a, b = circuit.a.to(layer.device), circuit.b.to(layer.device)
    # |terms| <= C ((2l+1) s + a_l + b_l + a_{l+1} + b_{l+1}) (p_hat, q_hat <= 1; 1/M < 1)
    terms = (2 * layer + 1).double() * circuit.s + 2 * (a[layer] + b[layer] + a[layer + 1] + b[layer + 1])
    scale = torch.where((z == w).all(1), circuit.g * terms, circuit.G * terms)
    bad = (out - expected).abs() > 1e-12 * scale
    if bool(bad.any()):
        raise AssertionError(f"{name}: {int(bad.sum())} targets differ from the torch backend; not timed")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--dims", type=int, nargs="+", default=list(DIMS))
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    meta = {
        "op": "current_targets",
        "K": K,
        "L": L,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.machine()})",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "commit": harness.short_commit(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average_1min": os.getloadavg()[0],
    }
    print(f"device={meta['device']} threads={meta['threads']} load={meta['load_average_1min']:.1f}")
    print(f"{'D':>4}{'Q=B':>8}  {'backend':<10}{'best ms':>10}{'Mqueries/s':>12}{'vs torch':>10}")
    rows = []
    for dim in args.dims:
        for size in args.sizes:
            case = workload(size, dim, args.device)
            times = {}
            for name in args.backends:
                why = runnable(name, size, dim, device)
                if why:
                    print(f"{dim:>4}{size:>8}  {name:<10}skipped: {why}")
                    continue
                check_against_torch(name, case, current_targets(*case, backend=name, check_values=False))
                runs = []
                for _ in range(args.repeats):
                    _sync(device)
                    start = time.perf_counter()
                    current_targets(*case, backend=name, check_values=False)
                    _sync(device)
                    runs.append(time.perf_counter() - start)
                times[name] = min(runs)
                rows.append(
                    {**meta, "D": dim, "Q": size, "B": size, "backend": name, "seconds": min(runs)}
                    | {"queries_per_second": size / min(runs), "all_seconds": runs}
                )
            for name, seconds in times.items():
                ratio = f"{times['torch'] / seconds:.1f}x" if "torch" in times else "-"
                print(
                    f"{dim:>4}{size:>8}  {name:<10}{seconds * 1e3:>10.2f}"
                    f"{size / seconds / 1e6:>12.2f}{ratio:>10}"
                )
    if not args.no_save:
        harness.append_jsonl(RESULTS, rows)


# ----------------------------------------------------------------------------- pytest-benchmark

try:
    import pytest
except ImportError:  # the script mode needs no pytest
    pytest = None

if pytest is not None:

    @pytest.mark.parametrize("device", harness.devices())
    @pytest.mark.parametrize("name", BACKENDS)
    @pytest.mark.parametrize("size", SIZES, ids=lambda s: f"Q=B={s}")
    @pytest.mark.parametrize("dim", DIMS, ids=lambda d: f"D={d}")
    def test_bench_current_targets(benchmark, dim, size, name, device):
        why = runnable(name, size, dim, torch.device(device))
        if why:
            pytest.skip(why)
        case = workload(size, dim, device)
        check_against_torch(name, case, current_targets(*case, backend=name, check_values=False))

        def run():
            out = current_targets(*case, backend=name, check_values=False)
            _sync(torch.device(device))
            return out

        benchmark.extra_info.update(queries=size, batch=size, D=dim, K=K, threads=torch.get_num_threads())
        benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)


if __name__ == "__main__":
    main()
