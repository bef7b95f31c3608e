"""Monte-Carlo targets on the Hamming circuit: every sample contributes through its distance.

With the empirical pmfs of a source batch ``x`` ``(B, D)`` and a target batch ``y`` ``(B', D)``,
the potentials of docs/hamming.md §2 become sums over the samples (gauge ``c = 0``):

    phi_l(z) = -l s - alpha*_l + alpha*_{L-l} + (1/B) sum_b Ã_l(h(z, x_b)) - (1/B') sum_b Ã_{L-l}(h(z, y_b))

and the drop across an edge ``(l, z) -> (l+1, w)`` (``w = z`` or one coordinate away) is

    phi_l(z) - phi_{l+1}(w) = delta_l + (1/B) sum_b [Ã_l(h(z, x_b)) - Ã_{l+1}(h(w, x_b))]
                                      - (1/B') sum_b [Ã_{L-l}(h(z, y_b)) - Ã_{L-l-1}(h(w, y_b))],

with the tables ``Ã`` and ``delta_l`` of :class:`~ecd2g_fast.hamming.KernelTables`. The current
is ``C(z, w)`` times the drop (``g`` on a stay edge, ``G`` on a lateral one). Every term is kept as
an extended value (float64 mantissa, integer exponent) and the terms are summed once after
aligning them to the largest, so targets keep float64's accuracy relative to the sum of their
terms' absolute values at any ``D`` (nothing overflows or underflows before the last step).

Normalised targets divide by a per-layer scale that bounds them: with ``kmax_m = max_h Ã_m(h)``,

    sigma_l = s + kmax_l + kmax_{l+1} + kmax_{L-l} + kmax_{L-l-1}     (currents: I / (C sigma_l))
    tau_l   = kmax_l + kmax_{L-l}                                      (potentials: (phi_l + l s) / tau_l)

``|A_m(h)| <= kmax_m`` (``A_m = Ã_m - alpha*_m`` has mean 0 over the states, so
``0 < alpha*_m <= kmax_m``), hence ``|normalised| <= 1`` for every query and batch: finite for
every ``K`` and ``D``. docs/hamming.md has the derivation and the tests.

Backends (registered by :mod:`ecd2g_fast.targets` as ``"hamming_current_targets"`` and
``"hamming_potential_targets"``): ``"reference"`` (every query-sample distance by direct
comparison, every term looked up, one aligned sum per query), ``"torch"`` (distances by one-hot
matrix products, tails and heads in one product, per-query distance histograms) and ``"triton"``
(one fused kernel over bit-packed states, the heads' distances from the tails' by the match of
the changed coordinate: :mod:`ecd2g_fast.hamming._triton_targets`).
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import NamedTuple

import numpy as np
import torch

from . import extended as ext
from .circuit import HammingCircuit

# Exponent of "no term yet": below every real exponent (and above ZERO_EXPONENT - 2**28).
_NO_TERM = -(2**40)
# Bound on the elements of one (chunk, B, D) comparison or (chunk, D K) one-hot block.
_MAX_BLOCK_ELEMENTS = 2**25


class TargetConstants(NamedTuple):
    """What the target passes of one circuit need on one device (extended values as ``(m, e)``).

    Attributes:
        mantissa, exponent: ``(L+1, D+1)`` float64 / int64, ``Ã_l(h) = mantissa * 2**exponent``.
        delta: ``(L,)`` ``delta_l``; ``gauge``: ``(L+1,)`` ``alpha*_{L-l} - alpha*_l``; ``drift``:
            ``()`` ``s``. Each a pair ``(float64 mantissa, int64 exponent)``.
        gauge_terms: ``(L, 5)`` pair, the five terms of ``delta_l`` (the reference sums them with
            the data terms).
        sigma, tau: ``(L,)`` and ``(L+1,)`` pairs, the scales of the normalised targets.
        log_sigma, log_tau: their logs, float64.
    """

    mantissa: torch.Tensor
    exponent: torch.Tensor
    delta: tuple[torch.Tensor, torch.Tensor]
    gauge: tuple[torch.Tensor, torch.Tensor]
    drift: tuple[torch.Tensor, torch.Tensor]
    gauge_terms: tuple[torch.Tensor, torch.Tensor]
    sigma: tuple[torch.Tensor, torch.Tensor]
    tau: tuple[torch.Tensor, torch.Tensor]
    log_sigma: torch.Tensor
    log_tau: torch.Tensor


def _pair(m: np.ndarray, e: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.as_tensor(np.asarray(m, np.float64), device=device),
        torch.as_tensor(np.asarray(e, np.int64), device=device),
    )


def target_constants(circuit: HammingCircuit, device: torch.device | str = "cpu") -> TargetConstants:
    """The :class:`TargetConstants` of ``circuit`` on ``device``, computed once and cached on the
    circuit (as its kernel tables are)."""
    device = torch.device(device)
    cache = circuit.__dict__.setdefault("_target_constants", {})
    found = cache.get(device)
    if found is not None:
        return found
    cpu = cache.get(torch.device("cpu"))
    if cpu is None:
        cpu = _compute_constants(circuit)
        cache[torch.device("cpu")] = cpu
    found = TargetConstants(*(_to(v, device) for v in cpu))
    cache[device] = found
    return found


def _to(value, device: torch.device):
    if isinstance(value, tuple):
        return tuple(t.to(device) for t in value)
    return value.to(device)


def _compute_constants(circuit: HammingCircuit) -> TargetConstants:
    tables = circuit.kernel_tables()
    L = circuit.num_layers
    km, ke = tables.kernel.numpy()
    am, ae = tables.alpha_star.numpy()
    sm, se = tables.drift.numpy()
    cpu = torch.device("cpu")
    # kmax_m exactly: the largest exponent of the row, then the largest mantissa at it
    top = ke.max(axis=1)
    kmax = (np.where(ke == top[:, None], km, 0.0).max(axis=1), top)
    up, down = np.arange(L + 1), L - np.arange(L + 1)
    sigma_rows = [np.arange(L), np.arange(1, L + 1), L - np.arange(L), L - 1 - np.arange(L)]
    sigma_m = np.stack([np.full(L, sm)] + [kmax[0][r] for r in sigma_rows], axis=-1)
    sigma_e = np.stack([np.full(L, se)] + [kmax[1][r] for r in sigma_rows], axis=-1).astype(np.int32)
    sigma = ext.total(sigma_m, sigma_e)
    tau = ext.total(
        np.stack([kmax[0][up], kmax[0][down]], -1),
        np.stack([kmax[1][up], kmax[1][down]], -1).astype(np.int32),
    )
    gauge = ext.total(np.stack([-am[up], am[down]], -1), np.stack([ae[up], ae[down]], -1))
    gauge_terms = tables._gauge_terms(np.arange(L))
    delta = ext.total(*gauge_terms)
    log_sigma = torch.from_numpy(ext.to_log(*sigma))
    log_tau = torch.from_numpy(ext.to_log(*tau))
    return TargetConstants(
        tables.mantissa.clone(),
        tables.exponent.clone(),
        _pair(*delta, cpu),
        _pair(*gauge, cpu),
        _pair(sm, se, cpu),
        _pair(*gauge_terms, cpu),
        _pair(*sigma, cpu),
        _pair(*tau, cpu),
        log_sigma,
        log_tau,
    )


# ----------------------------------------------------------------------------- extended sums
def _pow2(k: torch.Tensor, high: int = 0) -> torch.Tensor:
    """``2.0**k`` (float64, exact) for int64 ``k <= high``; 0.0 far below float64's range. The
    alignment shifts use ``high = 0``: a zero term with a larger exponent then scales by at most
    1, never by ``inf`` (``0 * inf`` would be nan)."""
    return torch.exp2(k.clamp(-1100, high).to(torch.float64))


def ldexp(m: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """``m * 2**e`` (float64 ``m``, int64 ``e``), rounded once: 0.0 or ``+-inf`` out of range."""
    return m * _pow2(e, 1100)


def aligned_sum(m: torch.Tensor, e: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of extended values along ``dim``, aligned to the largest exponent: one rounding per
    term, so the error is a few ulps of the sum of the terms' absolute values.

    Args:
        m: float64 mantissas (any finite values; 0 for an absent term).
        e: int64 exponents of ``m``'s shape (:data:`_NO_TERM` or anything for a zero ``m``).

    Returns:
        ``(m, e)`` with ``|m|`` in ``[0.5, 1)`` (or 0 with exponent :data:`_NO_TERM`).
    """
    top = torch.where(m != 0, e, _NO_TERM).amax(dim=dim, keepdim=True)
    total = (m * _pow2(e - top)).sum(dim=dim)
    return normalized(total, top.squeeze(dim))


