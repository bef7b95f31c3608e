"""The current-target pass (eq. 13): every available backend on Q = B queries and batch rows.

Workload: K = 256 categories, D in ``Limits.target_dims`` = {1, 2, 64} (M = 256 and 65536: exact
int64 keys; 256**64: hashed keys), L = 10, Q = B = B' in ``Limits.target_sizes`` = {256, 8192,
65536}. The source batch ``x`` is uniform, the target batch ``y`` has duplicates (drawn from 64
states), half the queries ``z`` are rows of ``x`` (hits), a quarter have ``w == z``.

Every call passes ``check_values=False`` (the pass as the trainer calls it: the default range
check adds a device-to-host copy, a sync on CUDA, to each call). Before it is timed, each
backend's output is checked against the pairwise ``"reference"`` backend (O(Q B D), run only
where ``Q B D`` is within ``Limits.max_reference_target_work``), or against ``"torch"`` where the
reference is skipped, to 1e-12 of each target's terms. ``"triton"`` runs only on CUDA (on the CPU
it would be Triton's interpreter, a correctness tool).

``"compiled"`` is not a backend of the table but what a user writes:
``torch.compile(current_targets, fullgraph=True, dynamic=False)`` with ``backend="torch"``
(inductor fuses the pass: on the CPU into C++ loops, on CUDA into its own Triton kernels). Its
compilation (seconds) happens while preparing, untimed; Dynamo's caches are reset first, so that
every case compiles its own static-shape graph.

Run: ``python -m benchmarks.bench_targets [--device cuda] [--threads 1] [--set target_sizes=8192]``
(a table, rows appended to ``benchmarks/results/targets.jsonl``), ``python -m benchmarks.report
--cases targets``, or under pytest-benchmark with ``make bench``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import torch

import ecd2g_fast as E
from ecd2g_fast import backends
from ecd2g_fast.targets import current_targets

from . import runner
from .cases import Case, Limits, Prepared

K, L = 256, 10
BACKENDS = ("reference", "torch", "triton", "compiled")
#: How the bytes of this family's rows are counted (the reports print it).
NOTES = {
    "bytes": {
        "targets": "compulsory DRAM traffic, a lower bound: read layer (8 B) and z, w (2 x 8 D B) per "
        "query, x, y (2 x 8 D B) per batch row, write 8 B per query; the count table (or the sort of "
        "the batch keys) and the count gathers (or binary searches) are not counted",
    }
}


@functools.lru_cache(maxsize=1)
def workload(size: int, dim: int, device: str = "cpu", seed: int = 0) -> tuple:
    """``(circuit, layer, z, w, x, y)`` of one case on ``device``: ``(Q,)`` int64 layers in
    ``[0, L)``, ``(Q, D)`` int64 queries ``z``, ``w`` and ``(B, D)`` int64 batches ``x``, ``y``."""
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


def compiled_targets() -> Callable[..., torch.Tensor]:
    """``torch.compile`` of :func:`current_targets` (fullgraph, static shapes, the torch backend),
    with Dynamo's caches reset: the first call compiles."""
    torch._dynamo.reset()
    return torch.compile(
        functools.partial(current_targets, backend="torch", check_values=False), fullgraph=True, dynamic=False
    )


def target_pass(name: str) -> Callable[..., torch.Tensor]:
    """The pass that backend ``name`` times: ``(circuit, layer, z, w, x, y) -> (Q,)`` float64."""
    if name == "compiled":
        return compiled_targets()
    return functools.partial(current_targets, backend=name, check_values=False)


@functools.lru_cache(maxsize=3)
def output(size: int, dim: int, device: str, backend: str) -> torch.Tensor:
    """``(Q,)`` float64 targets of one backend on :func:`workload` (cached: the oracles)."""
    return target_pass(backend)(*workload(size, dim, device))


def check(case: tuple, out: torch.Tensor, expected: torch.Tensor, name: str, oracle: str) -> str:
    """Raise unless ``out`` equals ``expected`` (the ``oracle`` backend's targets) to 1e-12 of
    each target's terms ``C ((2l+1) s + a_l + b_l + a_{l+1} + b_{l+1})`` (``p_hat, q_hat <= 1``)."""
    circuit, layer, z, w = case[:4]
    a, b = circuit.a.to(layer.device), circuit.b.to(layer.device)
    terms = (2 * layer + 1).double() * circuit.s + 2 * (a[layer] + b[layer] + a[layer + 1] + b[layer + 1])
    scale = torch.where((z == w).all(1), circuit.g * terms, circuit.G * terms)
    error = (out - expected).abs() / scale
    bad = int((error > 1e-12).sum())
    if bad:
        raise AssertionError(f"current_targets {name}: {bad} targets differ from {oracle}; not timed")
    return f"equal to {oracle} (max err {float(error.max()):.1e} of the terms' scale)"


def skip_reason(name: str, size: int, dim: int, device: torch.device, limits: Limits) -> str | None:
    """``None`` if backend ``name`` runs on this case, else why not."""
    work = size * size * dim
    if name == "reference" and work > limits.max_reference_target_work:
        return f"pairwise reference is O(Q B D): {work:.1e} > cap {limits.max_reference_target_work:.1e}"
    if name == "triton" and device.type != "cuda":
        return "triton on CPU is the interpreter"
    if name == "compiled":
        return None
    try:
        backends.select("current_targets", name, device)
    except ValueError as error:
        return str(error)
    return None


def _prepare(name: str, size: int, dim: int, device: str, oracle: str) -> Prepared:
    case = workload(size, dim, device)
    expected = None if name in ("reference", oracle) else output(size, dim, device, oracle)
    run = target_pass(name)
    out = run(*case)  # also the first warm-up call (and the compilation)
    if name == "reference":
        verdict = "is the reference"
    elif name == oracle:
        verdict = "not checked here: the reference was skipped (tests compare torch with it)"
    else:
        verdict = check(case, out, expected, name, oracle)
    return Prepared(
        functools.partial(run, *case),
        verdict,
        bytes_moved=8 * size + 16 * size * dim + 16 * size * dim + 8 * size,
        bytes_note=NOTES["bytes"]["targets"],
    )


def target_cases(device: torch.device, limits: Limits) -> Iterator[Case]:
    """Every backend on every ``(D, Q = B)`` of ``limits``."""
    for dim in limits.target_dims:
        for size in limits.target_sizes:
            oracle = "torch" if skip_reason("reference", size, dim, device, limits) else "reference"
            figure = f"current_targets D={dim} Q=B={size}"
            params = {"Q": size, "B": size, "D": dim, "K": K, "L": L}
            common = {"reference": "reference", "unit": "queries/s", "work": size, "params": params}
            for name in BACKENDS:
                prepare = functools.partial(_prepare, name, size, dim, str(device), oracle)
                why = skip_reason(name, size, dim, device, limits)
                yield Case("targets", figure, name, prepare, skip=why, **common)


GROUPS = {"targets": target_cases}

#: pytest-benchmark (``make bench``): every case of GROUPS, parametrized by benchmarks/conftest.py.
test_bench = runner.run_benchmark


if __name__ == "__main__":
    runner.main(GROUPS, __doc__.split("\n\n")[0], "targets")
