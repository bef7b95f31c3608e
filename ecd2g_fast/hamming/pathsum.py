"""The split path sum: Hamming kernel tables with per-state relative accuracy (docs/hamming.md §4).

Computes ``Ã_l(h) = A_l(h) + alpha*_l > 0`` for ``l = 0..L``, ``h = 0..D`` as extended floats.
The jump chain of the circuit is the product of the reflecting walk ``P`` on the layers and the
lazy Hamming walk ``nu`` (stay ``g/d``, each one-coordinate change ``G/d``), so with
``Delta_l = 1`` at the end layers and 2 inside

    d Delta_l A_l(h) = sum_{n >= 0} P^n(0, l) (nu^n(h) - 1/M)

Split at the mixing time ``N`` of ``nu``, the head ``S1 = sum_{n<N} P^n(0, l) nu^n(h)`` is a sum
of non-negative terms (one blocked matrix product), and the tail is
``T = (1/M) sum_j K_j(h) x_j^N y_j(l)`` over the few modes ``j`` that have not yet decayed.
``alpha*_l = alpha_l + beta_l / d`` with ``alpha_l = sum_{n<N} P^n(0, l) / (d Delta_l M)`` (the
head's share of ``1/M``) and ``beta_l >= 0`` chosen so that every entry is at least half the sum
of the absolute values of its pieces: no entry is a cancellation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from . import extended as ext
from .extended import ZERO_EXPONENT, Pair

#: The head ``n < N`` runs until ``sum_{j>=1} n_j |x_j|^N <= 1`` (the L-infinity mixing time).
MIXING_TARGET = 1.0
#: The head has at least this many steps (a walk that mixes at once still gets a short head).
MIN_HEAD_STEPS = 8
#: Longer heads are refused: the cost is ``O(N (L + D))`` memory traffic and ``O(N L D)`` flops.
MAX_HEAD_STEPS = 2**20
#: A tail mode is dropped where its mass is below this fraction of the tail's in every layer.
MODE_DROP = 2.0**-70
#: Rows of the head computed and multiplied at once.
BLOCK_ROWS = 512
# Factors below 2**-500 of their column's largest entry are dropped before a block product: no
# product then falls below 2**-1000, into the subnormals (which slow the product a hundredfold).
# A result below 2**-430 of its scale may have lost terms; such entries are recomputed term by term.
_FACTOR_RANGE = 500
_SUSPECT = 2.0**-430


@dataclass(frozen=True)
class RawTables:
    """Output of :func:`split_path_sum` (numpy; exponents int32)."""

    kernel: Pair  # Ã (L+1, D+1)
    alpha_star: Pair  # (L+1,)
    drift: Pair  # () s = 1 / (M d)
    head_steps: int
    modes: tuple[int, ...]


def _mode_constants(K: int, D: int, g: float, G: float) -> dict[str, np.ndarray]:
    """``x_j = lambda_j / d = 1 - K G j / d``, ``j = 1..D``, as ``|x_j|``, sign, ``1 - |x_j|``."""
    d = g + G * D * (K - 1)
    j = np.arange(1, D + 1, dtype=np.float64)
    x = (g + G * ((K - 1) * D - K * j)) / d
    # 1 - |x| without cancellation: K G j / d for x >= 0, 1 + x = (2g + G (2(K-1)D - Kj)) / d else
    gap = np.where(x >= 0, K * G * j / d, (2 * g + G * (2 * (K - 1) * D - K * j)) / d)
    with np.errstate(divide="ignore"):
        log_abs = np.where(gap < 0.5, np.log1p(-np.minimum(gap, 0.5)), np.log(np.abs(x)))
    log_sphere = np.array(
        [
            math.lgamma(D + 1) - math.lgamma(k + 1) - math.lgamma(D - k + 1) + k * math.log(K - 1)
            for k in range(1, D + 1)
        ]
    )
    return {"abs": np.abs(x), "negative": x < 0, "gap": gap, "log_abs": log_abs, "log_sphere": log_sphere}


def head_steps(K: int, D: int, g: float, G: float) -> int:
    """The split point ``N``: the least ``N >= 8`` with ``sum_{j>=1} n_j |x_j|^N <= 1``."""
    modes = _mode_constants(K, D, g, G)

    def log_excess(n: int) -> float:
        terms = modes["log_sphere"] + n * modes["log_abs"]
        terms = terms[np.isfinite(terms)]
        return float(np.logaddexp.reduce(terms)) if terms.size else -math.inf

    target = math.log(MIXING_TARGET)
    lo, hi = 0, MIN_HEAD_STEPS
    while log_excess(hi) > target:
        lo, hi = hi, 2 * hi
        if lo > MAX_HEAD_STEPS:
            raise ValueError(
                f"the Hamming walk mixes too slowly (more than {MAX_HEAD_STEPS} steps): make the "
                "lateral resistance R smaller relative to r"
            )
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if log_excess(mid) > target else (lo, mid)
    return max(hi, MIN_HEAD_STEPS)


def _step(m, e, stay, from_below, from_above):
    """One step of a three-term recursion ``new[i] = stay[i] old[i] + from_below[i] old[i-1] +
    from_above[i] old[i+1]`` on extended values with non-negative coefficients (no cancellation)."""
    top = e.copy()
    np.maximum(top[1:], e[:-1], out=top[1:])
    np.maximum(top[:-1], e[1:], out=top[:-1])
    total = stay * ext.shifted(m, e, top) if stay is not None else np.zeros_like(m)
    total[1:] += from_below[1:] * ext.shifted(m[:-1], e[:-1], top[1:])
    total[:-1] += from_above[:-1] * ext.shifted(m[1:], e[1:], top[:-1])
    return ext.normalize(total, top)


def _layer_walk(L: int) -> tuple[np.ndarray, np.ndarray]:
    """``P(l -> l+1)``, ``P(l -> l-1)`` of the reflecting layer walk: 1/2 each inside, 1 at the ends."""
    up, down = np.full(L + 1, 0.5), np.full(L + 1, 0.5)
    up[0], down[L], up[L], down[0] = 1.0, 1.0, 0.0, 0.0
    return up, down


def _log2_delta(L: int) -> np.ndarray:
    """``log2 Delta_l``: 0 at the end layers, 1 inside (int32)."""
    return np.where((np.arange(L + 1) == 0) | (np.arange(L + 1) == L), 0, 1).astype(np.int32)


def _point_mass(n: int) -> Pair:
    m = np.zeros(n)
    m[0] = 0.5
    e = np.full(n, ZERO_EXPONENT, np.int32)
    e[0] = 1
    return m, e


def _matmul(a, b, signed: bool = False):
    """``C[p, q] = sum_k A[k, p] B[k, q]`` for extended ``A`` ``(k, p)`` and ``B`` ``(k, q)``.

    One float64 product after scaling every column to its largest entry; entries whose scaled
    result is so small that terms may have underflowed are recomputed term by term. Returns
    ``(C, exponent)`` pairs, not normalized but every mantissa at least ``2**-430``: ``C`` and,
    if ``signed``, also ``sum_k |A[k, p] B[k, q]|`` (the gross size).
    """
    (am, ae), (bm, be) = a, b
    ta, tb = ae.max(axis=0), be.max(axis=0)
    a1, b1 = (
        np.where(e - t < -_FACTOR_RANGE, 0.0, ext.shifted(m, e, t))
        for m, e, t in ((am, ae, ta), (bm, be, tb))
    )
    scale = ta[:, None] + tb[None, :]
    products = [_gemm(a1, b1)] + ([_gemm(np.abs(a1), np.abs(b1))] if signed else [])
    suspect = np.nonzero(products[-1] < _SUSPECT)
    out = [(c, scale.copy()) for c in products]
    if suspect[0].size:
        p, q = suspect
        terms = ext.normalize(am[:, p] * bm[:, q], ae[:, p] + be[:, q])
        top = terms[1].max(axis=0)
        aligned = ext.shifted(*terms, top)
        for (cm, ce), s in zip(out, [aligned, np.abs(aligned)]):
            cm[p, q], ce[p, q] = ext.normalize(s.sum(axis=0), top)
    return out


def _gemm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a.T @ b`` in float64 by torch, so that ``torch.set_num_threads`` governs its threads (on
    a loaded 2-core machine one thread is 2-4x faster: a second one waits for its time slice)."""
    return (torch.from_numpy(a).T @ torch.from_numpy(b)).numpy()


