"""The current-target pass (docs/theory.md §2-3, eq. 12-13): every backend against the pairwise reference.

Tolerance. A target is a difference of nearly equal potentials, so ``|reference|`` is no honest
scale (it can be far below the terms it is computed from). Each comparison uses the sum of the
absolute values of the terms that make up the target,
``C(z,w) (l s + (l+1) s + a_l (p_hat(z) + 1/M) + b_l (q_hat(z) + 1/M) + a_{l+1} (...) + b_{l+1} (...))``,
which bounds the rounding error of any evaluation order by a few ulps of itself; 1e-12 of it
leaves room for FMA contraction on a GPU. Counts are compared exactly. Normalised targets
(``normalize=True``) use the same rule in their own units: the sum of the absolute values of
their terms (:func:`normalized_current_scale`), and ``+-inf`` (a value beyond float64) must be
matched exactly.

The statistical test (unbiasedness) uses a 5-standard-error band per query: false-failure rate
about 3e-5 (48 queries), and a fixed seed makes every run identical. The Triton backend runs on
CPU tensors through Triton's interpreter (``TRITON_INTERPRET=1``, set per test), on CUDA tensors
compiled.
"""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys

import mpmath
import pytest
import torch

import ecd2g_fast as E
from ecd2g_fast import backends
from ecd2g_fast.targets import current_targets, packed, potential_targets
from ecd2g_fast.targets import triton as triton_backend
from ecd2g_fast.targets.packed import (
    StateKeys,
    count_states,
    current_targets_torch,
    potential_targets_torch,
    sort_batch,
)
from ecd2g_fast.targets.reference import count_matches

from .testing import assert_close_to_reference, assert_equal_to_reference, devices

RTOL = 1e-12
LAYERS = 5

# (K, D): 1-D and 2-D grids, the exact-key limit (2**62 packed, 2**63 hashed), and large K**D.
SHAPES = {
    "K2-D1": (2, 1),
    "K50-D1": (50, 1),
    "K50-D2": (50, 2),
    "K3-D37": (3, 37),
    "K2-D62-packed": (2, 62),
    "K2-D63-hashed": (2, 63),
    "K65536-D2": (65536, 2),
    "K65536-D4-hashed": (65536, 4),
    "K7-D1024-hashed": (7, 1024),
    "K65536-D64-hashed": (65536, 64),
}
# (Q, B, B'): odd sizes, B' != B.
SIZES = {"Q1-B1-B7": (1, 1, 7), "Q7-B257-B1": (7, 257, 1), "Q257-B7-B257": (257, 7, 257)}
# The interpreter is slow: Triton gets every shape at one mid size, and all sizes on three shapes.
TRITON_CASES = [(s, "Q257-B7-B257") for s in SHAPES] + [
    (s, z) for s in ("K2-D1", "K65536-D2", "K7-D1024-hashed") for z in ("Q1-B1-B7", "Q7-B257-B1")
]


def triton_interpreted(monkeypatch, device: str) -> None:
    if device == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")


requires_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed"
)


