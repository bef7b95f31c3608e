"""The ECD2G circuit: closed-form potentials and currents (docs/theory.md §1-3, §7).

Notation (one throughout the package): ``K`` categories, ``D`` coordinates, ``M = K**D`` states,
layers ``l = 0..L``; a state is a ``(D,)`` int64 vector or, after the canonical row-major
flattening, one int64 index. ``g = 1/r`` is the forward conductance (between equal states of
adjacent layers), ``G = 1/R`` the lateral one (between different states).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ._validation import (
    MAX_DENSE_CURRENT_ENTRIES,
    check_enumerable,
    check_int,
    check_pmf,
    check_ranges,
    check_states,
    check_tensor,
    state_range,
)
from .circuit_base import CircuitBase

#: Per-layer coefficients are (L+1,) float64 tensors: at most 128 MiB each.
MAX_LAYERS = 2**24
#: Resistances outside this range have conductances that are not normal float64 numbers.
MIN_RESISTANCE, MAX_RESISTANCE = 1e-300, 1e300
#: Smallest accepted ``theta``. Below it the potential differences that carry the currents are
#: ``a_l - a_{l+1} ~ theta^2 a_l``: rounding in ``a_l`` breaks Kirchhoff's law by about
#: ``1e-17 / theta^2`` of the total current (measured over K <= 50, D <= 2, L <= 1000 and r/R from
#: 1e-2 to 1e-12: worst 6e-11 for theta in [1e-3, 1e-2), 4e-9 in [1e-4, 1e-3)), so 1e-3 keeps it
#: below 1e-9 everywhere. theta ~ sqrt(2 M r / R) for small values.
MIN_THETA = 1e-3


@dataclass(frozen=True)
class CircuitConfig:
    """The five numbers that define a circuit; JSON-friendly (``dataclasses.asdict``)."""

    num_categories: int
    dim: int
    num_layers: int
    r: float = 0.1
    R: float = 100.0


class DeviceCoefficients(NamedTuple):
    """The per-layer circuit constants that the target passes read, on one device (all float64).

    Attributes:
        a, b: ``(L+1,)`` the coefficients ``a_l``, ``b_l`` of eq. (12).
        scalars: ``(4,)`` ``(s, 1/M, g, G)`` (a kernel's float scalar argument would be float32).
        current_terms: ``(L, 9)`` :attr:`Circuit.current_terms`.
        potential_terms: ``(L+1, 4)`` :attr:`Circuit.potential_terms`.
    """

    a: torch.Tensor
    b: torch.Tensor
    scalars: torch.Tensor
    current_terms: torch.Tensor
    potential_terms: torch.Tensor


class Circuit(CircuitBase):
    """``L + 1`` copies of ``S = {0..K-1}^D`` with resistors between adjacent layers.

    Args:
        num_categories: ``K >= 2``.
        dim: ``D >= 1``.
        num_layers: ``L >= 1`` (the circuit has ``L + 1`` vertex layers).
        r: forward resistance, between ``(l, z)`` and ``(l+1, z)``; ``0 < r < R``.
        R: lateral resistance, between ``(l, z)`` and ``(l+1, w)``, ``w != z``.

    Attributes (scalars are Python numbers, per-layer arrays float64 tensors on the CPU):
        num_states: ``M = K**D``, an exact Python int (it may have thousands of digits).
        num_neighbours: ``M``: every state of a layer is joined to every state of the next
            (slot ``k`` is state ``k``, :class:`~ecd2g_fast.circuit_base.CircuitBase`).
        g, G: conductances ``1/r`` and ``1/R``.
        e: ``g - G > 0``.
        log_num_states, log_d, log_t: ``log M``, ``log d`` with ``d = g + (M-1) G``, ``log t``
            with ``t = d / e``. Always finite; ``d`` and ``t`` themselves overflow for large M.
        theta: ``arccosh(t) > 0``.
        s, log_s: the uniform potential drop per layer ``1 / (M d)`` (``s`` underflows to 0.0
            when ``M d > 1e308``; ``log_s`` is always finite).
        a, b, log_a, log_b: ``(L+1,)`` coefficients of eq. (12),
            ``a_l = cosh((L-l) theta) / (e sinh(theta) sinh(L theta))`` and ``b_l`` with ``l`` in
            place of ``L - l``. ``a``/``b`` may underflow to 0.0 far from their boundary layer,
            ``log_a``/``log_b`` never do.
        log_sigma: ``(L,)`` ``log sigma_l`` with ``sigma_l = s + (a_l + b_l + a_{l+1} + b_{l+1}) / M``,
            the scale of the potential drop across an edge of layer ``l`` (docs/theory.md §5).
        log_tau: ``(L+1,)`` ``log tau_l`` with ``tau_l = (a_l + b_l) / M``, the scale of the
            pmf-dependent part of the potentials of layer ``l`` (docs/theory.md §6).
        log_alpha, log_beta: ``(L+1,)`` logs of ``alpha_l = a_l / (a_l + b_l)`` and
            ``beta_l = b_l / (a_l + b_l)``, accurate to a few ulps whatever ``L`` and ``M``.
        current_terms: ``(L, 9)`` per edge layer ``l``, the logs of the nine terms of the
            normalised current ``I_l(z, w) / (C(z, w) sigma_l)`` (eq. 12-13), each divided by
            ``sigma_l``, with ``p = p(z)``, ``q = q(z)``, ``p' = p(w)``, ``q' = q(w)`` left out:
            ``+ [s, b_l / M, a_{l+1} / M, a_l (p), b_{l+1} (q')]`` and
            ``- [a_l / M, b_{l+1} / M, b_l (q), a_{l+1} (p')]`` in columns 0-4 and 5-8.
        potential_terms: ``(L+1, 4)`` per vertex layer ``l``, the logs of the four terms of the
            normalised potential ``(phi_l(z) + l s) / tau_l = alpha_l (M p - 1) - beta_l (M q - 1)``
            with ``alpha_l = a_l / (a_l + b_l)``, ``beta_l = b_l / (a_l + b_l)``:
            ``+ [beta_l, M alpha_l (p)]`` and ``- [alpha_l, M beta_l (q)]``.

    Raises:
        TypeError: a size is not an int, or a resistance not a real number.
        ValueError: ``K < 2``, ``D < 1``, ``L < 1``, a resistance not finite and positive, or
            ``r >= R``.
    """

    def __init__(
        self, num_categories: int, dim: int, num_layers: int, r: float = 0.1, R: float = 100.0
    ) -> None:
        super().__init__(num_categories, dim)
        self.num_layers = check_int("num_layers", num_layers, 1)
        if self.num_layers > MAX_LAYERS:
            raise ValueError(f"num_layers must be <= {MAX_LAYERS} (2**24), got {num_layers}")
        for name, value in (("r", r), ("R", R)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
            if isinstance(value, int) and abs(value) > MAX_RESISTANCE:
                raise ValueError(
                    f"{name} must lie in [{MIN_RESISTANCE:g}, {MAX_RESISTANCE:g}], got an int of {len(str(abs(value)))} digits"
                )
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0, got {value}")
            if not MIN_RESISTANCE <= value <= MAX_RESISTANCE:
                raise ValueError(
                    f"{name} must lie in [{MIN_RESISTANCE:g}, {MAX_RESISTANCE:g}] (its conductance 1/{name} "
                    f"must be a normal float64), got {value}"
                )
        if not r < R:
            raise ValueError(
                f"r must be smaller than R (0 < r < R is the supported regime), got r={r}, R={R}"
            )
        self.r, self.R = float(r), float(R)
        self.num_neighbours = self.num_states
        self.g = 1.0 / self.r
        self.G = 1.0 / self.R
        self.e = self.g - self.G
        try:
            self._compute_constants()
        except (ValueError, ZeroDivisionError):  # theta underflows to 0: r/R far below the limit
            self.theta = 0.0
        if self.theta < MIN_THETA:
            raise ValueError(
                f"r = {r:g} and R = {R:g} with M = K**D = {self.num_states} give theta = {self.theta:.3g} < "
                f"{MIN_THETA:g}: the closed-form currents would break Kirchhoff's law by more than 1e-9 of "
                f"the total current in float64 (docs/theory.md §7); use r/R >= {MIN_THETA**2 / 2 / self.num_states:.3g}"
            )
        # device -> DeviceCoefficients, filled by coefficients()
        self._coefficients: dict[torch.device, DeviceCoefficients] = {}

    # ---------------------------------------------------------- constants (docs/theory.md §7)
    def _compute_constants(self) -> None:
        M, g, G, e, L = self.num_states, self.g, self.G, self.e, self.num_layers
        self.log_num_states = self.dim * math.log(self.num_categories)
        representable = M.bit_length() < 1000  # float(M) * G and friends stay finite
        if representable:
            m = float(M)
            d = g + (m - 1.0) * G
            self.log_d = math.log(d)
            self.s = 1.0 / (m * d)
            x = m * G / e  # t = 1 + x
        else:
            # d = (M-1) G + g = M G (1 + (g-G)/(M G)); the correction is below 1e-298 here
            self.log_d = self.log_num_states + math.log(G)
            self.s = 0.0
            x = math.inf
        self.log_s = -(self.log_num_states + self.log_d)
        log_x = self.log_num_states + math.log(G) - math.log(e)
        if x <= 1e100:
            # arccosh(1 + x) without cancellation for small x
            self.theta = math.log1p(x + math.sqrt(x * (x + 2.0)))
            self.log_t = math.log1p(x)
        else:
            self.log_t = log_x + math.log1p(math.exp(-log_x))
            self.theta = self.log_t + math.log1p(math.sqrt(-math.expm1(-2.0 * self.log_t)))
        theta = self.theta
        # a_l = f(L - l), b_l = f(l) with
        # f(n) = 2 (exp((n-L-1) theta) + exp(-(n+L+1) theta)) / (e (1 - e^{-2 theta}) (1 - e^{-2 L theta}))
        # which is cosh(n theta) / (e sinh(theta) sinh(L theta)) with every exponent <= 0.
        n = torch.arange(L + 1, dtype=torch.float64)
        log_den = math.log(e) + math.log(-math.expm1(-2.0 * theta)) + math.log(-math.expm1(-2.0 * L * theta))
        log_f = math.log(2.0) + (n - L - 1) * theta + torch.log1p(torch.exp(-2.0 * n * theta)) - log_den
        f = 2.0 * (torch.exp((n - L - 1) * theta) + torch.exp(-(n + L + 1) * theta)) / math.exp(log_den)
        self.log_a, self.a = log_f.flip(0).contiguous(), f.flip(0).contiguous()
        self.log_b, self.b = log_f, f
        self._compute_scales()

    def _compute_scales(self) -> None:
        """The scales of the normalised targets and their terms, in log space (docs/theory.md §5-7)."""
        log_m, L, theta = self.log_num_states, self.num_layers, self.theta
        la, lb = self.log_a, self.log_b
        log_s = torch.full((L,), self.log_s, dtype=torch.float64)
        a0_m, b0_m, a1_m, b1_m = la[:-1] - log_m, lb[:-1] - log_m, la[1:] - log_m, lb[1:] - log_m
        self.log_sigma = torch.logsumexp(torch.stack([log_s, a0_m, b0_m, a1_m, b1_m]), dim=0)
        terms = [log_s, b0_m, a1_m, la[:-1], lb[1:], a0_m, b1_m, lb[:-1], la[1:]]  # + 5, - 4
        self.current_terms = torch.stack(terms, dim=1) - self.log_sigma[:, None]
        self.log_tau = torch.logaddexp(la, lb) - log_m
        # alpha_l = 1 / (1 + b_l / a_l) with log(b_l / a_l) written out: log_b - log_a would carry
        # errors of a few ulps of (L+1) theta, which need not cancel
        n = torch.arange(L + 1, dtype=torch.float64)
        log_ratio = (
            (2 * n - L) * theta
            + torch.log1p(torch.exp(-2 * n * theta))
            - torch.log1p(torch.exp(-2 * (L - n) * theta))
        )
        zero = torch.zeros_like(n)
        self.log_alpha, self.log_beta = -torch.logaddexp(zero, log_ratio), -torch.logaddexp(zero, -log_ratio)
        terms = [self.log_beta, self.log_alpha + log_m, self.log_alpha, self.log_beta + log_m]  # + 2, - 2
        self.potential_terms = torch.stack(terms, dim=1)

    @property
    def config(self) -> CircuitConfig:
        return CircuitConfig(self.num_categories, self.dim, self.num_layers, self.r, self.R)

    @property
    def d(self) -> float:
        """``g + (M-1) G``; raises ``OverflowError`` where only ``log_d`` is representable."""
        return math.exp(self.log_d)

    @property
    def t(self) -> float:
        """``d / e = cosh(theta)``; raises ``OverflowError`` where only ``log_t`` is representable."""
        return math.exp(self.log_t)

    def __repr__(self) -> str:
        return (
            f"Circuit(num_categories={self.num_categories}, dim={self.dim}, "
            f"num_layers={self.num_layers}, r={self.r}, R={self.R})"
        )

    # ---------------------------------------------------------- closed form (docs/theory.md §2-3)
    def potentials(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Vertex potentials, eq. (12), gauge ``c = 0``.

        ``phi_l(z) = -l s + a_l (p(z) - 1/M) - b_l (q(z) - 1/M)``.

        Args:
            p: ``(M,)`` source pmf (float; non-negative, sums to 1 within 1e-6).
            q: ``(M,)`` target pmf, likewise.

        Returns:
            ``(L+1, M)`` float64 on ``p``'s device, in volts for unit total current.

        Raises:
            TypeError, ValueError: bad ``p`` or ``q``; ``M > 2**24``.
        """
        check_enumerable("Circuit.potentials", self.num_states)
        p = check_pmf("p", p, self.num_states)
        q = check_pmf("q", q, self.num_states).to(p.device)
        return self.potential_table(p, q)

    def potential_table(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """:meth:`potentials` without any check, and for batches of pmf pairs.

        ``phi_l(z) = -l s + a_l (p(z) - 1/M) - b_l (q(z) - 1/M)`` (eq. 12, gauge ``c = 0``).

        Args:
            p: ``(..., M)`` float64 source pmfs.
            q: ``(..., M)`` float64 target pmfs, on ``p``'s device; ``p`` and ``q`` broadcast.

        Returns:
            ``(..., L+1, M)`` float64 on ``p``'s device (``(L+1, M)`` for ``(M,)`` inputs).
            Nothing is checked: not the dtype, device, shape, sign or sum of ``p`` and ``q``
            (they need not be pmfs: the map is affine in ``(p, q)``), nor ``M <= 2**24``.
        """
        coefficients = self.coefficients(p.device)
        uniform = 1.0 / self.num_states
        layers = torch.arange(self.num_layers + 1, dtype=torch.float64, device=p.device)
        return (
            -(layers * self.s)[:, None]
            + coefficients.a[:, None] * (p - uniform).unsqueeze(-2)
            - coefficients.b[:, None] * (q - uniform).unsqueeze(-2)
        )

    def coefficients(self, device: torch.device | str) -> DeviceCoefficients:
        """The per-layer coefficients ``a``, ``b`` and the scalars ``(s, 1/M, g, G)`` on ``device``.

        Copied to each device once and cached on the circuit, so that a training step pays no
        host-to-device copy per call. The tensors are shared between callers: do not modify them.

        Args:
            device: a ``torch.device`` (or its string form).

        Returns:
            :class:`DeviceCoefficients`: ``a``, ``b`` ``(L+1,)`` and ``scalars`` ``(4,)``, float64.
        """
        device = torch.device(device)
        found = self._coefficients.get(device)
        if found is None:
            # int / int rounds correctly and underflows to 0.0 for huge M; float(M) would overflow
            scalars = [self.s, 1 / self.num_states, self.g, self.G]
            found = self._coefficients[device] = DeviceCoefficients(
                self.a.to(device),
                self.b.to(device),
                torch.tensor(scalars, dtype=torch.float64, device=device),
                self.current_terms.to(device),
                self.potential_terms.to(device),
            )
        return found

    # ---------------------------------------------------------- target scales (docs/theory.md §5-6)
    def log_current_scale(self, layer: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Log of the factor that turns normalised current targets into physical ones.

        ``I_l(z, w) = exp(log_current_scale) * normalised``, with the scale
        ``C(z, w) sigma_l`` (``g`` or ``G`` times :attr:`log_sigma`'s ``sigma_l``). The log is finite
        for every circuit; the scale itself underflows to 0.0 once ``M`` is beyond float64.

        Args:
            layer: ``(Q,)`` int64 edge layers in ``[0, L)``.
            z: ``(Q, D)`` integer tail states in ``[0, K)``; ``w``: ``(Q, D)`` head states.

        Returns:
            ``(Q,)`` float64 ``log C(z, w) + log sigma_l`` on ``layer``'s device.

        Raises:
            TypeError, ValueError: as :func:`ecd2g_fast.current_targets` for ``layer``, ``z``, ``w``.
        """
        layer, (z, w) = self._check_queries(layer, {"z": z, "w": w}, self.num_layers - 1)
        log_c = torch.full(layer.shape, math.log(self.G), dtype=torch.float64, device=layer.device)
        log_c.masked_fill_((z == w).all(dim=1), math.log(self.g))
        return log_c + self.log_sigma.to(layer.device)[layer]

    def log_potential_scale(self, layer: torch.Tensor) -> torch.Tensor:
        """Log of the factor that turns normalised potential targets into physical ones.

        Potentials are affine in the normalised targets:
        ``phi_l(z) = -l s + exp(log_potential_scale) * normalised`` (gauge ``c = 0``), with the
        scale ``tau_l = (a_l + b_l) / M`` (:attr:`log_tau`). The log is finite for every circuit;
        ``tau_l`` and ``s`` underflow to 0.0 once ``M`` is beyond float64.

        Args:
            layer: ``(Q,)`` int64 vertex layers in ``[0, L]``.

        Returns:
            ``(Q,)`` float64 ``log tau_l`` on ``layer``'s device.

        Raises:
            TypeError: ``layer`` not an int64 tensor.
            ValueError: ``layer`` not ``(Q,)``, or out of range.
        """
        layer, _ = self._check_queries(layer, {}, self.num_layers)
        return self.log_tau.to(layer.device)[layer]

    def _check_queries(
        self, layer: object, states: dict[str, object], layer_max: int
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Check ``(Q,)`` int64 layers in ``[0, layer_max]`` and ``(Q, D)`` states (one sync for all)."""
        layer = check_tensor("layer", layer)
        if layer.dtype != torch.int64:
            raise TypeError(f"layer must have dtype torch.int64, got {layer.dtype}")
        if layer.dim() != 1:
            raise ValueError(f"layer must have shape (Q,), got {tuple(layer.shape)}")
        checked = [
            check_states(name, t, self.num_categories, self.dim, check_values=False)
            for name, t in states.items()
        ]
        for name, t in zip(states, checked):
            if t.shape[0] != layer.shape[0] or t.device != layer.device:
                raise ValueError(
                    f"{name} must have Q = {layer.shape[0]} rows on {layer.device}, got {tuple(t.shape)} on {t.device}"
                )
        ranges = [("layer", layer, 0, layer_max + 1, f"layer indices in [0, {layer_max}]")]
        check_ranges(ranges + [state_range(name, t, self.num_categories) for name, t in zip(states, checked)])
        return layer, checked

    # ---------------------------------------------------------- slots (circuit_base)
    def neighbour_at(self, z: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """Slot ``k`` of every state is state ``k``: ``slot`` broadcast against ``z``."""
        return torch.broadcast_tensors(z, slot)[1]

    def neighbour_states(self, z: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return torch.arange(start, stop, device=z.device).expand(z.shape[0], -1)

    def slot_conductances(self, z: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """``(B, stop - start)`` float64: ``G``, and ``g = G + e`` on the column of ``z`` itself."""
        columns = torch.arange(start, stop, device=z.device)
        same = columns.unsqueeze(0) == z.unsqueeze(1)
        conductances = torch.full(same.shape, self.G, dtype=torch.float64, device=z.device)
        return conductances.masked_fill_(same, self.g)

    def ohm(self, phi, layer, z, other_layer, start, stop):
        # a slice of the other layer's row, and the stay edge's extra e on one column: no gather
        drop = phi[layer, z].unsqueeze(1) - phi[other_layer, start:stop]
        currents = self.G * drop
        cols = z - start
        rows = torch.nonzero((cols >= 0) & (cols < stop - start)).squeeze(1)
        currents[rows, cols[rows]] += self.e * drop[rows, cols[rows]]
        return currents

    def last_layer_inflow(self, phi: torch.Tensor) -> torch.Tensor:
        return self.G * phi[-2].sum() + self.e * phi[-2] - self.d * phi[-1]

    def push(self, mass: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
        return torch.bmm(mass.unsqueeze(1), probabilities).squeeze(1)

    def currents(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Edge currents by Ohm's law, eq. (4) and (13).

        ``[l, z, w]`` is the current from ``(l, z)`` to ``(l+1, w)``,
        ``C(z, w) (phi_l(z) - phi_{l+1}(w))``; negative values flow backward.

        Args:
            p, q: ``(M,)`` pmfs, as in :meth:`potentials`.

        Returns:
            ``(L, M, M)`` float64 on ``p``'s device, in units of the total current (1).

        Raises:
            TypeError, ValueError: bad ``p`` or ``q``; ``L * M * M > 2**28``.
        """
        entries = self.num_layers * self.num_states**2
        if entries > MAX_DENSE_CURRENT_ENTRIES:
            raise ValueError(
                f"Circuit.currents materialises L*M*M = {entries} float64 values and supports at "
                f"most {MAX_DENSE_CURRENT_ENTRIES} (2**28); use an ExactField for on-demand currents"
            )
        return currents_from_potentials(self, self.potentials(p, q))


def currents_from_potentials(circuit: Circuit, phi: torch.Tensor) -> torch.Tensor:
    """Dense edge currents ``(L, M, M)`` from a potential table ``phi`` ``(L+1, M)`` (Ohm's law)."""
    drop = phi[:-1, :, None] - phi[1:, None, :]
    currents = circuit.G * drop
    diagonal = torch.diagonal(currents, dim1=1, dim2=2)
    diagonal += circuit.e * torch.diagonal(drop, dim1=1, dim2=2)
    return currents
