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
    check_tensor,
)

_INT64_LIMIT = 2**63


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
    """

    a: torch.Tensor
    b: torch.Tensor
    scalars: torch.Tensor


class Circuit:
    """``L + 1`` copies of ``S = {0..K-1}^D`` with resistors between adjacent layers.

    Args:
        num_categories: ``K >= 2``.
        dim: ``D >= 1``.
        num_layers: ``L >= 1`` (the circuit has ``L + 1`` vertex layers).
        r: forward resistance, between ``(l, z)`` and ``(l+1, z)``; ``0 < r < R``.
        R: lateral resistance, between ``(l, z)`` and ``(l+1, w)``, ``w != z``.

    Attributes (scalars are Python numbers, per-layer arrays float64 tensors on the CPU):
        num_states: ``M = K**D``, an exact Python int (it may have thousands of digits).
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

    Raises:
        TypeError: a size is not an int, or a resistance not a real number.
        ValueError: ``K < 2``, ``D < 1``, ``L < 1``, a resistance not finite and positive, or
            ``r >= R``.
    """

    def __init__(
        self, num_categories: int, dim: int, num_layers: int, r: float = 0.1, R: float = 100.0
    ) -> None:
        self.num_categories = check_int("num_categories", num_categories, 2)
        self.dim = check_int("dim", dim, 1)
        self.num_layers = check_int("num_layers", num_layers, 1)
        for name, value in (("r", r), ("R", R)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0, got {value}")
        if not r < R:
            raise ValueError(
                f"r must be smaller than R (0 < r < R is the supported regime), got r={r}, R={R}"
            )
        self.r, self.R = float(r), float(R)
        self.num_states: int = self.num_categories**self.dim
        self.g = 1.0 / self.r
        self.G = 1.0 / self.R
        self.e = self.g - self.G
        self._compute_constants()
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

    # ---------------------------------------------------------- states (docs/theory.md §1)
    def state_index(self, z: torch.Tensor) -> torch.Tensor:
        """Canonical row-major index ``sum_d z[..., d] * K**(D-1-d)``.

        Args:
            z: ``(..., D)`` int64 states with entries in ``[0, K)``.

        Returns:
            ``(...)`` int64 indices in ``[0, M)``.

        Raises:
            TypeError: ``z`` is not an int64 tensor.
            ValueError: wrong last dimension, entries outside ``[0, K)``, or ``M >= 2**63``.
        """
        z = check_tensor("z", z)
        if z.dtype != torch.int64:
            raise TypeError(f"z must have dtype torch.int64, got {z.dtype}")
        if z.dim() < 1 or z.shape[-1] != self.dim:
            raise ValueError(f"z must have shape (..., {self.dim}) (D = {self.dim}), got {tuple(z.shape)}")
        self._check_index_range("state_index")
        if z.numel() and (int(z.min()) < 0 or int(z.max()) >= self.num_categories):
            raise ValueError(f"z must hold states in [0, {self.num_categories}) (K = {self.num_categories})")
        return self.flatten(z)

    def index_state(self, idx: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`state_index`.

        Args:
            idx: ``(...)`` int64 indices in ``[0, M)``.

        Returns:
            ``(..., D)`` int64 states.

        Raises:
            TypeError: ``idx`` is not an int64 tensor.
            ValueError: an index outside ``[0, M)``, or ``M >= 2**63``.
        """
        idx = check_tensor("idx", idx)
        if idx.dtype != torch.int64:
            raise TypeError(f"idx must have dtype torch.int64, got {idx.dtype}")
        self._check_index_range("index_state")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_states):
            raise ValueError(f"idx must hold indices in [0, {self.num_states}) (M = K**D)")
        return self.unflatten(idx)

    def _check_index_range(self, what: str) -> None:
        if self.num_states >= _INT64_LIMIT:
            raise ValueError(f"{what} needs M = K**D < 2**63 to fit an int64 index")

    def flatten(self, z: torch.Tensor) -> torch.Tensor:
        """:meth:`state_index` without any check, for callers that validated ``z`` already.

        Args:
            z: ``(..., D)`` int64 states with entries in ``[0, K)``, on any device; ``M < 2**63``.

        Returns:
            ``(...)`` int64 indices on ``z``'s device. Nothing is checked: a wrong dtype, last
            dimension or value gives a meaningless result (or an error from torch).
        """
        idx = torch.zeros(z.shape[:-1], dtype=torch.int64, device=z.device)
        for d in range(self.dim):
            idx = idx * self.num_categories + z[..., d]
        return idx

    def unflatten(self, idx: torch.Tensor) -> torch.Tensor:
        """:meth:`index_state` without any check, for callers that validated ``idx`` already.

        Args:
            idx: ``(...)`` int64 indices in ``[0, M)``, on any device; ``M < 2**63``.

        Returns:
            ``(..., D)`` int64 states on ``idx``'s device. Nothing is checked: an index outside
            ``[0, M)`` gives a meaningless state.
        """
        powers = self.num_categories ** torch.arange(self.dim - 1, -1, -1, device=idx.device)
        return torch.div(idx.unsqueeze(-1), powers, rounding_mode="floor") % self.num_categories

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
            )
        return found

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