def make_case(K: int, D: int, Q: int, B: int, By: int, seed: int = 0, device: str = "cpu"):
    """A circuit and one batch with duplicates (x from 3 states), queries that hit and miss,
    ``z == w`` on every third query, and layers 0 and L-1 present."""
    g = torch.Generator().manual_seed(seed)
    circuit = E.Circuit(K, D, LAYERS)
    pool = torch.randint(0, K, (3, D), generator=g)
    x = pool[torch.randint(0, 3, (B,), generator=g)]
    y = torch.randint(0, K, (By, D), generator=g)
    y[: By // 2] = pool[torch.randint(0, 3, (By // 2,), generator=g)]
    candidates = torch.cat([pool, y, torch.randint(0, K, (8, D), generator=g)])
    z = candidates[torch.randint(0, candidates.shape[0], (Q,), generator=g)]
    w = candidates[torch.randint(0, candidates.shape[0], (Q,), generator=g)]
    w[::3] = z[::3]
    layer = torch.randint(0, LAYERS, (Q,), generator=g)
    if Q:
        layer[0], layer[-1] = 0, LAYERS - 1
    return circuit, *(t.to(device) for t in (layer, z, w, x, y))


def current_scale(circuit, layer, z, w, x, y) -> torch.Tensor:
    """Sum of |terms| of each target (module docstring), from exact counts."""
    layer, z, w, x, y = (t.cpu() for t in (layer, z, w, x, y))
    terms = potential_scale(circuit, layer, z, x, y) + potential_scale(circuit, layer + 1, w, x, y)
    return torch.where((z == w).all(1), circuit.g * terms, circuit.G * terms)


def potential_scale(circuit, layer, z, x, y) -> torch.Tensor:
    layer, z, x, y = (t.cpu() for t in (layer, z, x, y))
    u = 1 / circuit.num_states
    p = counts_by_unique(z, x).double() / x.shape[0]
    q = counts_by_unique(z, y).double() / y.shape[0]
    return layer.double() * circuit.s + circuit.a[layer] * (p + u) + circuit.b[layer] * (q + u)


def normalized_current_scale(circuit, layer, z, w, x, y) -> torch.Tensor:
    """Sum of |terms| of each normalised current target (``Circuit.current_terms`` with the
    frequencies of exact counts): the tolerance scale of normalised targets; inf beyond float64."""
    layer, z, w, x, y = (t.cpu() for t in (layer, z, w, x, y))
    log_terms = circuit.current_terms[layer].clone()
    for column, states, batch in ((3, z, x), (4, w, y), (7, z, y), (8, w, x)):
        log_terms[:, column] += torch.log(counts_by_unique(states, batch).double() / batch.shape[0])
    return torch.exp(log_terms).sum(1)


def normalized_potential_scale(circuit, layer, z, x, y) -> torch.Tensor:
    """:func:`normalized_current_scale` of the normalised potentials (``Circuit.potential_terms``)."""
    layer, z, x, y = (t.cpu() for t in (layer, z, x, y))
    log_terms = circuit.potential_terms[layer].clone()
    for column, batch in ((1, x), (3, y)):
        log_terms[:, column] += torch.log(counts_by_unique(z, batch).double() / batch.shape[0])
    return torch.exp(log_terms).sum(1)


def assert_close_normalized(
    out: torch.Tensor, ref: torch.Tensor, scale: torch.Tensor, rtol: float = RTOL
) -> None:
    """``out`` equals ``ref`` to ``rtol`` of ``scale``; infinite values (beyond float64) exactly."""
    out, ref = out.cpu(), ref.cpu()
    assert not bool(out.isnan().any()), "nan target"
    infinite = ref.isinf()
    assert torch.equal(out[infinite], ref[infinite]), "a value beyond float64 differs"
    assert_close_to_reference(out[~infinite], ref[~infinite], rtol=rtol, scale=scale[~infinite])


def counts_by_unique(queries: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """Exact counts through torch.unique over rows: independent of the code under test, and
    cheaper than the pairwise reference at D = 1024 (only the tolerance scale uses it)."""
    _, ids = torch.unique(torch.cat([batch, queries]), dim=0, return_inverse=True)
    return torch.bincount(ids[: batch.shape[0]], minlength=int(ids.max()) + 1)[ids[batch.shape[0] :]]


# ------------------------------------------------------------------ all backends vs reference
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("sizes", list(SIZES))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_torch_backend_matches_reference(shape, sizes, device):
    circuit, layer, z, w, x, y = make_case(*SHAPES[shape], *SIZES[sizes], device=device)
    ref = current_targets(circuit, layer, z, w, x, y, backend="reference")
    out = current_targets(circuit, layer, z, w, x, y, backend="torch")
    assert out.dtype == torch.float64 and out.shape == layer.shape and out.device == layer.device
    assert_close_to_reference(out, ref, rtol=RTOL, scale=current_scale(circuit, layer, z, w, x, y))
    top = torch.full_like(layer, LAYERS)  # potentials also at layer L
    for lay in (layer, top):
        ref = potential_targets(circuit, lay, z, x, y, backend="reference")
        out = potential_targets(circuit, lay, z, x, y, backend="torch")
        assert_close_to_reference(out, ref, rtol=RTOL, scale=potential_scale(circuit, lay, z, x, y))


@requires_triton
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("shape,sizes", TRITON_CASES)
def test_triton_backend_matches_reference(shape, sizes, device, monkeypatch):
    triton_interpreted(monkeypatch, device)
    circuit, layer, z, w, x, y = make_case(*SHAPES[shape], *SIZES[sizes], seed=1, device=device)
    ref = current_targets(circuit, layer, z, w, x, y, backend="reference")
    out = current_targets(circuit, layer, z, w, x, y, backend="triton")
    assert out.dtype == torch.float64 and out.shape == layer.shape and out.device == layer.device
    assert_close_to_reference(out, ref, rtol=RTOL, scale=current_scale(circuit, layer, z, w, x, y))
    ref = current_targets(circuit, layer, z, w, x, y, backend="reference", normalize=True)
    out = current_targets(circuit, layer, z, w, x, y, backend="triton", normalize=True)
    assert_close_normalized(out, ref, normalized_current_scale(circuit, layer, z, w, x, y))
    layer[1::2] = LAYERS  # potentials also at layer L
    ref = potential_targets(circuit, layer, z, x, y, backend="reference")
    out = potential_targets(circuit, layer, z, x, y, backend="triton")
    assert_close_to_reference(out, ref, rtol=RTOL, scale=potential_scale(circuit, layer, z, x, y))
    ref = potential_targets(circuit, layer, z, x, y, backend="reference", normalize=True)
    out = potential_targets(circuit, layer, z, x, y, backend="triton", normalize=True)
    assert_close_normalized(out, ref, normalized_potential_scale(circuit, layer, z, x, y))


def test_huge_circuits_give_zero_not_overflow():
    # K**D = 7**1024: s, a and b all underflow to 0 in float64 (docs/theory.md §7), so the physical targets
    # are exactly 0; the counts behind them are checked by the count tests below.
    circuit, layer, z, w, x, y = make_case(7, 1024, 7, 5, 5)
    for backend in ("reference", "torch"):
        assert bool((current_targets(circuit, layer, z, w, x, y, backend=backend) == 0).all())


# ------------------------------------------------------------------ normalised targets
def physical_representable(K: int, D: int) -> bool:
    """Whether the physical targets of K**D states are representable (s, a, b > 0 in float64)."""
    return (K**D).bit_length() < 1000


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("sizes", list(SIZES))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_normalized_targets_match_reference_and_physical(shape, sizes, device):
    """normalize=True: the torch backend equals the reference, and where the physical targets are
    representable the normalised ones are the physical ones over Circuit.log_current_scale /
    log_potential_scale (the physical rule's tolerance, in normalised units)."""
    K, D = SHAPES[shape]
    circuit, layer, z, w, x, y = make_case(K, D, *SIZES[sizes], device=device)
    top = torch.full_like(layer, LAYERS)
    ref = current_targets(circuit, layer, z, w, x, y, backend="reference", normalize=True)
    out = current_targets(circuit, layer, z, w, x, y, backend="torch", normalize=True)
    assert out.dtype == torch.float64 and out.device == layer.device
    assert_close_normalized(out, ref, normalized_current_scale(circuit, layer, z, w, x, y))
    for lay in (layer, top):
        ref_phi = potential_targets(circuit, lay, z, x, y, backend="reference", normalize=True)
        out_phi = potential_targets(circuit, lay, z, x, y, backend="torch", normalize=True)
        assert_close_normalized(out_phi, ref_phi, normalized_potential_scale(circuit, lay, z, x, y))
    if not physical_representable(K, D):
        return
    scale = torch.exp(circuit.log_current_scale(layer, z, w)).cpu()
    physical = current_targets(circuit, layer, z, w, x, y, backend="reference").cpu()
    tolerance = current_scale(circuit, layer, z, w, x, y) / scale
    assert_close_to_reference(ref, physical / scale, rtol=RTOL, scale=tolerance)
    for lay in (layer, top):
        tau = torch.exp(circuit.log_potential_scale(lay)).cpu()
        physical = potential_targets(circuit, lay, z, x, y, backend="reference").cpu()
        normalized = potential_targets(circuit, lay, z, x, y, backend="torch", normalize=True)
        tolerance = potential_scale(circuit, lay, z, x, y) / tau
        assert_close_to_reference(
            normalized, (physical + lay.cpu().double() * circuit.s) / tau, rtol=RTOL, scale=tolerance
        )


def exact_normalized_targets(circuit, layer, z, w, x, y) -> tuple[list, list, list, list]:
    """The normalised current and potential targets and their tolerance scales (sum of |terms|),
    from eq. (12)-(13) evaluated in 40-digit arithmetic (mpmath), independently of the package."""
    mpmath.mp.dps = 40
    mpf = mpmath.mpf
    M = mpf(circuit.num_states)
    L = circuit.num_layers
    g, G = 1 / mpf(circuit.r), 1 / mpf(circuit.R)
    e = g - G
    d = g + (M - 1) * G
    theta = mpmath.acosh(d / e)
    s = 1 / (M * d)
    den = e * mpmath.sinh(theta) * mpmath.sinh(L * theta)
    a = [mpmath.cosh((L - l) * theta) / den for l in range(L + 1)]
    b = [mpmath.cosh(l * theta) / den for l in range(L + 1)]
    nx, ny = x.shape[0], y.shape[0]
    # counts as exact fractions: p = count / B
    pz, qz = counts_by_unique(z, x).tolist(), counts_by_unique(z, y).tolist()
    pw, qw = counts_by_unique(w, x).tolist(), counts_by_unique(w, y).tolist()
    currents, current_scales, potentials, potential_scales = [], [], [], []
    for i, l in enumerate(layer.tolist()):
        sigma = s + (a[l] + b[l] + a[l + 1] + b[l + 1]) / M
        plus = [s, a[l] * pz[i] / nx, b[l] / M, a[l + 1] / M, b[l + 1] * qw[i] / ny]
        minus = [a[l] / M, b[l] * qz[i] / ny, a[l + 1] * pw[i] / nx, b[l + 1] / M]
        currents.append((mpmath.fsum(plus) - mpmath.fsum(minus)) / sigma)
        current_scales.append((mpmath.fsum(plus) + mpmath.fsum(minus)) / sigma)
        tau = (a[l] + b[l]) / M
        plus, minus = [a[l] * pz[i] / nx, b[l] / M], [a[l] / M, b[l] * qz[i] / ny]
        potentials.append((mpmath.fsum(plus) - mpmath.fsum(minus)) / tau)
        potential_scales.append((mpmath.fsum(plus) + mpmath.fsum(minus)) / tau)
    return currents, current_scales, potentials, potential_scales


def as_float64(values: list) -> torch.Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float64)


#: (K, D): M from 2 to 256**784 (an MNIST-sized state space); the physical targets of the last
#: two underflow to exactly 0 in float64.
HUGE = {"K2-D1": (2, 1), "K50-D2": (50, 2), "K4-D64": (4, 64), "K7-D1024": (7, 1024), "K256-D784": (256, 784)}


@pytest.mark.parametrize("shape", list(HUGE))
def test_normalized_targets_match_high_precision(shape):
    """normalize=True against eq. (12)-(13) in 40-digit arithmetic, hits and misses, every layer.

    Tolerance: the targets are sums of terms exp(t) with |t| up to about 2 log M + 10 (the log
    coefficients), each carrying a relative error of a few ulps of |t|: 1e-15 (20 + 2 log M) of
    the sum of |terms|. A value beyond float64 must be +-inf with the exact value's sign."""
    K, D = HUGE[shape]
    circuit, layer, z, w, x, y = make_case(K, D, 60, 7, 13, seed=11)
    g = torch.Generator().manual_seed(12)
    z[40:] = torch.randint(0, K, (20, D), generator=g)  # misses (w.h.p. for large M)
    rtol = 1e-15 * (20 + 2 * circuit.log_num_states)
    currents, current_scales, potentials, potential_scales = exact_normalized_targets(
        circuit, layer, z, w, x, y
    )
    for backend in ("reference", "torch"):
        out = current_targets(circuit, layer, z, w, x, y, backend=backend, normalize=True)
        assert_close_normalized(out, as_float64(currents), as_float64(current_scales), rtol)
        out = potential_targets(circuit, layer, z, x, y, backend=backend, normalize=True)
        assert_close_normalized(out, as_float64(potentials), as_float64(potential_scales), rtol)


@pytest.mark.parametrize("shape", ["K4-D64", "K7-D1024", "K256-D784"])
def test_normalized_targets_are_finite_and_order_one(shape, monkeypatch):
    """Where the physical float32 targets are 0 (K = 4, D = 64: all of these) or even the float64
    ones (K**D = 256**784), the normalised targets of states absent from both batches lie in
    [-1, 1] with a mean |target| of order one, on every backend; states found in a batch give
    M count / B, finite up to float64's range and +-inf (never nan) beyond it."""
    K, D = HUGE[shape]
    circuit, _, _, _, x, y = make_case(K, D, 1, 7, 13, seed=13)
    g = torch.Generator().manual_seed(14)
    Q = 200
    layer = torch.randint(0, LAYERS, (Q,), generator=g)
    z, w = torch.randint(0, K, (Q, D), generator=g), torch.randint(0, K, (Q, D), generator=g)
    assert not bool(counts_by_unique(torch.cat([z, w]), torch.cat([x, y])).any())  # all misses
    physical = current_targets(circuit, layer, z, w, x, y).float()
    assert float((physical == 0).double().mean()) > 0.9
    names = ["reference", "torch"] + (["triton"] if importlib.util.find_spec("triton") else [])
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    for backend in names:
        currents = current_targets(circuit, layer, z, w, x, y, backend=backend, normalize=True)
        potentials = potential_targets(circuit, layer, z, x, y, backend=backend, normalize=True)
        for out in (currents, potentials):
            assert bool(torch.isfinite(out).all()) and float(out.abs().max()) <= 1 + 1e-12
            assert float(out.abs().mean()) > 0.3
        # hits: z = x's rows at layer 0 (M alpha_0 p(z)), y's rows at layer L (M beta_L q(z))
        for lay, batch, n in ((0, x, x.shape[0]), (LAYERS, y, y.shape[0])):
            hits = potential_targets(
                circuit, torch.full((n,), lay), batch, x, y, backend=backend, normalize=True
            )
            assert not bool(hits.isnan().any())
            representable = circuit.log_num_states - math.log(n) < math.log(torch.finfo(torch.float64).max)
            assert bool(torch.isfinite(hits).all()) if representable else bool(hits.isinf().all())
            assert bool((hits > 1).all()) if lay == 0 else bool((hits < -1).all())


# ------------------------------------------------------------------ exact counts
WEAK_HASHES = {
    "constant": lambda s: torch.zeros(s.shape[0], dtype=torch.int64, device=s.device),
    "sum-mod-3": lambda s: s.sum(1) % 3,
}


# Weak hashes exercise the collision paths, which do not depend on K or D: a few shapes suffice.
COUNT_CASES = [(s, None) for s in SHAPES] + [
    (s, h) for s in ("K2-D1", "K50-D2", "K3-D37", "K65536-D64-hashed") for h in WEAK_HASHES
]


@pytest.mark.parametrize("shape,hash_fn", COUNT_CASES)
def test_counts_are_exact(shape, hash_fn):
    K, D = SHAPES[shape]
    circuit, _, z, w, x, y = make_case(K, D, 257, 257, 7)
    keys = StateKeys.for_circuit(circuit, x.device, WEAK_HASHES.get(hash_fn))
    assert keys.exact == (hash_fn is None and K**D < 2**63)
    queries = torch.cat([z, w, x, y])
    for batch in (x, y):
        counts = count_states(sort_batch(batch, keys), keys(queries), queries)
        assert counts.dtype == torch.int64
        assert_equal_to_reference(counts, count_matches(queries, batch))


FORCED_COUNTING = ("dense-table", "sorted")


def force_counting(monkeypatch, how: str) -> None:
    """Make :func:`packed.prepare` pick ``how`` for every exact-key circuit up to 2**26 states."""
    limit = 2**26 if how == "dense-table" else 0
    monkeypatch.setattr(packed, "DENSE_TABLE_MIN_STATES", limit)
    monkeypatch.setattr(packed, "DENSE_TABLE_MAX_STATES", limit)


# K3-D37 has more states than a table may hold: sorted keys only.
@pytest.mark.parametrize(
    "shape,how", [(s, h) for s in ("K2-D1", "K50-D2") for h in FORCED_COUNTING] + [("K3-D37", "sorted")]
)
def test_both_exact_counting_paths_are_exact(shape, how, monkeypatch):
    # Whichever of the dense table and the sorted keys the size rule picks, counts are exact.
    K, D = SHAPES[shape]
    force_counting(monkeypatch, how)
    circuit, _, z, w, x, y = make_case(K, D, 257, 257, 7)
    prepared = packed.prepare(circuit, x, y)
    assert (prepared.table is not None) == (how == "dense-table")
    queries = torch.cat([z, w, x, y])
    ((count_x, count_y),) = prepared.counts([(prepared.keys(queries), queries)])
    assert_equal_to_reference(count_x.long(), count_matches(queries, x))
    assert_equal_to_reference(count_y.long(), count_matches(queries, y))


@requires_triton
@pytest.mark.parametrize("how", FORCED_COUNTING)
def test_triton_on_both_exact_counting_paths(how, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    force_counting(monkeypatch, how)
    circuit, layer, z, w, x, y = make_case(50, 2, 257, 7, 257, seed=9)
    ref = current_targets(circuit, layer, z, w, x, y, backend="reference")
    out = current_targets(circuit, layer, z, w, x, y, backend="triton")
    assert_close_to_reference(out, ref, rtol=RTOL, scale=current_scale(circuit, layer, z, w, x, y))


@requires_triton
@pytest.mark.parametrize("K,D", [(2, 1), (50, 2), (7, 5)])
def test_triton_count_table_equals_torch(K, D, monkeypatch):
    # The one-kernel table (keys computed in the kernel, atomic adds) against index_add_.
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    circuit, _, _, _, x, y = make_case(K, D, 1, 301, 130, seed=10)
    keys = StateKeys.for_circuit(circuit, x.device)
    want = packed.count_table(keys, x, y, circuit.num_states)
    got = triton_backend._count_table(keys, x, y, circuit.num_states)
    assert got.dtype == torch.int32 and got.shape == (2, K**D)
    assert_equal_to_reference(got, want)


def test_check_values_false_skips_only_the_range_check():
    circuit, layer, z, w, x, y = make_case(50, 2, 257, 257, 7)
    checked = current_targets(circuit, layer, z, w, x, y, backend="torch")
    assert torch.equal(
        current_targets(circuit, layer, z, w, x, y, backend="torch", check_values=False), checked
    )
    with pytest.raises(ValueError, match="z must hold states"):
        current_targets(circuit, layer, z + 50, w, x, y, backend="torch")
    with pytest.raises(TypeError, match="layer must have dtype torch.int64"):  # still checked
        potential_targets(circuit, layer.int(), z, x, y, check_values=False)


def test_dense_table_size_rule():
    keys = StateKeys.for_circuit(E.Circuit(4, 2, 2), torch.device("cpu"))
    assert packed.uses_dense_table(keys, 2**16, 1, 1)  # small M: always
    assert not packed.uses_dense_table(keys, 2**16 + 1, 100, 100)
    assert packed.uses_dense_table(keys, 2**20, 2**18, 2**18)  # M <= 2 (B + B')
    assert not packed.uses_dense_table(keys, 2**27, 2**30, 2**30)  # above the memory cap
    hashed = StateKeys.for_circuit(E.Circuit(4, 2, 2), torch.device("cpu"), WEAK_HASHES["constant"])
    assert not packed.uses_dense_table(hashed, 16, 1, 1)


def test_key_sums_agree_on_both_paths(monkeypatch):
    # CPU keys use integer matmul, CUDA ones chunked mul + sum: both must wrap identically.
    monkeypatch.setattr(packed, "_CHUNK_ELEMENTS", 1000)  # several chunks
    states = torch.randint(0, 7, (301, 1024), generator=torch.Generator().manual_seed(2))
    weights = packed._weights(7, 1024, False, states.device)
    assert_equal_to_reference(packed._weighted_row_sums_chunked(states, weights), states @ weights)


def test_exact_keys_are_the_canonical_index():
    circuit = E.Circuit(5, 7, 2)
    states = torch.randint(0, 5, (33, 7), generator=torch.Generator().manual_seed(3))
    keys = StateKeys.for_circuit(circuit, states.device)
    assert keys.exact
    assert_equal_to_reference(keys(states), circuit.state_index(states))


def test_hash_collisions_in_the_batch_are_resolved():
    # Rows A, B, A, C, B with one weak hash value for A and B: an ambiguous run of 4 rows.
    circuit = E.Circuit(4, 3, 2)
    a, b, c = [0, 1, 2], [2, 1, 0], [3, 3, 3]
    batch = torch.tensor([a, b, a, c, b])
    keys = StateKeys.for_circuit(circuit, batch.device, lambda s: (s.sum(1) == 3).long())
    sorted_batch = sort_batch(batch, keys)
    assert sorted_batch.ambiguous.tolist() == [False, True]
    queries = torch.tensor([a, b, c, [1, 1, 1], [0, 0, 0]])  # [1,1,1] collides too, count 0
    assert count_states(sorted_batch, keys(queries), queries).tolist() == [2, 2, 1, 0, 0]


@pytest.mark.parametrize("hash_name", list(WEAK_HASHES))
def test_forced_collisions_leave_targets_unchanged(hash_name):
    circuit, layer, z, w, x, y = make_case(3, 5, 257, 257, 31, seed=4)
    ref = current_targets(circuit, layer, z, w, x, y, backend="reference")
    out = current_targets_torch(circuit, layer, z, w, x, y, hash_fn=WEAK_HASHES[hash_name])
    assert_close_to_reference(out, ref, rtol=RTOL, scale=current_scale(circuit, layer, z, w, x, y))
    ref = potential_targets(circuit, layer, z, x, y, backend="reference")
    out = potential_targets_torch(circuit, layer, z, x, y, hash_fn=WEAK_HASHES[hash_name])
    assert_close_to_reference(out, ref, rtol=RTOL, scale=potential_scale(circuit, layer, z, x, y))


def counting_circuit(K: int, D: int, nx: int, ny: int) -> E.Circuit:
    """A circuit with stand-in constants whose potential is ``count_x + (nx + 1) count_y - offset``
    (s = 0), so the kernel's counts can be read back from its output exactly, whatever K**D."""
    circuit = E.Circuit(K, D, LAYERS)
    circuit.s, circuit.g, circuit.G = 0.0, 1.0, 1.0
    circuit.a = torch.full((LAYERS + 1,), float(nx), dtype=torch.float64)
    circuit.b = torch.full((LAYERS + 1,), -float(ny * (nx + 1)), dtype=torch.float64)
    return circuit


@requires_triton
@pytest.mark.parametrize("hash_name", [None, *WEAK_HASHES], ids=str)
@pytest.mark.parametrize("shape", ["K50-D2", "K2-D63-hashed", "K7-D1024-hashed"])
def test_triton_kernel_counts_are_exact(shape, hash_name, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    K, D = SHAPES[shape]
    _, layer, z, _, x, y = make_case(K, D, 131, 257, 7, seed=5)
    fake = counting_circuit(K, D, x.shape[0], y.shape[0])
    phi = triton_backend.potential_targets_triton(fake, layer, z, x, y, hash_fn=WEAK_HASHES.get(hash_name))
    offset = (x.shape[0] + y.shape[0] * (x.shape[0] + 1)) / K**D
    code = (phi + offset).round().long()
    assert_equal_to_reference(code % (x.shape[0] + 1), count_matches(z, x))
    assert_equal_to_reference(code // (x.shape[0] + 1), count_matches(z, y))


@requires_triton
@pytest.mark.parametrize("hash_name", list(WEAK_HASHES))
def test_triton_forced_collisions_leave_targets_unchanged(hash_name, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    circuit, layer, z, w, x, y = make_case(3, 5, 131, 63, 31, seed=6)
    ref = current_targets(circuit, layer, z, w, x, y, backend="reference")
    out = triton_backend.current_targets_triton(circuit, layer, z, w, x, y, hash_fn=WEAK_HASHES[hash_name])
    assert_close_to_reference(out, ref, rtol=RTOL, scale=current_scale(circuit, layer, z, w, x, y))


# ------------------------------------------------------------------ the formula itself
def test_targets_equal_the_dense_closed_form():
    """Targets of every edge equal Circuit.currents / Circuit.potentials of the batch's
    empirical pmfs: the fast counting and eq. (12)-(13) against the dense table."""
    K, D, L = 3, 2, 3
    circuit = E.Circuit(K, D, L)
    g = torch.Generator().manual_seed(7)
    M = K**D
    x = circuit.index_state(torch.randint(0, 4, (23,), generator=g))  # 4 of 9 states: duplicates
    y = circuit.index_state(torch.randint(0, M, (17,), generator=g))
    p_hat = torch.bincount(circuit.state_index(x), minlength=M).double() / x.shape[0]
    q_hat = torch.bincount(circuit.state_index(y), minlength=M).double() / y.shape[0]
    dense = circuit.currents(p_hat, q_hat)  # (L, M, M)
    lz, iz, iw = torch.meshgrid(torch.arange(L), torch.arange(M), torch.arange(M), indexing="ij")
    layer, z, w = lz.flatten(), circuit.index_state(iz.flatten()), circuit.index_state(iw.flatten())
    scale = current_scale(circuit, layer, z, w, x, y)
    for backend in ("reference", "torch"):
        out = current_targets(circuit, layer, z, w, x, y, backend=backend)
        assert_close_to_reference(out, dense.flatten(), rtol=RTOL, scale=scale)
    phi = circuit.potentials(p_hat, q_hat)  # (L+1, M)
    lp, ip = torch.meshgrid(torch.arange(L + 1), torch.arange(M), indexing="ij")
    lp, zp = lp.flatten(), circuit.index_state(ip.flatten())
    out = potential_targets(circuit, lp, zp, x, y, backend="torch")
    assert_close_to_reference(out, phi.flatten(), rtol=RTOL, scale=potential_scale(circuit, lp, zp, x, y))


def test_targets_are_unbiased():
    """The mean of MC targets over independent batches approaches the exact current (eq. 13)."""
    K, D, L, B, batches = 4, 1, 3, 16, 3000
    circuit = E.Circuit(K, D, L)
    p = torch.tensor([0.5, 0.3, 0.2, 0.0], dtype=torch.float64)
    q = torch.tensor([0.1, 0.1, 0.2, 0.6], dtype=torch.float64)
    exact = circuit.currents(p, q)  # (L, M, M)
    lz, iz, iw = torch.meshgrid(torch.arange(L), torch.arange(K), torch.arange(K), indexing="ij")
    layer, z, w = lz.flatten(), iz.flatten()[:, None], iw.flatten()[:, None]
    g = torch.Generator().manual_seed(8)
    xs = torch.multinomial(p, batches * B, replacement=True, generator=g).view(batches, B, 1)
    ys = torch.multinomial(q, batches * B, replacement=True, generator=g).view(batches, B, 1)
    samples = torch.stack([current_targets(circuit, layer, z, w, xs[i], ys[i]) for i in range(batches)])
    mean = samples.mean(0)
    stderr = samples.std(0) / batches**0.5
    err = (mean - exact.flatten()).abs()
    # 5 standard errors per query (48 queries): false-failure rate ~3e-5 for the whole test.
    bad = err > 5 * stderr + RTOL * exact.abs().flatten()
    assert not bool(bad.any()), (
        f"biased at {torch.nonzero(bad).flatten().tolist()}: {err[bad]} vs {stderr[bad]}"
    )
    assert float(stderr.max()) < 0.05 * float(exact.abs().max())  # the check has power


# ------------------------------------------------------------------ dispatch and input checks
def test_auto_order_and_empty_queries(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter is never chosen automatically
    assert backends.select("current_targets", "auto", cpu).name == "torch"
    assert backends.select("potential_targets", "auto", cpu).name == "torch"
    monkeypatch.setenv("ECD2G_BACKEND_CURRENT_TARGETS", "reference")
    assert backends.select("current_targets", "auto", cpu).name == "reference"
    circuit, layer, z, w, x, y = make_case(5, 3, 0, 7, 7)
    for backend in ("reference", "torch", "triton"):
        assert current_targets(circuit, layer, z, w, x, y, backend=backend).shape == (0,)
        assert potential_targets(circuit, layer, z, x, y, backend=backend).shape == (0,)


def test_triton_unavailable_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    circuit, layer, z, w, x, y = make_case(5, 3, 4, 7, 7)
    with pytest.raises(ValueError, match="backend 'triton'.*not available.*TRITON_INTERPRET"):
        current_targets(circuit, layer, z, w, x, y, backend="triton")
    with pytest.raises(ValueError, match="backend 'triton'"):
        potential_targets(circuit, layer, z, x, y, backend="triton")


def test_package_works_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, ecd2g_fast as E\n"
        "from ecd2g_fast.targets import current_targets\n"
        "from ecd2g_fast import backends\n"
        "c = E.Circuit(3, 2, 2)\n"
        "s, l = torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, dtype=torch.long)\n"
        "print(current_targets(c, l, s, s, s, s).shape)\n"
        "assert backends.select('current_targets', 'auto', torch.device('cuda')).name == 'torch'\n"
        "from ecd2g_fast.targets.triton import is_available\n"
        "assert not is_available(torch.device('cpu')) and not is_available(torch.device('cuda'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "torch.Size([4])" in result.stdout


def _bad_inputs():
    circuit, layer, z, w, x, y = make_case(5, 3, 4, 7, 7)
    ok = {"circuit": circuit, "layer": layer, "z": z, "w": w, "x": x, "y": y}
    return ok, [
        ("float-z", {"z": z.double()}, TypeError, "z must have dtype torch.int64"),
        ("float-x", {"x": x.float()}, TypeError, "x must have dtype"),
        ("list-y", {"y": y.tolist()}, TypeError, "y must be a torch.Tensor"),
        ("int32-layer", {"layer": layer.int()}, TypeError, "layer must have dtype"),
        ("not-a-circuit", {"circuit": "circuit"}, TypeError, "circuit must be"),
        ("wrong-D-z", {"z": z[:, :2]}, ValueError, r"z must have shape \(B, 3\)"),
        ("wrong-D-x", {"x": torch.zeros(7, 4, dtype=torch.long)}, ValueError, "x must have shape"),
        ("z-out-of-range", {"z": z + 5}, ValueError, r"z must hold states in \[0, 5\)"),
        ("w-negative", {"w": w - 5}, ValueError, "w must hold states"),
        ("y-out-of-range", {"y": y + 5}, ValueError, "y must hold states"),
        ("layer-too-big", {"layer": layer + LAYERS}, ValueError, "layer must hold layer indices"),
        ("layer-negative", {"layer": layer - 1}, ValueError, "layer must hold layer indices"),
        ("layer-wrong-Q", {"layer": layer[:3]}, ValueError, r"layer must have shape \(Q,\)"),
        ("w-shape", {"w": w[:3]}, ValueError, "w must have the shape of z"),
        ("empty-x", {"x": x[:0]}, ValueError, "x.shape"),
        ("unknown-backend", {"backend": "numba"}, ValueError, "backend must be one of"),
    ]


@pytest.mark.parametrize("case", [c[0] for c in _bad_inputs()[1]])
def test_bad_input_names_the_argument(case):
    ok, cases = _bad_inputs()
    _, change, error, match = next(c for c in cases if c[0] == case)
    args = {**ok, **change}
    backend = args.pop("backend", "auto")
    with pytest.raises(error, match=match):
        current_targets(**args, backend=backend)


def test_potential_targets_bad_layer():
    circuit, layer, z, w, x, y = make_case(5, 3, 4, 7, 7)
    layer[0] = LAYERS  # fine for potentials (layer L exists) ...
    potential_targets(circuit, layer, z, x, y)
    layer[0] = LAYERS + 1  # ... one more is not
    with pytest.raises(ValueError, match=r"layer must hold layer indices in \[0, 5\]"):
        potential_targets(circuit, layer, z, x, y)
    with pytest.raises(ValueError, match=r"layer must hold layer indices in \[0, 4\]"):
        current_targets(circuit, torch.full_like(layer, LAYERS), z, w, x, y)
