"""Current fields: what the walk of Definition 3.1 follows.

A *field* answers three questions about a circuit's currents, for a batch of walkers given by
their layer and flat state index (``Circuit.state_index``):

* ``currents_to_next(layer, z, start, stop)``: ``I_layer(z, w)`` for ``w`` in ``[start, stop)``,
  the current from ``(layer, z)`` to ``(layer+1, w)``;
* ``currents_from_prev(layer, z, start, stop)``: ``I_{layer-1}(w, z)``, the current from
  ``(layer-1, w)`` into ``(layer, z)`` (its negative is the backward out-current);
* ``sink_currents(z)``: the current leaving ``(L, z)`` through the sink, ``>= 0``.

Everything the samplers need is in these three methods, so an analytic field
(:class:`ExactField`), a learned network (``CurrentNet``, ``PotentialNet``) or any user object
with the same methods plugs into :func:`ecd2g_fast.sample` unchanged. Fields whose currents come
from potentials by Ohm's law derive from :class:`PotentialField`, which also exposes the
``(L+1, M)`` potential table that the O(log M) sampler uses.
"""

from __future__ import annotations

import abc

import torch

from ._validation import check_enumerable, check_pmf, check_tensor
from .circuit import Circuit


class Field(abc.ABC):
    """Abstract current field over a :class:`Circuit`.

    Shapes: ``B`` walkers; ``layer`` and ``z`` are ``(B,)`` int64 on the field's device;
    ``[start, stop)`` is a range of flat neighbour states. All currents are float64 (or float32
    for learned fields evaluated in float32) in units of the total current.
    """

    circuit: Circuit

    @property
    @abc.abstractmethod
    def device(self) -> torch.device:
        """Device on which the field answers queries."""

    #: True when the currents come from a potential (Ohm's law): then no current cycle exists
    #: and every walk terminates within ``(L+1) * M`` moves (Proposition 3.2).
    acyclic: bool = False

    @abc.abstractmethod
    def currents_to_next(self, layer: torch.Tensor, z: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """``(B, stop-start)``: ``I_layer(z, w)``, ``layer`` in ``[0, L)``."""

    @abc.abstractmethod
    def currents_from_prev(self, layer: torch.Tensor, z: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """``(B, stop-start)``: ``I_{layer-1}(w, z)``, ``layer`` in ``[1, L]``."""

    @abc.abstractmethod
    def sink_currents(self, z: torch.Tensor) -> torch.Tensor:
        """``(B,)``: the current leaving ``(L, z)`` through the sink, clipped at 0."""


class PotentialField(Field):
    """A field given by a potential table ``phi`` ``(L+1, M)``; currents by Ohm's law.

    Subclasses implement :meth:`potential_table`. The table is computed once and cached; call
    :meth:`refresh` after changing whatever it depends on (for example a network's weights).
    """

    acyclic = True

    def __init__(self, circuit: Circuit) -> None:
        self.circuit = circuit
        self._table: torch.Tensor | None = None

    @abc.abstractmethod
    def compute_potential_table(self) -> torch.Tensor:
        """``(L+1, M)`` float64 potentials of every vertex, on :attr:`device`."""

    def potential_table(self) -> torch.Tensor:
        """Cached ``(L+1, M)`` float64 potential table."""
        if self._table is None:
            check_enumerable(f"{type(self).__name__}.potential_table", self.circuit.num_states)
            self._table = self.compute_potential_table().to(torch.float64)
        return self._table

    def refresh(self) -> None:
        """Drop the cached potential table."""
        self._table = None

    def _ohm(self, phi_from: torch.Tensor, phi_to: torch.Tensor, z: torch.Tensor, start: int) -> torch.Tensor:
        # C(z, w) (phi_from(z) - phi_to(w)) with C = G + e [z == w]
        drop = phi_from[:, None] - phi_to
        currents = self.circuit.G * drop
        cols = z - start
        hit = (cols >= 0) & (cols < phi_to.shape[1])
        rows = torch.nonzero(hit).squeeze(1)
        currents[rows, cols[rows]] += self.circuit.e * drop[rows, cols[rows]]
        return currents

    def currents_to_next(self, layer: torch.Tensor, z: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        phi = self.potential_table()
        return self._ohm(phi[layer, z], phi[layer + 1, start:stop], z, start)

    def currents_from_prev(self, layer: torch.Tensor, z: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        phi = self.potential_table()
        # I_{l-1}(w, z) = -(C(w, z) (phi_l(z) - phi_{l-1}(w)))
        return -self._ohm(phi[layer, z], phi[layer - 1, start:stop], z, start)

    def sink_currents(self, z: torch.Tensor) -> torch.Tensor:
        # Kirchhoff at (L, z): net inflow from layer L-1 (docs/theory.md §6)
        return self.sink_table()[z]

    def sink_table(self) -> torch.Tensor:
        """``(M,)`` sink currents of every layer-L vertex, clipped at 0."""
        c, phi = self.circuit, self.potential_table()
        inflow = c.G * phi[-2].sum() + c.e * phi[-2] - c.d * phi[-1]
        return inflow.clamp_min(0.0)


class ExactField(PotentialField):
    """The analytic current field of given pmfs (eq. 12-13), with ``phi`` from ``Circuit.potentials``.

    Args:
        circuit: the circuit; ``M <= 2**24``.
        p: ``(M,)`` source pmf, float, on the device the field should live on.
        q: ``(M,)`` target pmf, float.

    Raises:
        TypeError, ValueError: bad ``p`` or ``q`` (see ``Circuit.potentials``), ``M`` too large.
    """

    def __init__(self, circuit: Circuit, p: torch.Tensor, q: torch.Tensor) -> None:
        if not isinstance(circuit, Circuit):
            raise TypeError(f"circuit must be an ecd2g_fast.Circuit, got {type(circuit).__name__}")
        super().__init__(circuit)
        check_enumerable("ExactField", circuit.num_states)
        self.p = check_pmf("p", p, circuit.num_states)
        self.q = check_pmf("q", check_tensor("q", q).to(self.p.device), circuit.num_states)

    @property
    def device(self) -> torch.device:
        return self.p.device

    def compute_potential_table(self) -> torch.Tensor:
        return self.circuit.potential_table(self.p, self.q)

    def sink_table(self) -> torch.Tensor:
        # exactly q by construction; Kirchhoff's sum would add rounding
        return self.q
