"""Sampler backends on the issue's workload: B walkers through a 12 x 12 grid (K=12, D=2, L=10),
uniform source -> a 2D Gaussian target, ExactField, bidirectional walk.

Two ways to run it:

* ``python benchmarks/bench_sampler.py [--walkers B] [--threads T] [--repeats R] [--backends ...]``
  times each backend (best of R, backends in round robin, after a warm-up run that also checks
  the output against the target), prints a table with samples/s and the speed-up over "torch"
  measured in the same run, and appends one JSON row per backend to
  ``benchmarks/results/sampler.jsonl``.
* ``pytest benchmarks/bench_sampler.py --benchmark-only``: the same cases under
  pytest-benchmark (``ECD2G_BENCH_WALKERS`` sets B, default 100000; one round each, the torch
  baseline takes tens of seconds on a 2-core CPU).

Backends: "torch" (the plain-torch reference walk), "cpp" (compiled; for this potential field the
on-the-fly O(M) op), "cpp-generic" (compiled, the field wrapped as a plain current field, so
currents are evaluated in torch chunk by chunk), "potential" (O(log M) tables, compiled draw),
"potential-torch" (O(log M) tables, plain-torch draw).
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
from ecd2g_fast import _extension
from ecd2g_fast.fields import Field
from ecd2g_fast.sampling.potential import potential_drawer
from ecd2g_fast.sampling.reference import walk

K, D, L = 12, 2, 10
BACKENDS = ("torch", "cpp", "cpp-generic", "potential", "potential-torch")
RESULTS = Path(__file__).parent / "results" / "sampler.jsonl"


class _CurrentField(Field):
    """The ExactField seen as a generic current field (no potential table)."""

    def __init__(self, inner):
        self.inner, self.circuit = inner, inner.circuit

    @property
    def device(self):
        return self.inner.device

    def currents_to_next(self, layer, z, start, stop):
        return self.inner.currents_to_next(layer, z, start, stop)

    def currents_from_prev(self, layer, z, start, stop):
        return self.inner.currents_from_prev(layer, z, start, stop)

    def sink_currents(self, z):
        return self.inner.sink_currents(z)


def workload(walkers: int, device: str = "cpu"):
    """The circuit, field, target pmf and ``(B, 2)`` start states of the benchmark."""
    circuit = E.Circuit(K, D, L)
    M = circuit.num_states
    p = torch.full((M,), 1.0 / M, dtype=torch.float64, device=device)
    axis = torch.arange(K, dtype=torch.float64, device=device)
    density = torch.exp(-((axis[:, None] - 7.0) ** 2 / 8.0 + (axis[None, :] - 4.0) ** 2 / 4.5))
    q = (density / density.sum()).flatten()
    field = E.ExactField(circuit, p, q)
    x0 = circuit.index_state(torch.multinomial(p, walkers, replacement=True, generator=torch.Generator(device).manual_seed(0)))
    return circuit, field, q, x0


def run_backend(name: str, field, x0: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """Terminal flat states of one backend."""
    c = field.circuit
    g = torch.Generator(x0.device).manual_seed(seed)
    if name == "potential-torch":
        draw = potential_drawer(field, "bidirectional", use_extension=False)
        out, _ = walk(field, c.state_index(x0), "bidirectional", g, 1, (c.num_layers + 1) * c.num_states, draw=draw)
        return out
    if name == "cpp-generic":
        return c.state_index(E.sample(_CurrentField(field), x0, backend="cpp", generator=g))
    return c.state_index(E.sample(field, x0, backend=name, generator=g))


def check_output(name: str, terminal: torch.Tensor, q: torch.Tensor) -> float:
    """Total variation to the target; raises if it is far above the sampling noise."""
    counts = torch.bincount(terminal.cpu(), minlength=q.numel()).double()
    tv = 0.5 * float((counts / counts.sum() - q.cpu()).abs().sum())
    # sampling noise alone: E[TV] <= 0.5 sqrt(M / B); 4x that is far outside it
    bound = 2.0 * (q.numel() / counts.sum().item()) ** 0.5
    if tv > bound:
        raise AssertionError(f"{name}: TV to the target {tv:.4f} > {bound:.4f}: wrong output, not timed")
    return tv




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--walkers", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    circuit, field, q, x0 = workload(args.walkers, args.device)
    names = []
    for name in args.backends:
        if name in ("cpp", "cpp-generic") and not _extension.has_device_kernels(torch.device(args.device)):
            print(f"{name}: skipped ({_extension.device_unavailable_reason(torch.device(args.device))})")
            continue
        names.append(name)
    tvs = {name: check_output(name, run_backend(name, field, x0), q) for name in names}  # also warms up
    # round robin, best of R: on a shared machine every backend sees the same load conditions
    times = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in names:
            if args.device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            run_backend(name, field, x0, seed=100 + repeat)
            if args.device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    rows = [
        {"backend": n, "seconds": min(times[n]), "all_seconds": times[n], "tv_to_target": tvs[n]} for n in names
    ]
    base = next((r["seconds"] for r in rows if r["backend"] == "torch"), None)
    meta = {
        "op": "sample",
        "walkers": args.walkers,
        "K": K,
        "D": D,
        "L": L,
        "device": args.device if args.device != "cpu" else f"cpu ({platform.processor() or platform.machine()})",
        "threads": args.threads,
        "torch": torch.__version__,
        "commit": harness.short_commit(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average_1min": os.getloadavg()[0],
    }
    print(f"B={args.walkers} K={K} D={D} L={L} device={args.device} threads={args.threads} "
          f"load={meta['load_average_1min']:.1f}")
    print(f"{'backend':<16}{'best s':>10}{'samples/s':>14}{'vs torch':>10}  all runs (s)")
    for r in rows:
        r["samples_per_second"] = args.walkers / r["seconds"]
        r["speedup_vs_torch"] = base / r["seconds"] if base else None
        ratio = f"{r['speedup_vs_torch']:.1f}x" if base else "-"
        runs = ", ".join(f"{t:.3f}" for t in r["all_seconds"])
        print(f"{r['backend']:<16}{r['seconds']:>10.3f}{r['samples_per_second']:>14,.0f}{ratio:>10}  {runs}")
    if not args.no_save:
        harness.append_jsonl(RESULTS, [{**meta, **r} for r in rows])


# ----------------------------------------------------------------------------- pytest-benchmark

try:
    import pytest
except ImportError:  # the script mode needs no pytest
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="module")
    def bench_workload():
        return workload(int(os.environ.get("ECD2G_BENCH_WALKERS", "100000")))

    @pytest.mark.parametrize("name", BACKENDS)
    def test_bench_sample(benchmark, bench_workload, name):
        if name in ("cpp", "cpp-generic") and not _extension.available():
            pytest.skip("extension not built")
        _, field, q, x0 = bench_workload
        check_output(name, run_backend(name, field, x0), q)
        benchmark.extra_info.update(walkers=x0.shape[0], threads=torch.get_num_threads())
        benchmark.pedantic(run_backend, args=(name, field, x0), rounds=1, iterations=1)


if __name__ == "__main__":
    main()
