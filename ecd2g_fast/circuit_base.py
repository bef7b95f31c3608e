"""What fields and samplers need of a circuit, whatever its family: layers and neighbour slots.

A circuit joins each vertex ``(l, z)`` to ``N`` vertices of layer ``l+1`` and, by the same
relation, to ``N`` vertices of layer ``l-1``. The ``N`` edges of a vertex towards an adjacent
layer are listed in a fixed order of *slots* ``k = 0..N-1``; slot ``k`` of ``z`` leads to the
state :meth:`CircuitBase.neighbour_at` ``(z, k)``. The relation is symmetric (``w`` is in a slot
of ``z`` exactly when ``z`` is in a slot of ``w``, through an edge of the same conductance), so
one slot list serves both directions.

* :class:`~ecd2g_fast.Circuit` (complete): ``N = M``, slot ``k`` is state ``k``.
* :class:`~ecd2g_fast.hamming.HammingCircuit`: ``N = 1 + D (K-1)``, slot 0 the state itself,
  slot ``1 + c (K-1) + t`` the change of coordinate ``c`` to its ``t``-th other value.

The field contract (:class:`~ecd2g_fast.fields.Field`), the walk and the exact output law are
written over slots, so they serve both families unchanged.
"""

from __future__ import annotations

import abc

import torch

from .states import StateSpace

__all__ = ["CircuitBase"]


class CircuitBase(StateSpace, abc.ABC):
    """Layers ``0..L`` of ``S = {0..K-1}^D`` joined along neighbour slots (module docstring).

    Subclasses set ``num_layers`` (``L``) and ``num_neighbours`` (``N``, a Python int) and
    implement :meth:`neighbour_at` and :meth:`slot_conductances`; the other methods have generic
    forms that a family may replace by faster equivalents.
    """

    num_layers: int
    num_neighbours: int

    @abc.abstractmethod
    def neighbour_at(self, z: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """The state in slot ``slot`` of ``z``.

        Args:
            z: ``(...)`` int64 flat states in ``[0, M)``; ``slot``: int64 slots in ``[0, N)``
                broadcastable with ``z``. Unchecked.

        Returns:
            int64 flat states, of the broadcast shape, on ``z``'s device.
        """

    @abc.abstractmethod
    def slot_conductances(self, z: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Conductances (siemens) of the edges in slots ``start..stop-1`` of each state of ``z``.

        Args:
            z: ``(B,)`` int64 flat states; ``0 <= start <= stop <= N``.

        Returns:
            float64 on ``z``'s device, broadcastable to ``(B, stop - start)``.
        """

    def neighbour_states(self, z: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """``(B, stop - start)`` int64: the states in slots ``start..stop-1`` of each of ``(B,)`` ``z``."""
        slots = torch.arange(start, stop, device=z.device)
        return self.neighbour_at(z.unsqueeze(-1), slots)

    def ohm(
        self,
        phi: torch.Tensor,
        layer: torch.Tensor,
        z: torch.Tensor,
        other_layer: torch.Tensor,
        start: int,
        stop: int,
    ) -> torch.Tensor:
        """Ohm's law along slots: ``C (phi[layer, z] - phi[other_layer, w])`` for ``w`` in slots ``start..stop-1``.

        Args:
            phi: ``(L+1, M)`` float potentials (volts).
            layer, other_layer: ``(B,)`` int64 layers of the walker's vertex and of the adjacent
                layer (``layer +- 1``); ``z``: ``(B,)`` int64 flat states.
            start, stop: the slot range.

        Returns:
            ``(B, stop - start)`` currents (amperes, units of the total current) out of
            ``(layer, z)`` towards the adjacent layer, in ``phi``'s dtype.
        """
        heads = self.neighbour_states(z, start, stop)
        drop = phi[layer, z].unsqueeze(1) - phi[other_layer.unsqueeze(1), heads]
        return self.slot_conductances(z, start, stop) * drop

    def last_layer_inflow(self, phi: torch.Tensor) -> torch.Tensor:
        """``(M,)``: the net current from layer ``L-1`` into each vertex of layer ``L`` (Kirchhoff).

        Args:
            phi: ``(L+1, M)`` float potentials.

        Returns:
            ``(M,)`` in ``phi``'s dtype; not clipped.
        """
        M, L = phi.shape[1], self.num_layers
        states = torch.arange(M, device=phi.device)
        last = torch.full((M,), L, dtype=torch.int64, device=phi.device)
        return -self.ohm(phi, last, states, last - 1, 0, self.num_neighbours).sum(1)

    def push(self, mass: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
        """Move probability mass one step along the slots: ``out[i, w] = sum over (z, k) with
        neighbour_at(z, k) = w of mass[i, z] probabilities[i, z, k]``.

        Args:
            mass: ``(n, M)`` float64; ``probabilities``: ``(n, M, N)`` float64 transition
                probabilities of each slot.

        Returns:
            ``(n, M)`` float64.
        """
        n, M = mass.shape
        # the walk's mass propagation pushes every move: the (M, N) head table is built once per device
        cache = self.__dict__.setdefault("_push_heads", {})
        heads = cache.get(mass.device)
        if heads is None:
            heads = cache[mass.device] = self.neighbour_states(
                torch.arange(M, device=mass.device), 0, self.num_neighbours
            )
        moved = (mass.unsqueeze(2) * probabilities).reshape(n, -1)
        out = torch.zeros_like(mass)
        return out.scatter_add_(1, heads.reshape(1, -1).expand(n, -1), moved)