def normalized(m: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(m, e)`` rewritten with ``|m|`` in ``[0.5, 1)`` (zeros get :data:`_NO_TERM`)."""
    f, k = torch.frexp(m)
    return f, torch.where(f == 0, _NO_TERM, e + k.to(torch.int64))


def finish_current(
    circuit: HammingCircuit,
    consts: TargetConstants,
    layer: torch.Tensor,
    same: torch.Tensor,
    drop: tuple[torch.Tensor, torch.Tensor],
    normalize: bool,
) -> torch.Tensor:
    """``C(z, w) * drop`` (float64), or with ``normalize`` ``drop / sigma_l``."""
    m, e = drop
    if normalize:
        sm, se = consts.sigma
        return ldexp(m / sm[layer], e - se[layer])
    # not torch.where(same, g, G): Python-scalar branches give a float32 tensor
    conductance = torch.full_like(m, circuit.G).masked_fill_(same, circuit.g)
    return ldexp(conductance * m, e)


def finish_potential(
    consts: TargetConstants, layer: torch.Tensor, value: tuple[torch.Tensor, torch.Tensor], normalize: bool
) -> torch.Tensor:
    """The potential (its sum includes ``-l s``), or with ``normalize`` ``(phi_l + l s) / tau_l``."""
    m, e = value
    if normalize:
        tm, te = consts.tau
        return ldexp(m / tm[layer], e - te[layer])
    return ldexp(m, e)


def changed_coordinate(z: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For ``(Q, D)`` edges ``z -> w`` at distance <= 1: ``(Q,)`` int64 coordinate ``d`` where they
    differ (0 on a stay edge) and the values ``z[q, d]``, ``w[q, d]`` (equal on a stay edge)."""
    coord = (z != w).to(torch.int8).argmax(dim=1)
    rows = coord[:, None]
    return coord, z.gather(1, rows).squeeze(1), w.gather(1, rows).squeeze(1)


def distance_violations(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``(Q,)`` bool: edges whose ``w`` is neither ``z`` nor one coordinate away."""
    return (z != w).sum(dim=1) > 1


# ----------------------------------------------------------------------------- the reference
def pairwise_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(Q, B)`` int64 Hamming distances of the rows of ``a`` ``(Q, D)`` and ``b`` ``(B, D)``, by
    direct comparison of every coordinate (``O(Q B D)``)."""
    Q, D = a.shape
    out = torch.empty(Q, b.shape[0], dtype=torch.int64, device=a.device)
    step = max(1, _MAX_BLOCK_ELEMENTS // max(b.shape[0] * D, 1))
    for start in range(0, Q, step):
        out[start : start + step] = (a[start : start + step, None, :] != b[None, :, :]).sum(dim=2)
    return out


def _reference_terms(consts, rows, queries, batch, sign):
    """Every sample's term ``sign * Ã_rows(h(query, sample)) / B``: ``(Q, B)`` mantissas and exponents."""
    dist = pairwise_distance(queries, batch)
    m = consts.mantissa[rows[:, None], dist] * (sign / batch.shape[0])
    return m, consts.exponent[rows[:, None], dist]


def reference_drop(
    circuit: HammingCircuit,
    layer: torch.Tensor,
    z: torch.Tensor,
    w: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    absolute: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``phi_l(z) - phi_{l+1}(w)`` by the plain definition: the five terms of ``delta_l`` and the
    ``2 (B + B')`` sample terms of every query in one aligned sum. ``absolute``: the sum of the
    terms' absolute values instead (the scale that bounds any evaluation's rounding error)."""
    consts = target_constants(circuit, layer.device)
    L = circuit.num_layers
    gm, ge = consts.gauge_terms
    parts = [
        (gm[layer], ge[layer]),
        _reference_terms(consts, layer, z, x, 1.0),
        _reference_terms(consts, layer + 1, w, x, -1.0),
        _reference_terms(consts, L - layer, z, y, -1.0),
        _reference_terms(consts, L - layer - 1, w, y, 1.0),
    ]
    m, e = (torch.cat(t, dim=1) for t in zip(*parts))
    return aligned_sum(m.abs() if absolute else m, e)


def reference_potential(
    circuit: HammingCircuit,
    layer: torch.Tensor,
    z: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    normalize: bool,
    absolute: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``phi_l(z)`` (with ``normalize``: ``phi_l(z) + l s``) in one aligned sum, as :func:`reference_drop`."""
    consts = target_constants(circuit, layer.device)
    gm, ge = consts.gauge
    parts = [
        (gm[layer, None], ge[layer, None]),
        _reference_terms(consts, layer, z, x, 1.0),
        _reference_terms(consts, circuit.num_layers - layer, z, y, -1.0),
    ]
    if not normalize:
        sm, se = consts.drift
        parts.append(((-layer.to(torch.float64) * sm)[:, None], se.expand(layer.shape[0], 1)))
    m, e = (torch.cat(t, dim=1) for t in zip(*parts))
    return aligned_sum(m.abs() if absolute else m, e)


def current_targets_reference(circuit, layer, z, w, x, y, *, normalize=False):
    """The ``"reference"`` backend of :func:`ecd2g_fast.current_targets` on a Hamming circuit."""
    consts = target_constants(circuit, layer.device)
    drop = _by_query_chunks(lambda s: reference_drop(circuit, layer[s], z[s], w[s], x, y), z.shape[0], x, y)
    return finish_current(circuit, consts, layer, (z == w).all(dim=1), drop, normalize)


def potential_targets_reference(circuit, layer, z, x, y, *, normalize=False):
    """The ``"reference"`` backend of :func:`ecd2g_fast.potential_targets` on a Hamming circuit."""
    consts = target_constants(circuit, layer.device)
    value = _by_query_chunks(
        lambda s: reference_potential(circuit, layer[s], z[s], x, y, normalize), z.shape[0], x, y
    )
    return finish_potential(consts, layer, value, normalize)


def _by_query_chunks(fn, num_queries: int, x: torch.Tensor, y: torch.Tensor):
    """``fn(slice)`` over query chunks whose ``(chunk, 2 (B + B'))`` terms stay within a bound."""
    step = max(1, _MAX_BLOCK_ELEMENTS // (4 * (x.shape[0] + y.shape[0])))
    parts = [fn(slice(s, s + step)) for s in range(0, num_queries, step)] or [fn(slice(0, 0))]
    return tuple(torch.cat(t) for t in zip(*parts))


# ----------------------------------------------------------------------------- the torch backend
def _encode(states: torch.Tensor, num_categories: int, complement: bool) -> torch.Tensor:
    """States as ``(N, D K)`` one-hot rows (``complement``: one minus them), so that the product
    ``onehot(z) . (1 - onehot(x))`` is the Hamming distance ``h(z, x)`` itself. int8 on the CPU
    (exact int32 products), float32 elsewhere (exact: integer sums below ``2**24``)."""
    dtype = torch.int8 if states.device.type == "cpu" else torch.float32
    fill = torch.ones if complement else torch.zeros
    one_hot = fill(*states.shape, num_categories, dtype=dtype, device=states.device)
    one_hot.scatter_(2, states[..., None], 0 if complement else 1)
    return one_hot.reshape(states.shape[0], -1)


def _products_into(a: torch.Tensor, b_t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``a @ b_t`` exactly into the int32 ``out`` (``torch._int_mm`` for int8 on the CPU)."""
    try:
        return torch._int_mm(a, b_t, out=out)
    except (RuntimeError, AttributeError):  # not every build has the int8 product
        return out.copy_(a.float() @ b_t.float())


def distance_histograms(queries: torch.Tensor, batch: torch.Tensor, num_categories: int) -> torch.Tensor:
    """Per query, how many samples lie at each Hamming distance, by one-hot matrix products.

    ``h(z, x) = onehot(z) . (1 - onehot(x))`` over ``D K`` columns, in blocks of at most
    ``2**20`` query-sample pairs whose buffers are reused (on the CPU a fresh ``(Q, B)`` tensor
    per step costs more in page faults than the product itself), then counted per query.

    Args:
        queries: ``(Q, D)`` int64; ``batch``: ``(B, D)`` int64 samples.
        num_categories: ``K``.

    Returns:
        ``(Q, D+1)`` float64 counts.
    """
    Q, D = queries.shape
    B = batch.shape[0]
    width = D * num_categories
    hist = torch.zeros(Q, D + 1, dtype=torch.float64, device=queries.device)
    b_step = max(1, min(B, _MAX_BLOCK_ELEMENTS // max(width, 1)))
    q_step = max(1, min(Q, _MAX_BLOCK_ELEMENTS // max(width, 1), 2**20 // b_step))
    cpu = queries.device.type == "cpu"
    if cpu:
        buffer = torch.empty(q_step * b_step, dtype=torch.int32)
        offsets = (torch.arange(q_step, dtype=torch.int32) * (D + 1))[:, None]
    for b0 in range(0, B, b_step):
        part = _encode(batch[b0 : b0 + b_step], num_categories, complement=True).T.contiguous()
        m = part.shape[1]
        for q0 in range(0, Q, q_step):
            encoded = _encode(queries[q0 : q0 + q_step], num_categories, complement=False)
            n = encoded.shape[0]
            if cpu:
                dist = _products_into(encoded, part, buffer[: n * m].view(n, m))
                # one bincount over (query, distance) keys: int32 keys, no int64 copy
                counts = torch.bincount(dist.add_(offsets[:n]).view(-1), minlength=n * (D + 1))
                hist[q0 : q0 + n] += counts.view(n, D + 1)
            else:
                dist = (encoded @ part).to(torch.int64)
                hist[q0 : q0 + n].scatter_add_(1, dist, torch.ones_like(dist, dtype=torch.float64))
    return hist


def kernel_sums(
    consts: TargetConstants, rows: torch.Tensor, hist: torch.Tensor, weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight * sum_h hist[q, h] Ã_rows[q](h)`` per query, as an extended ``(m, e)`` pair,
    aligned to the largest exponent among the distances present."""
    mt, et = consts.mantissa[rows], consts.exponent[rows]
    top = torch.where(hist > 0, et, _NO_TERM).amax(dim=1, keepdim=True)
    total = (hist * mt * _pow2(et - top)).sum(dim=1) * weight
    return total, top.squeeze(1)


def _combine(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    m, e = (torch.stack(t, dim=1) for t in zip(*parts))
    return aligned_sum(m, e)


def drop_from_sums(consts, layer, sums) -> tuple[torch.Tensor, torch.Tensor]:
    """``delta_l + Sx(z) - Sx(w) - Sy(z) + Sy(w)`` from the four weighted kernel sums (pairs)."""
    dm, de = consts.delta
    (a, ae), (b, be), (c, ce), (d, de_) = sums
    return _combine([(dm[layer], de[layer]), (a, ae), (-b, be), (-c, ce), (d, de_)])


def potential_from_sums(consts, layer, sums, normalize) -> tuple[torch.Tensor, torch.Tensor]:
    """``gauge_l + Sx(z) - Sy(z)`` (and ``- l s`` unless ``normalize``) from the two kernel sums."""
    gm, ge = consts.gauge
    (a, ae), (c, ce) = sums
    parts = [(gm[layer], ge[layer]), (a, ae), (-c, ce)]
    if not normalize:
        sm, se = consts.drift
        parts.append((-layer.to(torch.float64) * sm, se.expand(layer.shape)))
    return _combine(parts)


def current_targets_torch(circuit, layer, z, w, x, y, *, normalize=False):
    """The ``"torch"`` backend of :func:`ecd2g_fast.current_targets` on a Hamming circuit."""
    consts = target_constants(circuit, layer.device)
    K, L = circuit.num_categories, circuit.num_layers
    # Tails and heads in one product per batch: on the CPU (int8 products) that costs less than
    # deriving the heads' distances from the tails' per sample.
    edges = torch.cat([z, w])
    sums = []
    for batch, rows in ((x, (layer, layer + 1)), (y, (L - layer, L - layer - 1))):
        hist_z, hist_w = distance_histograms(edges, batch, K).chunk(2)
        weight = 1.0 / batch.shape[0]
        sums += [kernel_sums(consts, rows[0], hist_z, weight), kernel_sums(consts, rows[1], hist_w, weight)]
    same = (z == w).all(dim=1)
    return finish_current(circuit, consts, layer, same, drop_from_sums(consts, layer, sums), normalize)


def potential_targets_torch(circuit, layer, z, x, y, *, normalize=False):
    """The ``"torch"`` backend of :func:`ecd2g_fast.potential_targets` on a Hamming circuit."""
    consts = target_constants(circuit, layer.device)
    K, L = circuit.num_categories, circuit.num_layers
    sums = [
        kernel_sums(consts, rows, distance_histograms(z, batch, K), 1.0 / batch.shape[0])
        for batch, rows in ((x, layer), (y, L - layer))
    ]
    return finish_potential(consts, layer, potential_from_sums(consts, layer, sums, normalize), normalize)


# ----------------------------------------------------------------------------- the triton backend
_TRITON_MODULES: dict[bool, ModuleType] = {}


def _triton_module(device: torch.device) -> ModuleType:
    """:mod:`._triton_targets` loaded compiled or interpreted (once per mode, as the complete
    circuit's kernels are)."""
    from ..targets import triton as base

    interpret = device.type == "cpu" or base._interpret_requested(base._import_triton())
    module = _TRITON_MODULES.get(interpret)
    if module is None:
        path = os.path.join(os.path.dirname(__file__), "_triton_targets.py")
        module = base.load_kernel_module(path, f"{__package__}._triton_targets", interpret)
        _TRITON_MODULES[interpret] = module
    return module


def current_targets_triton(circuit, layer, z, w, x, y, *, normalize=False):
    """The ``"triton"`` backend of :func:`ecd2g_fast.current_targets` on a Hamming circuit."""
    consts = target_constants(circuit, layer.device)
    sums = _triton_module(layer.device).batch_sums(circuit, consts, layer, z, w, x, y)
    same = (z == w).all(dim=1)
    return finish_current(circuit, consts, layer, same, drop_from_sums(consts, layer, sums), normalize)


def potential_targets_triton(circuit, layer, z, x, y, *, normalize=False):
    """The ``"triton"`` backend of :func:`ecd2g_fast.potential_targets` on a Hamming circuit."""
    consts = target_constants(circuit, layer.device)
    sums = _triton_module(layer.device).batch_sums(circuit, consts, layer, z, None, x, y)
    return finish_potential(consts, layer, potential_from_sums(consts, layer, sums, normalize), normalize)


BACKENDS = {
    "reference": (current_targets_reference, potential_targets_reference),
    "torch": (current_targets_torch, potential_targets_torch),
    "triton": (current_targets_triton, potential_targets_triton),
}


# ----------------------------------------------------------------------------- scales
def _check_scale_queries(
    circuit: HammingCircuit, layer: object, states: dict[str, object], layer_max: int
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(Q,)`` int64 layers in ``[0, layer_max]`` and ``(Q, D)`` states in range (one sync for
    all); ``w`` (if given) at Hamming distance <= 1 from ``z``."""
    from .._validation import check_ranges, check_states, check_tensor, state_range

    layer = check_tensor("layer", layer)
    if layer.dtype != torch.int64:
        raise TypeError(f"layer must have dtype torch.int64, got {layer.dtype}")
    if layer.dim() != 1:
        raise ValueError(f"layer must have shape (Q,), got {tuple(layer.shape)}")
    K, D = circuit.num_categories, circuit.dim
    checked = [check_states(name, t, K, D, check_values=False) for name, t in states.items()]
    for name, t in zip(states, checked):
        if t.shape[0] != layer.shape[0] or t.device != layer.device:
            raise ValueError(
                f"{name} must have Q = {layer.shape[0]} rows on {layer.device}, got {tuple(t.shape)} on {t.device}"
            )
    ranges = [("layer", layer, 0, layer_max + 1, f"layer indices in [0, {layer_max}]")]
    check_ranges(ranges + [state_range(name, t, K) for name, t in zip(states, checked)])
    if len(checked) == 2 and bool(distance_violations(*checked).any()):
        raise ValueError(
            "w must equal z or differ from it in exactly one coordinate (the Hamming circuit's edges)"
        )
    return layer, checked


def log_current_scale(circuit: HammingCircuit, layer: object, z: object, w: object) -> torch.Tensor:
    """:meth:`HammingCircuit.log_current_scale`: ``log C(z, w) + log sigma_l``, ``(Q,)`` float64."""
    layer, (z, w) = _check_scale_queries(circuit, layer, {"z": z, "w": w}, circuit.num_layers - 1)
    log_c = torch.full(layer.shape, float(np.log(circuit.G)), dtype=torch.float64, device=layer.device)
    log_c.masked_fill_((z == w).all(dim=1), float(np.log(circuit.g)))
    return log_c + target_constants(circuit, layer.device).log_sigma[layer]


def log_potential_scale(circuit: HammingCircuit, layer: object) -> torch.Tensor:
    """:meth:`HammingCircuit.log_potential_scale`: ``log tau_l``, ``(Q,)`` float64."""
    layer, _ = _check_scale_queries(circuit, layer, {}, circuit.num_layers)
    return target_constants(circuit, layer.device).log_tau[layer]
