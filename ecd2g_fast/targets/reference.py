"""Plain-torch reference of the current-target pass: pairwise comparison, O(Q B D).

Obviously correct and slow; the oracle for the fast backends. The map from counts to targets
(:func:`potential_from_counts`, :func:`current_from_counts`) is shared with the ``"torch"``
backend, and the ``"triton"`` kernel computes the same expressions in the same order.
"""

from __future__ import annotations

import functools

import torch

from ..circuit import Circuit

# Bound on the (chunk, B, D) boolean comparison tensor.
_MAX_COMPARE_ELEMENTS = 2**26


def count_matches(queries: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """``(Q,)`` int64: for each query state, how many rows of ``batch`` equal it.

    Args:
        queries: ``(Q, D)`` int64.
        batch: ``(B, D)`` int64.
    """
    Q, D = queries.shape
    B = batch.shape[0]
    counts = torch.empty(Q, dtype=torch.int64, device=queries.device)
    step = max(1, _MAX_COMPARE_ELEMENTS // max(B * D, 1))
    for start in range(0, Q, step):
        block = queries[start : start + step]
        counts[start : start + step] = (block[:, None, :] == batch[None, :, :]).all(dim=2).sum(dim=1)
    return counts


def signed_exp_sum(positive: list[torch.Tensor], negative: list[torch.Tensor]) -> torch.Tensor:
    """``(Q,)`` float64 ``sum_j exp(positive[j]) - sum_j exp(negative[j])`` of ``(Q,)`` log-terms.

    Computed as ``(sum_j +-exp(t_j - m)) exp(m)`` with ``m = max_j t_j`` (log-sum-exp style), so
    that no term overflows or underflows before the sum: the result is finite and correct to a
    few ulps of ``sum_j exp(t_j)`` wherever the result itself is representable, and ``+-inf``
    only where it exceeds float64. Every row needs one finite term (``-inf`` terms are 0).
    Elementwise only (no reduction over the terms), so that inductor fuses it into one loop.
    """
    m = functools.reduce(torch.maximum, positive + negative)
    total = sum(torch.exp(t - m) for t in positive) - sum(torch.exp(t - m) for t in negative)
    # 0 * exp(m) would be nan where exp(m) overflows
    return torch.where(total == 0, 0.0, total * torch.exp(m))


def _log_frequency(count: torch.Tensor, n: int) -> torch.Tensor:
    """``log(count / n)`` in float64 (``-inf`` for a count of 0)."""
    return torch.log(count.to(torch.float64) / n)


def potential_from_counts(
    circuit: Circuit,
    layer: torch.Tensor,
    count_x: torch.Tensor,
    count_y: torch.Tensor,
    nx: int,
    ny: int,
    normalize: bool = False,
) -> torch.Tensor:
    """``phi_layer(z)`` of eq. (12) with ``p(z) = count_x / nx``, ``q(z) = count_y / ny``; float64.

    ``normalize``: ``(phi_l(z) + l s) / tau_l`` instead (:attr:`Circuit.potential_terms`), in
    log space: finite for every circuit wherever the value is representable.
    """
    coefficients = circuit.coefficients(layer.device)
    if normalize:
        beta, m_alpha, alpha, m_beta = coefficients.potential_terms[layer].unbind(1)
        # + beta_l + M alpha_l p - alpha_l - M beta_l q
        p_term, q_term = m_alpha + _log_frequency(count_x, nx), m_beta + _log_frequency(count_y, ny)
        return signed_exp_sum([beta, p_term], [alpha, q_term])
    # int / int rounds correctly and underflows to 0.0 for huge M; float(M) would overflow
    uniform = 1 / circuit.num_states
    a = coefficients.a[layer]
    b = coefficients.b[layer]
    p_hat = count_x.to(torch.float64) / nx
    q_hat = count_y.to(torch.float64) / ny
    return -layer.to(torch.float64) * circuit.s + a * (p_hat - uniform) - b * (q_hat - uniform)


def current_from_counts(
    circuit: Circuit,
    layer: torch.Tensor,
    same: torch.Tensor,
    counts: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    nx: int,
    ny: int,
    normalize: bool = False,
) -> torch.Tensor:
    """``C(z, w) (phi_l(z) - phi_{l+1}(w))`` from the four counts ``(#x==z, #y==z, #x==w, #y==w)``.

    ``normalize``: ``I_l(z, w) / (C(z, w) sigma_l)`` instead (:attr:`Circuit.current_terms`, in
    log space: finite for every circuit wherever the value is representable); ``same`` is unused.
    """
    cxz, cyz, cxw, cyw = counts
    if normalize:
        t = circuit.coefficients(layer.device).current_terms[layer].unbind(1)
        # + [s, b_l/M, a_{l+1}/M, a_l p(z), b_{l+1} q(w)] - [a_l/M, b_{l+1}/M, b_l q(z), a_{l+1} p(w)]
        pz, qw = t[3] + _log_frequency(cxz, nx), t[4] + _log_frequency(cyw, ny)
        qz, pw = t[7] + _log_frequency(cyz, ny), t[8] + _log_frequency(cxw, nx)
        return signed_exp_sum([t[0], t[1], t[2], pz, qw], [t[5], t[6], qz, pw])
    drop = potential_from_counts(circuit, layer, cxz, cyz, nx, ny) - potential_from_counts(
        circuit, layer + 1, cxw, cyw, nx, ny
    )
    # Not torch.where(same, g, G): Python-scalar branches give a float32 (default dtype) tensor.
    return torch.where(same, circuit.g * drop, circuit.G * drop)


def current_targets_reference(
    circuit: Circuit,
    layer: torch.Tensor,
    z: torch.Tensor,
    w: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    normalize: bool = False,
) -> torch.Tensor:
    """The ``"reference"`` backend of :func:`ecd2g_fast.current_targets` (checked inputs)."""
    counts = (count_matches(z, x), count_matches(z, y), count_matches(w, x), count_matches(w, y))
    same = (z == w).all(dim=1)
    return current_from_counts(circuit, layer, same, counts, x.shape[0], y.shape[0], normalize)


def potential_targets_reference(
    circuit: Circuit,
    layer: torch.Tensor,
    z: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    normalize: bool = False,
) -> torch.Tensor:
    """The ``"reference"`` backend of :func:`ecd2g_fast.potential_targets` (checked inputs)."""
    return potential_from_counts(
        circuit, layer, count_matches(z, x), count_matches(z, y), x.shape[0], y.shape[0], normalize
    )
