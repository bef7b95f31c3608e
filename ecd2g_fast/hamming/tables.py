"""Kernel tables of the Hamming circuit: ``A_l(h) + alpha*_l`` for every layer and distance.

The potentials of the sparse Hamming circuit (docs/hamming.md §2) are sums over the data of
per-layer functions of the Hamming distance,

    phi_l(z) = -l s + sum_x p(x) A_l(h(z, x)) - sum_y q(y) A_{L-l}(h(z, y)),

and the currents are differences of them along edges. :class:`KernelTables` holds
``Ã_l(h) = A_l(h) + alpha*_l`` with float64 relative accuracy at every ``(l, h)``, in a
representation that neither overflows nor underflows (docs/hamming.md §4-5), and evaluates
edge drops with the gauge shift ``alpha*`` and the drift ``s`` added analytically.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._validation import check_tensor
from . import extended as ext
from .extended import ZERO_EXPONENT, ExtendedTensor, Pair
from .pathsum import split_path_sum


def distance_histogram(
    states: torch.Tensor, points: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Weight of ``points`` at each Hamming distance from each state.

    Args:
        states: ``(E, D)`` integer states.
        points: ``(B, D)`` integer states (samples, or the support of a pmf).
        weights: ``(B,)`` float weights of the points (default 1 each: counts).

    Returns:
        ``(E, D+1)`` float64: ``[e, h] = sum_b weights[b] [h(states[e], points[b]) == h]``.
        Memory ``O(E B D)``.
    """
    distance = (states[:, None, :] != points[None, :, :]).sum(dim=-1)
    if weights is None:
        weights = torch.ones(points.shape[0], dtype=torch.float64, device=points.device)
    out = torch.zeros(states.shape[0], states.shape[1] + 1, dtype=torch.float64, device=states.device)
    return out.scatter_add_(1, distance, weights.to(torch.float64).expand_as(distance).contiguous())


