"""Plain-torch reference of the current-target pass: pairwise comparison, O(Q B D).

Obviously correct and slow; the oracle for the fast backends.
"""

from __future__ import annotations

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


def potential_from_counts(
    circuit: Circuit, layer: torch.Tensor, count_x: torch.Tensor, count_y: torch.Tensor, nx: int, ny: int
) -> torch.Tensor:
    """``phi_layer(z)`` of eq. (12) with ``p(z) = count_x / nx``, ``q(z) = count_y / ny``; float64."""
    coefficients = circuit.coefficients(layer.device)
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
) -> torch.Tensor:
    """``C(z, w) (phi_l(z) - phi_{l+1}(w))`` from the four counts ``(#x==z, #y==z, #x==w, #y==w)``."""
    cxz, cyz, cxw, cyw = counts
    drop = potential_from_counts(circuit, layer, cxz, cyz, nx, ny) - potential_from_counts(
        circuit, layer + 1, cxw, cyw, nx, ny
    )
    # Not torch.where(same, g, G): Python-scalar branches give a float32 (default dtype) tensor.
    return torch.where(same, circuit.g * drop, circuit.G * drop)


def current_targets_reference(
    circuit: Circuit, layer: torch.Tensor, z: torch.Tensor, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    counts = (count_matches(z, x), count_matches(z, y), count_matches(w, x), count_matches(w, y))
    same = (z == w).all(dim=1)
    return current_from_counts(circuit, layer, same, counts, x.shape[0], y.shape[0])


def potential_targets_reference(
    circuit: Circuit, layer: torch.Tensor, z: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    return potential_from_counts(
        circuit, layer, count_matches(z, x), count_matches(z, y), x.shape[0], y.shape[0]
    )
