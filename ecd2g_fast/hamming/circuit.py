"""The sparse Hamming circuit: potentials and local currents (docs/hamming.md §1-3).

Layers ``l = 0..L`` of ``S = {0..K-1}^D``; between ``(l, z)`` and ``(l+1, w)`` a resistor ``r``
if ``w == z``, ``R`` if ``w`` differs from ``z`` in exactly one coordinate, nothing otherwise.
Every vertex has ``1 + D (K-1)`` neighbours in each adjacent layer, so unlike the complete
:class:`~ecd2g_fast.Circuit` the conductance of a vertex grows with ``D (K-1)``, not with ``K**D``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._validation import MAX_DENSE_CURRENT_ENTRIES, check_enumerable, check_int, check_pmf
from ..circuit_base import CircuitBase
from .tables import KernelTables


@dataclass(frozen=True)
class HammingConfig:
    """The five numbers that define a Hamming circuit; JSON-friendly (``dataclasses.asdict``).

    ``R = None`` stands for the default ``r * D * (K-1)`` (:class:`HammingCircuit`).
    """

    num_categories: int
    dim: int
    num_layers: int
    r: float = 0.1
    R: float | None = None


def _resistance(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return float(value)


class HammingCircuit(CircuitBase):
    """``L + 1`` copies of ``S = {0..K-1}^D``; adjacent layers joined along Hamming distance <= 1.

    Args:
        num_categories: ``K >= 2``.
        dim: ``D >= 1``.
        num_layers: ``L >= 1``.
        r: stay resistance, between ``(l, z)`` and ``(l+1, z)`` (ohms; finite, > 0).
        R: lateral resistance, between ``(l, z)`` and ``(l+1, w)`` for each of the ``D (K-1)``
            states ``w`` one coordinate away from ``z``. Default ``r * D * (K-1)``: the lateral
            edges of a vertex together conduct exactly as much as its stay edge (lateral share
            1/2, the complete circuit's regime at ``M = 1024``; docs/hamming.md §1).

    Attributes (Python numbers):
        num_states: ``M = K**D``, an exact Python int.
        num_neighbours: ``1 + D (K-1)``, the stay edge and the lateral edges of a vertex.
        g, G: conductances ``1/r`` and ``1/R``.
        d: ``g + G D (K-1)``, the conductance from a vertex to a whole adjacent layer.
        lateral_share: ``G D (K-1) / d``.
        log_num_states, log_d: ``log M``, ``log d``.
        s, log_s: the uniform potential drop per layer ``1 / (M d)`` (``s`` underflows to 0.0
            for huge ``M``; ``log_s`` is always finite).

    Raises:
        TypeError: a size is not an int, or a resistance not a real number.
        ValueError: ``K < 2``, ``D < 1``, ``L < 1``, or a resistance not finite and positive.
    """

    def __init__(
        self, num_categories: int, dim: int, num_layers: int, r: float = 0.1, R: float | None = None
    ) -> None:
        super().__init__(num_categories, dim)
        K, D = self.num_categories, self.dim
        self.num_layers = check_int("num_layers", num_layers, 1)
        self.r = _resistance("r", r)
        self.R = self.r * D * (K - 1) if R is None else _resistance("R", R)
        self.num_neighbours = 1 + D * (K - 1)
        self.g, self.G = 1.0 / self.r, 1.0 / self.R
        self.d = self.g + self.G * D * (K - 1)
        self.lateral_share = self.G * D * (K - 1) / self.d
        self.log_num_states = D * math.log(K)
        self.log_d = math.log(self.d)
        self.log_s = -(self.log_num_states + self.log_d)
        self.s = 1 / self.num_states / self.d  # int / int rounds correctly, and underflows to 0.0
        self._tables: KernelTables | None = None

    @property
    def config(self) -> HammingConfig:
        """The defining numbers, with ``R`` resolved (``HammingCircuit(**asdict(config))`` is equal)."""
        return HammingConfig(self.num_categories, self.dim, self.num_layers, self.r, self.R)

    def __repr__(self) -> str:
        return (
            f"HammingCircuit(num_categories={self.num_categories}, dim={self.dim}, "
            f"num_layers={self.num_layers}, r={self.r}, R={self.R})"
        )

    # ---------------------------------------------------------- neighbours (docs/hamming.md §1)
    def neighbours(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Flat indices of the ``1 + D (K-1)`` neighbours of states, in the package's edge order.

        Column 0 is the state itself (the stay edge); column ``1 + c (K-1) + t`` changes
        coordinate ``c`` (0 = most significant, as in :meth:`state_index`) to the ``t``-th value
        other than its own, in increasing order: ``v = t`` if ``t < z[c]``, else ``t + 1``.

        Args:
            idx: ``(...)`` int64 flat indices in ``[0, M)``, unchecked; ``None`` (default) for
                all ``M`` states.

        Returns:
            ``(..., 1 + D (K-1))`` int64 (``(M, 1 + D (K-1))`` for ``idx=None``) on ``idx``'s
            device.

        Raises:
            ValueError: ``idx=None`` and ``M > 2**24`` or ``M (1 + D (K-1)) > 2**28``; or
                ``M >= 2**63``.
        """
        if idx is None:
            check_enumerable("HammingCircuit.neighbours", self.num_states)
            self._check_dense("neighbours", self.num_states * self.num_neighbours)
            idx = torch.arange(self.num_states)
        self._check_index_range("neighbours")
        slots = torch.arange(self.num_neighbours, device=idx.device)
        return self.neighbour_at(idx.unsqueeze(-1), slots)

    def _decode_slots(self, slot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Slot -> (coordinate ``c``, rank ``t`` of the new value among the ``K-1`` values other than
        the current one); slot 0 (the stay edge) decodes as ``(0, 0)``: callers mask it."""
        K = self.num_categories
        lateral = (slot - 1).clamp_min(0)
        coordinate = torch.div(lateral, K - 1, rounding_mode="floor")
        return coordinate, lateral - coordinate * (K - 1)

    def neighbour_at(self, z: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """The state in slot ``slot`` of ``z``, in the edge order of :meth:`neighbours`.

        Args:
            z: int64 flat states in ``[0, M)``, ``M < 2**63``; ``slot``: int64 in ``[0, 1 + D (K-1))``,
                broadcastable with ``z``. Unchecked.

        Returns:
            int64 flat states of the broadcast shape, on ``z``'s device.
        """
        K, D = self.num_categories, self.dim
        coordinate, other = self._decode_slots(slot)
        place = (K ** torch.arange(D - 1, -1, -1, device=z.device))[coordinate]
        digit = torch.div(z, place, rounding_mode="floor") % K
        value = other + (other >= digit).long()
        return torch.where(slot == 0, z, z + (value - digit) * place)

    def slot_changes(self, z: torch.Tensor, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """What each slot changes in state vectors: :meth:`neighbour_at` without flat indices (any ``D``).

        Args:
            z: ``(B, D)`` int64 states in ``[0, K)``, unchecked; ``0 <= start <= stop <= N``.

        Returns:
            ``coordinate`` ``(S,)`` int64 (``-1`` for slot 0, the stay edge) and ``value``
            ``(B, S)`` int64, the new value of that coordinate (0 for slot 0), ``S = stop - start``,
            on ``z``'s device.
        """
        slots = torch.arange(start, stop, device=z.device)
        coordinate, other = self._decode_slots(slots)
        value = other + (other >= z[:, coordinate]).long()
        stay = slots == 0
        return torch.where(stay, -1, coordinate), value.masked_fill(stay, 0)

    def apply_slot(self, z: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """The state in slot ``slot[b]`` of each state vector ``z[b]`` (one coordinate changed, or none).

        Args:
            z: ``(n, D)`` int64 states in ``[0, K)``; ``slot``: ``(n,)`` int64 in ``[0, N)``. Unchecked.

        Returns:
            ``(n, D)`` int64, a new tensor.
        """
        coordinate, other = self._decode_slots(slot)
        rows = torch.arange(z.shape[0], device=z.device)
        current = z[rows, coordinate]
        out = z.clone()
        out[rows, coordinate] = torch.where(slot == 0, current, other + (other >= current).long())
        return out

    def slot_of(self, z: torch.Tensor, coordinate: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """The slot of each state vector ``z[b]`` that sets ``coordinate[b]`` to ``value[b]``: the
        inverse of :meth:`apply_slot`; 0 (the stay slot) where ``value[b]`` is already there.

        Args:
            z: ``(n, D)`` int64 states in ``[0, K)``; ``coordinate``: ``(n, ...)`` int64 in ``[0, D)``;
                ``value``: int64 in ``[0, K)``, shaped like ``coordinate``. Unchecked.

        Returns:
            int64 slots in ``[0, N)``, shaped like ``coordinate``.
        """
        K = self.num_categories
        current = z.gather(1, coordinate.reshape(z.shape[0], -1)).view(coordinate.shape)
        lateral = 1 + coordinate * (K - 1) + value - (value > current).long()
        return torch.where(value == current, 0, lateral)

    def reverse_slot(self, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``(n,)`` int64: the slot of each state vector ``w[b]`` that leads back to ``z[b]``
        (``w[b]`` one slot of ``z[b]`` away, unchecked; the stay slot 0 where they are equal).

        Args:
            z, w: ``(n, D)`` int64 states in ``[0, K)``.
        """
        coordinate = (z != w).long().argmax(1)  # the changed coordinate (any, for the stay slot)
        return self.slot_of(w, coordinate, z.gather(1, coordinate[:, None]).squeeze(1))

    def neighbour_vectors(self, z: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """``(B, S, D)`` int64: the states in slots ``start..stop-1`` of each ``(B, D)`` state ``z``.

        Memory ``B S D`` int64: callers bound ``B S``.
        """
        coordinate, value = self.slot_changes(z, start, stop)
        out = z.unsqueeze(1).repeat(1, stop - start, 1)
        lateral = torch.nonzero(coordinate >= 0).squeeze(1)
        out[:, lateral, coordinate[lateral]] = value[:, lateral]
        return out

    def slot_conductances(self, z: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """``(stop - start,)`` float64: ``g`` for slot 0 (the stay edge), ``G`` for the others."""
        slots = torch.arange(start, stop, device=z.device)
        conductances = torch.full(slots.shape, self.G, dtype=torch.float64, device=z.device)
        return conductances.masked_fill_(slots == 0, self.g)

    def _check_dense(self, what: str, entries: int) -> None:
        if entries > MAX_DENSE_CURRENT_ENTRIES:
            raise ValueError(
                f"HammingCircuit.{what} materialises {entries} values and supports at most "
                f"{MAX_DENSE_CURRENT_ENTRIES} (2**28)"
            )

    # ---------------------------------------------------------- closed form (docs/hamming.md §2)
    def green(self) -> torch.Tensor:
        """``G_j(l, 0)``: the layer response of eigenspace ``j`` to a unit source at layer 0.

        On the characters of Hamming weight ``j`` the coupling between adjacent layers is
        ``lambda_j = g + G ((K-1) D - K j)``; the node equations become the tridiagonal system
        with diagonal ``d`` at the end layers, ``2d`` inside and off-diagonals ``-lambda_j``,
        whose inverse has the column
        ``G_j(l, 0) = rho^l (1 + rho^(2(L-l))) / (sqrt(d^2 - lambda_j^2) (1 - rho^(2L)))``,
        ``rho = lambda_j / (d + sqrt(d^2 - lambda_j^2))``. ``G_j(l, L) = G_j(L-l, 0)``.

        Returns:
            ``(L+1, D+1)`` float64 on the CPU; column ``j = 0`` (the layer means) is 0. Entries
            may underflow to 0.0 far from layer 0, never overflow.
        """
        K, D, L, g, G, d = self.num_categories, self.dim, self.num_layers, self.g, self.G, self.d
        j = torch.arange(1, D + 1, dtype=torch.float64)
        lam = g + G * ((K - 1) * D - K * j)
        # d - lam and d + lam written out, free of cancellation; gap = 1 - |rho|
        below, above = K * G * j, 2 * g + G * (2 * (K - 1) * D - K * j)
        root = torch.sqrt(below * above)
        gap = (torch.where(lam >= 0, below, above) + root) / (d + root)
        # log|rho| = log(1 - gap); rho = 0 (gap = 1) is clamped to a huge finite negative log, so
        # that l * log|rho| is 0 at l = 0 and -inf-like beyond
        log_rho = torch.log1p(-gap).clamp_min(-1e300)
        sign = torch.where(lam < 0, -1.0, 1.0)
        l = torch.arange(L + 1, dtype=torch.float64)[:, None]
        power = torch.exp(l * log_rho) * sign**l
        column = power * (1 + torch.exp(2 * (L - l) * log_rho)) / (root * -torch.expm1(2 * L * log_rho))
        return torch.cat([torch.zeros(L + 1, 1, dtype=torch.float64), column], dim=1)

    def _weights(self, device: torch.device) -> torch.Tensor:
        """``(M,)`` int64 Hamming weight of every mode index (entries != 0 among its D digits)."""
        weight = torch.zeros(1, dtype=torch.int64, device=device)
        moved = (torch.arange(self.num_categories, device=device) > 0).long()
        for _ in range(self.dim):
            weight = (weight[:, None] + moved[None, :]).reshape(-1)
        return weight

    def _transform(self, x: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """Per coordinate, values ``f(0..K-1)`` <-> ``(mean, f(1) - mean, ..., f(K-1) - mean)``.

        The coupling acts on each coordinate as ``a I + b J``: by ``a + b K`` on the mean and by
        ``a`` on the deviations, so in these coordinates every operator of the Hamming scheme is
        diagonal, with the entry of a mode index depending only on its Hamming weight.
        """
        K, D = self.num_categories, self.dim
        batch = x.shape[:-1]
        for c in range(D):
            y = x.reshape(*batch, K**c, K, K ** (D - 1 - c))
            head, rest = y[..., :1, :], y[..., 1:, :]
            if inverse:
                parts = [head - rest.sum(dim=-2, keepdim=True), head + rest]
            else:
                mean = y.mean(dim=-2, keepdim=True)
                parts = [mean, rest - mean]
            x = torch.cat(parts, dim=-2).reshape(*batch, -1)
        return x

    def _centred_potentials(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """``phi_l + l s``: the zero-mean part of every layer, ``(..., L+1, M)``."""
        green = self.green().to(p.device)
        weight = self._weights(p.device)
        source, sink = green[:, weight], green.flip(0)[:, weight]
        modes = source * self._transform(p).unsqueeze(-2) - sink * self._transform(q).unsqueeze(-2)
        return self._transform(modes, inverse=True)

    def potentials(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Vertex potentials for unit current, gauge ``c = 0`` (layer means ``-l s``).

        ``phi_l(z) = -l s + sum_x p(x) A_l(h(z, x)) - sum_y q(y) A_{L-l}(h(z, y))``, computed
        mode by mode: ``phi_l = -l s + sum_j G_j(l, 0) p_j - G_j(L-l, 0) q_j`` with ``p_j``,
        ``q_j`` the projections of ``p``, ``q`` on Hamming weight ``j`` (:meth:`green`).
        Accurate to a few ulps of ``max |p|``, ``max |q|`` times ``G_1(0, 0)``; for per-state
        relative accuracy at any ``D`` see :meth:`kernel_tables`.

        Args:
            p, q: ``(M,)`` source and target pmfs (float, non-negative, each summing to 1
                within 1e-6).

        Returns:
            ``(L+1, M)`` float64 on ``p``'s device: volts for a unit total current.

        Raises:
            TypeError, ValueError: bad ``p`` or ``q``; ``M > 2**24``.
        """
        return self.potential_table(*self._pmfs("potentials", p, q))

    def _pmfs(self, what: str, p: object, q: object) -> tuple[torch.Tensor, torch.Tensor]:
        """``p``, ``q`` checked as pmfs of the enumerable ``M`` states, float64 on ``p``'s device."""
        check_enumerable(f"HammingCircuit.{what}", self.num_states)
        p = check_pmf("p", p, self.num_states)
        return p, check_pmf("q", q, self.num_states).to(p.device)

    def potential_table(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """:meth:`potentials` without any check, and for batches of pmf pairs.

        Args:
            p: ``(..., M)`` float64 source pmfs; ``q``: ``(..., M)`` target pmfs on ``p``'s device.

        Returns:
            ``(..., L+1, M)`` float64 on ``p``'s device. Nothing is checked.
        """
        layers = torch.arange(self.num_layers + 1, dtype=torch.float64, device=p.device)
        return self._centred_potentials(p, q) - (layers * self.s)[:, None]

    def currents(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Currents on every edge, by Ohm's law.

        ``[l, z, k]`` is the current from ``(l, z)`` to ``(l+1, w)`` with ``w`` the ``k``-th
        neighbour of ``z`` (:meth:`neighbours`): ``C_k (phi_l(z) - phi_{l+1}(w))`` with
        ``C_0 = g``, ``C_k = G`` for ``k >= 1``. The drift ``s`` is added per edge, not through
        the potentials, so deep layers lose no digits to ``l s``. Negative values flow backward.

        Args:
            p, q: ``(M,)`` pmfs, as in :meth:`potentials`.

        Returns:
            ``(L, M, 1 + D (K-1))`` float64 on ``p``'s device, in units of the total current.

        Raises:
            TypeError, ValueError: bad ``p`` or ``q``; ``M > 2**24`` or
                ``L M (1 + D (K-1)) > 2**28``.
        """
        self._check_dense("currents", self.num_layers * self.num_states * self.num_neighbours)
        p, q = self._pmfs("currents", p, q)
        centred = self._centred_potentials(p, q)
        heads = self.neighbours(torch.arange(self.num_states, device=p.device))
        drop = self.s + centred[:-1, :, None] - centred[1:, heads]
        conductance = torch.full((self.num_neighbours,), self.G, dtype=torch.float64, device=p.device)
        conductance[0] = self.g
        return conductance * drop

    # ---------------------------------------------------------- tables (docs/hamming.md §3-5)
    def kernel_tables(self) -> KernelTables:
        """The per-layer kernels ``A_l(h) + alpha*_l`` with per-state relative accuracy, any D.

        Computed once by the split path sum (:func:`KernelTables.compute`) and cached on the
        circuit. The tables are shared between callers: do not modify them.

        Returns:
            :class:`KernelTables` on the CPU.

        Raises:
            ValueError: the lateral walk mixes in more than ``2**20`` steps (``R / r`` far above
                its default).
        """
        if self._tables is None:
            self._tables = KernelTables.compute(
                self.num_categories, self.dim, self.num_layers, self.g, self.G
            )
        return self._tables

    # ---------------------------------------------------------- target scales (docs/hamming.md)
    def log_current_scale(self, layer: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Log of the factor that turns normalised current targets into physical ones.

        ``I_l(z, w) = exp(log_current_scale) * normalised`` with the scale ``C(z, w) sigma_l``,
        ``sigma_l = s + kmax_l + kmax_{l+1} + kmax_{L-l} + kmax_{L-l-1}`` and
        ``kmax_m = max_h Ã_m(h)``: it bounds the drop across any edge of layer ``l`` for any pmfs,
        so ``|normalised| <= 1`` (:mod:`ecd2g_fast.hamming.targets`). The log is finite for every
        circuit; the scale itself underflows once ``M`` is beyond float64.

        Args:
            layer: ``(Q,)`` int64 edge layers in ``[0, L)``.
            z: ``(Q, D)`` integer tail states in ``[0, K)``; ``w``: ``(Q, D)`` head states, each
                equal to its ``z`` or one coordinate away.

        Returns:
            ``(Q,)`` float64 ``log C(z, w) + log sigma_l`` on ``layer``'s device.

        Raises:
            TypeError, ValueError: bad ``layer``, ``z`` or ``w`` (named), ``w`` not an edge head.
        """
        from .targets import log_current_scale

        return log_current_scale(self, layer, z, w)

    def log_potential_scale(self, layer: torch.Tensor) -> torch.Tensor:
        """Log of the factor that turns normalised potential targets into physical ones.

        ``phi_l(z) = -l s + exp(log_potential_scale) * normalised`` (gauge ``c = 0``) with the
        scale ``tau_l = kmax_l + kmax_{L-l}`` (``kmax_m = max_h Ã_m(h)``), which bounds
        ``|phi_l(z) + l s|`` for any pmfs: ``|normalised| <= 1``. The log is finite for every
        circuit.

        Args:
            layer: ``(Q,)`` int64 vertex layers in ``[0, L]``.

        Returns:
            ``(Q,)`` float64 ``log tau_l`` on ``layer``'s device.

        Raises:
            TypeError, ValueError: ``layer`` not a ``(Q,)`` int64 tensor in range.
        """
        from .targets import log_potential_scale

        return log_potential_scale(self, layer)


def check_hamming_circuit(circuit: object) -> HammingCircuit:
    """``circuit`` itself, or TypeError if it is not a :class:`HammingCircuit`."""
    if not isinstance(circuit, HammingCircuit):
        raise TypeError(f"circuit must be an ecd2g_fast.HammingCircuit, got {type(circuit).__name__}")
    return circuit