@dataclass(frozen=True, eq=False)
class KernelTables:
    """``Ã_l(h) = A_l(h) + alpha*_l > 0`` for ``l = 0..L``, ``h = 0..D`` (CPU tensors).

    ``A_l(h)`` is the potential at Hamming distance ``h`` from a unit source at layer 0 (uniform
    sink removed, zero mean over the states of each layer); ``B_l = A_{L-l}``. The shift
    ``alpha*_l`` is a gauge (it changes no current, docs/hamming.md §4) chosen so that every
    entry is a sum of positive, accurately computed pieces. Relative error a few times ``1e-14``
    per entry, at every ``D`` (checked against exact arithmetic by ``tests/test_hamming.py``).

    Attributes:
        mantissa: ``(L+1, D+1)`` float64 in ``[0.5, 1)``: ``Ã_l(h) = mantissa * 2**exponent``.
        exponent: ``(L+1, D+1)`` int64.
        alpha_star: :class:`ExtendedTensor` ``(L+1,)``, the gauge shift ``alpha*_l > 0``.
        drift: :class:`ExtendedTensor` ``()``, the uniform drop per layer ``s = 1/(M d)``.
        num_head_steps: ``N``, where the path sum was split (the mixing time of the lateral walk).
        modes: the Hamming weights ``j`` of the tail modes kept (a few tens at most).
    """

    mantissa: torch.Tensor
    exponent: torch.Tensor
    alpha_star: ExtendedTensor
    drift: ExtendedTensor
    num_head_steps: int
    modes: tuple[int, ...]

    @classmethod
    def compute(cls, num_categories: int, dim: int, num_layers: int, g: float, G: float) -> KernelTables:
        """The split path sum (docs/hamming.md §4); cost ``O(N L D)`` flops, ``O(L D)`` memory.

        Args:
            num_categories, dim, num_layers: ``K``, ``D``, ``L``.
            g, G: stay and lateral conductances (``> 0``).

        Raises:
            ValueError: the lateral walk needs more than ``2**20`` steps to mix.
        """
        raw = split_path_sum(num_categories, dim, num_layers, g, G)
        kernel, alpha_star, drift = (
            ExtendedTensor.from_numpy(*v) for v in (raw.kernel, raw.alpha_star, raw.drift)
        )
        return cls(kernel.mantissa, kernel.exponent, alpha_star, drift, raw.head_steps, raw.modes)

    @property
    def num_layers(self) -> int:
        return self.mantissa.shape[0] - 1

    @property
    def dim(self) -> int:
        return self.mantissa.shape[1] - 1

    @property
    def kernel(self) -> ExtendedTensor:
        """``Ã`` ``(L+1, D+1)`` as an :class:`ExtendedTensor`."""
        return ExtendedTensor(self.mantissa, self.exponent)

    def log_kernel(
        self, layer: torch.Tensor | None = None, distance: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``log Ã_l(h) = log(A_l(h) + alpha*_l)``, float64, finite everywhere.

        Args:
            layer, distance: broadcastable int64 tensors of layers in ``[0, L]`` and distances
                in ``[0, D]``; both ``None`` (default) for the whole ``(L+1, D+1)`` table.

        Returns:
            float64 of the broadcast shape (``(L+1, D+1)`` without arguments).
        """
        table = self.kernel.log()
        return table if layer is None and distance is None else table[layer, distance]

    def physical(self) -> ExtendedTensor:
        """``A_l(h) = Ã_l(h) - alpha*_l`` ``(L+1, D+1)``, signed.

        A difference: accurate to a few ulps of ``Ã_l(h) + alpha*_l``, so relatively accurate
        only where ``|A_l(h)|`` is not far below ``alpha*_l``. Currents never need it.
        """
        km, ke = self.kernel.numpy()
        am, ae = self.alpha_star.numpy()
        return ExtendedTensor.from_numpy(*ext.add((km, ke), (-am[:, None], ae[:, None])))

    def _gauge_terms(self, layer: np.ndarray) -> Pair:
        """The five terms of ``delta_l = s - alpha*_l + alpha*_{l+1} + alpha*_{L-l} - alpha*_{L-l-1}``."""
        am, ae = self.alpha_star.numpy()
        sm, se = self.drift.numpy()
        rows, signs = [layer, layer + 1, self.num_layers - layer, self.num_layers - layer - 1], [-1, 1, 1, -1]
        m = np.stack([np.broadcast_to(sm, layer.shape)] + [s * am[r] for r, s in zip(rows, signs)], axis=-1)
        e = np.stack([np.broadcast_to(se, layer.shape)] + [ae[r] for r in rows], axis=-1)
        return m, e

    def delta(self) -> ExtendedTensor:
        """``delta_l = s - alpha*_l + alpha*_{l+1} + alpha*_{L-l} - alpha*_{L-l-1}``, ``(L,)``.

        The part of the drop across any edge of layer ``l`` that does not depend on the data
        (docs/hamming.md §4): the drift ``s`` and the gauge shifts, summed exactly once.
        """
        return ExtendedTensor.from_numpy(*ext.total(*self._gauge_terms(np.arange(self.num_layers))))

    def edge_drop(
        self,
        layer: torch.Tensor | int,
        source_tail: torch.Tensor,
        source_head: torch.Tensor,
        target_tail: torch.Tensor,
        target_head: torch.Tensor,
    ) -> ExtendedTensor:
        """Potential drop ``phi_l(z) - phi_{l+1}(w)`` across edges ``(l, z) -> (l+1, w)``.

        With ``P_z``, ``P_w`` the source histograms over the distance from ``z`` and ``w``, and
        ``Q_z``, ``Q_w`` the target ones (each normalized to sum 1: counts or pmf weights):

            drop = delta_l + sum_h P_z[h] Ã_l(h) - P_w[h] Ã_{l+1}(h) - Q_z[h] Ã_{L-l}(h) + Q_w[h] Ã_{L-l-1}(h)

        summed once after aligning every term, so the absolute error is a few ulps of the sum
        of the terms' absolute values. The current is ``C * drop``, ``C = g`` on a stay edge
        (``w = z``) and ``G`` on a lateral one.

        Args:
            layer: int or ``(E,)`` int64 edge layers in ``[0, L)``.
            source_tail, source_head, target_tail, target_head: ``(E, D+1)`` float histograms
                (:func:`distance_histogram`), non-negative, each row with a positive sum.

        Returns:
            :class:`ExtendedTensor` ``(E,)``; negative where current flows backward.

        Raises:
            TypeError, ValueError: a layer out of range, a histogram of the wrong shape or with
                a negative entry or an empty row.
        """
        L, D = self.num_layers, self.dim
        hists = {"source_tail": source_tail, "source_head": source_head}
        hists |= {"target_tail": target_tail, "target_head": target_head}
        weights = [_check_histogram(name, h, D) for name, h in hists.items()]
        if len({w.shape[0] for w in weights}) != 1:
            raise ValueError(
                f"the four histograms must have the same number of rows, got {[w.shape[0] for w in weights]}"
            )
        layer = torch.as_tensor(layer)
        if layer.dtype != torch.int64 or layer.dim() > 1:
            raise TypeError(
                f"layer must be an int or an (E,) int64 tensor, got {layer.dtype} {tuple(layer.shape)}"
            )
        if layer.dim() == 1 and layer.shape[0] != weights[0].shape[0]:
            raise ValueError(
                f"layer must have {weights[0].shape[0]} entries (one per edge), got {layer.shape[0]}"
            )
        layer = layer.expand(weights[0].shape[0]).numpy()
        if layer.size and (layer.min() < 0 or layer.max() >= L):
            raise ValueError(f"layer must hold edge layers in [0, {L}), got [{layer.min()}, {layer.max()}]")
        km, ke = self.kernel.numpy()
        rows, signs = [layer, layer + 1, L - layer, L - layer - 1], [1, -1, -1, 1]
        terms = [self._gauge_terms(layer)]
        for w, r, sign in zip(weights, rows, signs):
            # the weight's exponent joins the kernel's: a tiny weight costs no digits
            wm, we = ext.normalize(w, np.zeros(w.shape, np.int32))
            terms.append((sign * wm * km[r], np.where(wm != 0, we + ke[r], ZERO_EXPONENT)))
        m, e = (np.concatenate(parts, axis=-1) for parts in zip(*terms))
        return ExtendedTensor.from_numpy(*ext.total(m, e.astype(np.int32)))


def _check_histogram(name: str, value: object, dim: int) -> np.ndarray:
    """An ``(E, D+1)`` non-negative float histogram with positive rows, normalized, as numpy."""
    value = check_tensor(name, value)
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if value.dim() != 2 or value.shape[1] != dim + 1:
        raise ValueError(f"{name} must have shape (E, {dim + 1}) (D + 1), got {tuple(value.shape)}")
    h = value.detach().cpu().to(torch.float64).numpy()
    total = h.sum(axis=1, keepdims=True)
    if not np.isfinite(h).all() or (h < 0).any() or (total <= 0).any():
        raise ValueError(f"{name} must be finite and non-negative with a positive sum in every row")
    return h / total