def _accumulate(total, part):
    """``total += part`` in place for unnormalized extended arrays (mantissas stay below 2**40)."""
    top = np.maximum(total[1], part[1])
    total[0][...] = ext.shifted(*total, top) + ext.shifted(*part, top)
    total[1][...] = top


def _head(K, D, L, g, G, N):
    """``S1[l, h] = sum_{n<N} P^n(0, l) nu^n(h)``, ``colsum[l] = sum_{n<N} P^n(0, l)`` and
    ``P^N(0, .)``, streamed over blocks of ``n`` (memory ``O(BLOCK_ROWS (L + D) + L D)``)."""
    d = g + G * D * (K - 1)
    h = np.arange(D + 1, dtype=np.float64)
    up, down = _layer_walk(L)
    # both recursions as one three-term recursion on the concatenation [P^n(0, .), nu^n(.)]:
    # the coefficients across the seam (from_above[L], below[0]) are zero
    stay = np.concatenate([np.zeros(L + 1), (g + G * (K - 2) * h) / d])
    from_below = np.concatenate([np.roll(up, 1), G * h / d])
    from_above = np.concatenate([np.roll(down, -1), G * (D - h) * (K - 1) / d])
    w, v = _point_mass(L + 1), _point_mass(D + 1)
    row = (np.concatenate([w[0], v[0]]), np.concatenate([w[1], v[1]]))
    s1 = (np.zeros((L + 1, D + 1)), np.full((L + 1, D + 1), ZERO_EXPONENT, np.int32))
    colsum = (np.zeros(L + 1), np.full(L + 1, ZERO_EXPONENT, np.int32))
    for start in range(0, N, BLOCK_ROWS):
        rows = min(BLOCK_ROWS, N - start)
        bm, be = np.empty((rows, L + D + 2)), np.empty((rows, L + D + 2), np.int32)
        for i in range(rows):
            bm[i], be[i] = row
            row = _step(*row, stay, from_below, from_above)
        wm, we, vm, ve = bm[:, : L + 1], be[:, : L + 1], bm[:, L + 1 :], be[:, L + 1 :]
        top = we.max(axis=0)
        _accumulate(colsum, (ext.shifted(wm, we, top).sum(axis=0), top))
        # P^n(0, l) = 0 unless n >= l and n = l (mod 2); nu^n(h) = 0 unless n >= h
        last = start + rows - 1
        lmax, hmax = min(L, last), min(D, last)
        for parity in (0, 1):
            r = slice((start + parity) % 2, rows, 2)
            cols = slice(parity, lmax + 1, 2)
            if not wm[r, cols].size:
                continue
            block = _matmul((wm[r, cols], we[r, cols]), (vm[r, : hmax + 1], ve[r, : hmax + 1]))[0]
            _accumulate((s1[0][cols, : hmax + 1], s1[1][cols, : hmax + 1]), block)
    return ext.normalize(*s1), ext.normalize(*colsum), (row[0][: L + 1], row[1][: L + 1])


