"""The Hamming circuit's target pass: every backend on Q = B = B' queries and samples.

Workload: ``HammingCircuit(K, D, L = 10)`` with its default resistances, K in {2, 16}, D in
{64, 784}, Q = B = B' = 4096. The batches are uniform, half the tails ``z`` are rows of ``x``,
a quarter of the edges are stay edges (``w == z``) and the others change one coordinate. Every
call passes ``check_values=False`` (as a trainer calls it).

Two figures per ``(K, D)``: ``hamming_current_targets ...`` in queries/s (every backend, with
the pairwise ``"reference"`` of the same run), and ``hamming_target_comparisons ...`` in
query-sample-coordinate comparisons per second, ``Q (B + B') D`` per pass (the pairwise work the
definition implies: every tail against every sample in every coordinate; the heads, one
coordinate away, add ``O(1)`` per pair), for the fast backends.

The reference (``O(Q (B + B') D)`` comparisons in plain torch) is timed on the first ``Q_s``
queries only, ``Q_s`` the largest power of two with ``Q_s B D <= Limits.max_reference_target_work``
(at least 8), and its time scaled by ``Q / Q_s`` (the pass is linear in ``Q``): the row records
``work_fraction = Q_s / Q`` and its check line says so. Before timing, every fast backend's
targets on those ``Q_s`` queries are checked against the reference to 1e-12 of the sum of the
absolute values of each target's terms. ``"triton"`` runs only on CUDA.

Run: ``python -m benchmarks.bench_hamming_targets --threads 1 [--device cuda] [--quick]`` (a
table, rows appended to ``benchmarks/results/hamming_targets.jsonl``), or under pytest-benchmark.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import torch

from ecd2g_fast import HammingCircuit, backends, current_targets
from ecd2g_fast.hamming import targets as ht

from . import runner
from .cases import Case, Limits, Prepared

L = 10
SIZE = 4096
CATEGORIES = (2, 16)
DIMS = (64, 784)
BACKENDS = ("reference", "torch", "triton")


@functools.lru_cache(maxsize=1)
def workload(K: int, D: int, device: str = "cpu", seed: int = 0) -> tuple:
    """``(circuit, layer, z, w, x, y)`` on ``device``, the circuit's target constants computed."""
    g = torch.Generator().manual_seed(seed)
    circuit = HammingCircuit(K, D, L)
    x = torch.randint(0, K, (SIZE, D), generator=g)
    y = torch.randint(0, K, (SIZE, D), generator=g)
    z = torch.randint(0, K, (SIZE, D), generator=g)
    z[: SIZE // 2] = x[torch.randint(0, SIZE, (SIZE // 2,), generator=g)]
    w = z.clone()
    rows, coord = torch.arange(SIZE), torch.randint(0, D, (SIZE,), generator=g)
    w[rows, coord] = (z[rows, coord] + torch.randint(1, K, (SIZE,), generator=g)) % K
    w[::4] = z[::4]
    layer = torch.randint(0, L, (SIZE,), generator=g)
    ht.target_constants(circuit, device)
    return circuit, *(t.to(device) for t in (layer, z, w, x, y))


def reference_queries(D: int, limits: Limits) -> int:
    """``Q_s``: the queries the reference is timed on."""
    cap = max(8, int(limits.max_reference_target_work // (SIZE * D)))
    return min(SIZE, 1 << (cap.bit_length() - 1))


@functools.lru_cache(maxsize=2)
def reference_output(K: int, D: int, device: str, n: int) -> torch.Tensor:
    circuit, layer, z, w, x, y = workload(K, D, device)
    return current_targets(circuit, layer[:n], z[:n], w[:n], x, y, backend="reference", check_values=False)


def check(K: int, D: int, device: str, n: int, out: torch.Tensor, name: str) -> str:
    """Raise unless ``out[:n]`` equals the reference to 1e-12 of each target's terms."""
    circuit, layer, z, w, x, y = workload(K, D, device)
    expected = reference_output(K, D, device, n)
    m, e = ht.reference_drop(circuit, layer[:n], z[:n], w[:n], x, y, absolute=True)
    same = (z[:n] == w[:n]).all(1)
    scale = ht.ldexp(torch.full_like(m, circuit.G).masked_fill_(same, circuit.g) * m, e)
    error = float(((out[:n] - expected).abs() / scale).max())
    if not error <= 1e-12:
        raise AssertionError(
            f"hamming current_targets {name}: error {error:.1e} of the terms' scale; not timed"
        )
    return f"equal to reference on the first {n} queries (max err {error:.1e} of the terms' scale)"


def skip_reason(name: str, device: torch.device) -> str | None:
    if name == "triton" and device.type != "cuda":
        return "triton on CPU is the interpreter"
    try:
        backends.select("hamming_current_targets", name, device)
    except ValueError as error:
        return str(error)
    return None


def _prepare(name: str, K: int, D: int, device: str, n: int) -> Prepared:
    circuit, layer, z, w, x, y = workload(K, D, device)
    run = functools.partial(current_targets, backend=name, check_values=False)
    if name == "reference":
        fn = functools.partial(run, circuit, layer[:n], z[:n], w[:n], x, y)
        reference_output(K, D, device, n)
        verdict = f"is the reference, timed on {n} of {SIZE} queries and scaled by {SIZE / n:g}"
        return Prepared(fn, verdict, params={"reference_queries": n}, work_fraction=n / SIZE)
    fn = functools.partial(run, circuit, layer, z, w, x, y)
    verdict = check(K, D, device, n, fn(), name)
    return Prepared(fn, verdict)


def hamming_target_cases(device: torch.device, limits: Limits) -> Iterator[Case]:
    for K in CATEGORIES:
        for D in DIMS:
            n = reference_queries(D, limits)
            params = {"Q": SIZE, "B": SIZE, "D": D, "K": K, "L": L}
            comparisons = SIZE * 2 * SIZE * D
            for name in BACKENDS:
                prepare = functools.partial(_prepare, name, K, D, str(device), n)
                why = skip_reason(name, device)
                yield Case(
                    "hamming-targets",
                    f"hamming_current_targets K={K} D={D} Q=B={SIZE}",
                    name,
                    prepare,
                    reference="reference",
                    unit="queries/s",
                    work=SIZE,
                    params=params,
                    skip=why,
                )
                if name != "reference":
                    yield Case(
                        "hamming-targets",
                        f"hamming_target_comparisons K={K} D={D} Q=B={SIZE}",
                        name,
                        prepare,
                        reference="reference",
                        unit="comparisons/s",
                        work=comparisons,
                        params=params,
                        skip=why,
                    )


GROUPS = {"hamming-targets": hamming_target_cases}

#: pytest-benchmark (``make bench``): every case of GROUPS, parametrized by benchmarks/conftest.py.
test_bench = runner.run_benchmark


if __name__ == "__main__":
    runner.main(GROUPS, __doc__.split("\n\n")[0], "hamming_targets")