def _layer_solve(abs_x, gap, b, L):
    """Solve ``(I - x P) y = b`` for each ``x`` in ``abs_x`` (``(J,)``, ``gap = 1 - x`` accurate),
    ``b`` extended ``(L+1,)`` non-negative; the layer walk ``P`` as in :func:`_head`.

    Thomas elimination in the GTH form: every pivot is ``excess + c`` with the row excess
    ``1 - x + a excess_prev / pivot_prev`` carried separately, so nothing is ever subtracted.
    Returns extended ``(J, L+1)``.
    """
    J = abs_x.size
    up, down = _layer_walk(L)
    pivot = np.empty((J, L + 1))
    pm, pe = np.empty((J, L + 1)), np.empty((J, L + 1), np.int32)
    excess = gap.copy()
    pivot[:, 0] = excess + abs_x * up[0]
    pm[:, 0], pe[:, 0] = b[0][0], b[1][0]
    for i in range(1, L + 1):
        ratio = abs_x * down[i] / pivot[:, i - 1]
        excess = gap + ratio * excess
        pivot[:, i] = excess + abs_x * up[i]
        pm[:, i], pe[:, i] = ext.add((b[0][i], b[1][i]), (ratio * pm[:, i - 1], pe[:, i - 1]))
    ym, ye = np.empty((J, L + 1)), np.empty((J, L + 1), np.int32)
    ym[:, L], ye[:, L] = ext.normalize(pm[:, L] / pivot[:, L], pe[:, L])
    for i in range(L - 1, -1, -1):
        sm, se = ext.add((pm[:, i], pe[:, i]), (abs_x * up[i] * ym[:, i + 1], ye[:, i + 1]))
        ym[:, i], ye[:, i] = ext.normalize(sm / pivot[:, i], se)
    return ym, ye


def _normalized_krawtchouk(K: int, D: int, j: int, sphere: list[int]) -> Pair:
    """``K_j(h) / n_j = K_h(j) / n_h`` for ``h = 0..D`` (extended), from exact integers.

    ``K_h(j)`` by the three-term recurrence in the degree ``h`` at the fixed point ``j``:
    ``(i+1) K_{i+1} = ((D-i)(K-1) + i - K j) K_i - (K-1)(D-i+1) K_{i-1}`` (exact division).
    """
    values = [1, (K - 1) * D - K * j]
    for i in range(1, D):
        values.append(
            (((D - i) * (K - 1) + i - K * j) * values[i] - (K - 1) * (D - i + 1) * values[i - 1]) // (i + 1)
        )
    pairs = [ext.from_ratio(values[h], sphere[h]) for h in range(D + 1)]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs], np.int32)


def _tail(K, D, L, N, g, G, pi_n):
    """``T[l, h] / Delta_l`` and its gross size ``sum_j |...|``, both times ``M`` (extended)."""
    modes = _mode_constants(K, D, g, G)
    log_mass = modes["log_sphere"] + N * modes["log_abs"]  # log n_j |x_j|^N
    # y_j grows with |x_j| (a power series in |x_j| with non-negative coefficients), so a mode is
    # negligible everywhere when some mode with |x| >= its own carries 2**70 times its mass
    order = np.argsort(-modes["abs"], kind="stable")
    dominant = np.maximum.accumulate(log_mass[order])
    candidates = np.sort(order[log_mass[order] >= dominant + math.log(MODE_DROP)])
    candidates = candidates[np.isfinite(log_mass[candidates])]
    if candidates.size == 0:
        return None, ()
    b = (pi_n[0], pi_n[1] - _log2_delta(L))
    ym, ye = _layer_solve(modes["abs"][candidates], modes["gap"][candidates], b, L)
    # X'_j(l) = n_j x_j^N y_j(l); for x_j < 0 only n = l (mod 2) contributes: sign (-1)^l
    sphere = [math.comb(D, k) * (K - 1) ** k for k in range(D + 1)]
    n_j = [ext.from_int(sphere[j + 1]) for j in candidates]
    x_n = ext.power(ext.normalize(modes["abs"][candidates], np.zeros(candidates.size, np.int32)), N)
    mass = ext.multiply((np.array([m for m, _ in n_j]), np.array([e for _, e in n_j], np.int32)), x_n)
    xm, xe = ext.multiply((ym, ye), (mass[0][:, None], mass[1][:, None]))
    odd = (np.arange(L + 1) % 2 == 1)[None, :] & modes["negative"][candidates][:, None]
    xm = np.where(odd, -xm, xm)
    log_x = ext.to_log(xm, xe)
    total = np.logaddexp.reduce(log_x, axis=0)
    keep = (log_x - total[None, :]).max(axis=1) > math.log(MODE_DROP)
    kept = candidates[keep] + 1
    kr = [_normalized_krawtchouk(K, D, int(j), sphere) for j in kept]
    kraw = (np.stack([k[0] for k in kr]), np.stack([k[1] for k in kr]))
    products = _matmul((xm[keep], xe[keep]), kraw, signed=True)
    return [ext.normalize(*c) for c in products], tuple(int(j) for j in kept)


def split_path_sum(K: int, D: int, L: int, g: float, G: float) -> RawTables:
    """Kernel tables ``Ã_l(h) = A_l(h) + alpha*_l`` of the sparse Hamming circuit.

    Args:
        K, D, L: categories, coordinates, layers.
        g, G: stay and one-coordinate conductances (positive floats).

    Returns:
        :class:`RawTables`: ``Ã`` ``(L+1, D+1)``, ``alpha*`` ``(L+1,)`` and the drift ``1/(M d)``
        as (mantissa, exponent) numpy pairs, every ``Ã`` positive; the head length ``N`` and the
        tail modes kept.
    """
    d = g + G * D * (K - 1)
    N = head_steps(K, D, g, G)
    s1, colsum, pi_n = _head(K, D, L, g, G, N)
    inv_m = ext.normalize(*(np.array(v) for v in ext.from_ratio(1, K**D)))
    log2_delta = _log2_delta(L)
    # per Delta_l: S1 / Delta, T / Delta
    s1 = (s1[0], s1[1] - log2_delta[:, None])
    tail, modes = _tail(K, D, L, N, g, G, pi_n)
    if tail is None:
        t = tg = (np.zeros_like(s1[0]), np.full_like(s1[1], ZERO_EXPONENT))
    else:
        t, tg = (ext.multiply(x, inv_m) for x in tail)
    # beta_l = max(0, max_h (tg - s1)/2 - t): then s1 + t + beta >= (s1 + tg) / 2 everywhere
    need = ext.add((0.5 * tg[0], tg[1]), (-0.5 * s1[0], s1[1]), (-t[0], t[1]))
    log_need = np.where(need[0] > 0, ext.to_log(*need), -np.inf)
    beta = ext.from_log(log_need.max(axis=1))
    value = ext.add(s1, t, (beta[0][:, None], beta[1][:, None]))
    kernel = ext.normalize(value[0] / d, value[1])
    alpha = ext.multiply(ext.normalize(colsum[0] / d, colsum[1] - log2_delta), inv_m)
    alpha_star = ext.add(alpha, ext.normalize(beta[0] / d, beta[1]))
    return RawTables(kernel, alpha_star, ext.normalize(inv_m[0] / d, inv_m[1]), N, modes)
