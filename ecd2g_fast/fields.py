"""Current fields: what the walk of Definition 3.1 follows, and the contract a field keeps.

A *field* answers three questions about a circuit's currents, for a batch of walkers given by
their layer and flat state index (``Circuit.state_index``), over the neighbour slots of the
circuit (:mod:`ecd2g_fast.circuit_base`; for the complete :class:`Circuit` slot ``k`` is state
``k``, for a :class:`~ecd2g_fast.hamming.HammingCircuit` the ``1 + D (K-1)`` local edges):

* ``currents_to_next(layer, z, start, stop)``: ``I_layer(z, w)`` for ``w`` in slots
  ``[start, stop)`` of ``z``, the current from ``(layer, z)`` to ``(layer+1, w)``;
* ``currents_from_prev(layer, z, start, stop)``: ``I_{layer-1}(w, z)`` for the same ``w``, the
  current from ``(layer-1, w)`` into ``(layer, z)`` (its negative is the backward out-current);
* ``sink_currents(z)``: the current leaving ``(L, z)`` through the sink, ``>= 0``.

Everything the samplers need is in these three methods, so an analytic field
(:class:`ExactField`), a learned network (``CurrentNet``, ``PotentialNet``), a user's own network
on ``(Q, D)`` states (:class:`StateField`) or any :class:`Field` subclass plugs into
:func:`ecd2g_fast.sample` and :func:`ecd2g_fast.exact_output_distribution` unchanged. Fields whose
currents come from potentials by Ohm's law derive from :class:`PotentialField`, which also exposes
the ``(L+1, M)`` potential table that the O(log M) sampler uses.

The consumers call a field through :func:`call_field`: under ``torch.inference_mode()``, with its
output checked (shape, floating dtype, device) on every call, and a broken contract raised as
:class:`FieldError`. How many neighbour states a call covers follows a memory budget
(:data:`SAMPLE_MEMORY_BYTES`, :func:`memory_budget`, :func:`default_chunk_size`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import torch

from ._validation import check_enumerable, check_int, check_pmf, check_tensor
from .circuit import Circuit
from .circuit_base import CircuitBase
from .field_calls import (  # noqa: F401  (re-exported: part of the fields API)
    MEMORY_ENV,
    SAMPLE_MEMORY_BYTES,
    FieldError,
    SinkCache,
    cache_mode,
    call_field,
    check_output,
    column_blocks,
    default_chunk_size,
    field_currents,
    memory_budget,
    parameter_version,
)


def check_field(field: object) -> CircuitBase:
    """The circuit of a field that keeps the static part of the contract.

    Raises:
        TypeError: ``field`` is not a :class:`Field`.
        FieldError: it has no circuit (its ``__init__`` did not call
            ``super().__init__(circuit)``), its ``device`` is not a ``torch.device``, or its
            ``bytes_per_pair`` is not a positive int.
    """
    if not isinstance(field, Field):
        raise TypeError(f"field must be an ecd2g_fast Field, got {type(field).__name__}")
    name = type(field).__name__
    circuit = getattr(field, "circuit", None)
    if not isinstance(circuit, CircuitBase):
        raise FieldError(
            f"{name}.circuit must be an ecd2g_fast.Circuit or HammingCircuit, got {type(circuit).__name__} "
            "(a Field subclass calls super().__init__(circuit))"
        )
    if not isinstance(field.device, torch.device):
        raise FieldError(f"{name}.device must be a torch.device, got {type(field.device).__name__}")
    bytes_per_pair = field.bytes_per_pair
    if isinstance(bytes_per_pair, bool) or not isinstance(bytes_per_pair, int) or bytes_per_pair < 1:
        raise FieldError(f"{name}.bytes_per_pair must be a positive int, got {bytes_per_pair!r}")
    return circuit


class Field(abc.ABC):
    """A current field over a :class:`Circuit` or ``HammingCircuit``: the interface the samplers consume.

    A subclass calls ``super().__init__(circuit)``, implements :attr:`device` and the three
    current methods, and may set :attr:`acyclic` and :attr:`bytes_per_pair`.

    Inputs of the methods: ``layer`` and ``z`` are ``(B,)`` int64 tensors on :attr:`device`,
    ``z`` flat state indices (``Circuit.state_index``) in ``[0, M)``; ``start``, ``stop`` are
    Python ints with ``0 <= start <= stop <= N``, a range of neighbour slots (``S = stop - start``
    of them; ``N = circuit.num_neighbours``, and ``w_k = circuit.neighbour_at(z, k)``: on the
    complete circuit ``N = M`` and ``w_k = k``). Outputs are floating-point tensors (float64, or float32 for a network
    evaluated in float32; the samplers compute in float64) on :attr:`device`, in units of the total
    current (1), finite wherever a walker can be:

    * ``currents_to_next(layer, z, start, stop)``: ``(B, S)``, ``[b, j] = I_{layer[b]}(z[b],
      w_{start + j})``, the current from ``(layer, z)`` to ``(layer + 1, w)``; ``layer`` in ``[0, L)``.
    * ``currents_from_prev(layer, z, start, stop)``: ``(B, S)``, ``[b, j] = I_{layer[b] - 1}(w_{start
      + j}, z[b])``, the current from ``(layer - 1, w)`` into ``(layer, z)``, negative where current
      flows backward out of ``(layer, z)``; ``layer`` in ``[1, L]``.
    * ``sink_currents(z)``: ``(B,)``, the current ``>= 0`` leaving ``(L, z)`` through the sink.
      The exact field returns ``q(z)``. A learned field has no ``q``: it returns its own net
      inflow, ``max(sum_w I_{L-1}(w, z), 0)`` (Kirchhoff at ``(L, z)``, docs/theory.md §4), from
      the same currents its ``currents_from_prev`` gives, so that what enters a layer-L vertex
      leaves it.

    Empty calls: ``B = 0`` or ``start == stop`` return correctly shaped empty tensors
    (``(0, S)``, ``(B, 0)``, ``(0,)``).

    Checks: :func:`ecd2g_fast.sample` and :func:`ecd2g_fast.exact_output_distribution` check every
    output on every call (:func:`call_field`): its shape, floating dtype and device, and its
    finiteness where it is consumed; a violation raises :class:`FieldError` naming the method and
    the expected and actual shape (or dtype, device, vertex). They never ask for a square block
    (``B == S``, :func:`column_blocks`), so an output transposed to ``(S, B)`` is caught too.

    Autograd: the consumers call a field under ``torch.inference_mode()``, so a network field need
    not disable gradients itself. Its outputs are then inference tensors; a cache that outlives a
    call is built under :func:`cache_mode` (as :meth:`PotentialField.potential_table` is).

    Args:
        circuit: the circuit whose currents the field gives.

    Attributes:
        circuit: the :class:`Circuit` or ``HammingCircuit``.
        device: (property) the ``torch.device`` of the inputs and outputs.
        acyclic: True only when the currents come from a potential by Ohm's law (as in every
            :class:`PotentialField`): then no current cycle exists and every walk ends within
            ``(L+1) M`` moves (Proposition 3.2), the sampler's default cap. False (default): walks
            are capped at ``100 L + 1000`` moves.
        bytes_per_pair: bytes one call holds per (walker, neighbour state) pair of its output,
            with the sampler's own float64 buffers; the default ``chunk_size`` is
            ``memory_budget() // (B * bytes_per_pair)``. Default 1024, the cost of a small network
            (an MLP of width 128 holds a few float32 activations of 512 bytes a pair);
            analytic fields declare 64.

    Raises:
        TypeError: ``circuit`` is neither.
    """

    acyclic: bool = False
    bytes_per_pair: int = 1024

    def __init__(self, circuit: CircuitBase) -> None:
        if not isinstance(circuit, CircuitBase):
            raise TypeError(
                f"circuit must be an ecd2g_fast.Circuit or HammingCircuit, got {type(circuit).__name__}"
            )
        self.circuit = circuit

    @property
    @abc.abstractmethod
    def device(self) -> torch.device:
        """Device on which the field answers queries."""

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

    Subclasses implement :meth:`compute_potential_table`. The table is computed once, under
    :func:`cache_mode`, and cached; call :meth:`refresh` after changing whatever it depends on
    (for example a network's weights).
    """

    acyclic = True
    bytes_per_pair = 64

    def __init__(self, circuit: CircuitBase) -> None:
        super().__init__(circuit)
        self._table: torch.Tensor | None = None

    @abc.abstractmethod
    def compute_potential_table(self) -> torch.Tensor:
        """``(L+1, M)`` float64 potentials of every vertex, on :attr:`device`."""

    def potential_table(self) -> torch.Tensor:
        """Cached ``(L+1, M)`` float64 potential table."""
        if self._table is None:
            check_enumerable(f"{type(self).__name__}.potential_table", self.circuit.num_states)
            with cache_mode():
                self._table = self.compute_potential_table().to(torch.float64)
        return self._table

    def refresh(self) -> None:
        """Drop the cached potential table."""
        self._table = None

    def currents_to_next(self, layer: torch.Tensor, z: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return self.circuit.ohm(self.potential_table(), layer, z, layer + 1, start, stop)

    def currents_from_prev(self, layer: torch.Tensor, z: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        # I_{l-1}(w, z) = -(C(w, z) (phi_l(z) - phi_{l-1}(w)))
        return -self.circuit.ohm(self.potential_table(), layer, z, layer - 1, start, stop)

    def sink_currents(self, z: torch.Tensor) -> torch.Tensor:
        # Kirchhoff at (L, z): net inflow from layer L-1 (docs/theory.md §6)
        return self.sink_table()[z]

    def sink_table(self) -> torch.Tensor:
        """``(M,)`` sink currents of every layer-L vertex, clipped at 0."""
        return self.circuit.last_layer_inflow(self.potential_table()).clamp_min(0.0)


class ExactField(PotentialField):
    """The analytic current field of given pmfs (eq. 12-13), with ``phi`` from the circuit's ``potentials``.

    Args:
        circuit: a :class:`Circuit` or ``HammingCircuit``; ``M <= 2**24``.
        p: ``(M,)`` source pmf, float, on the device the field should live on.
        q: ``(M,)`` target pmf, float.

    Raises:
        TypeError, ValueError: bad ``circuit``, ``p`` or ``q`` (see ``Circuit.potentials``), ``M``
            too large.
    """

    def __init__(self, circuit: CircuitBase, p: torch.Tensor, q: torch.Tensor) -> None:
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


#: ``fn(layer, z, w) -> (B, S)`` currents of :class:`StateField`.
StateFn = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


class StateField(Field):
    """A field from a callable on ``(Q, D)`` states, so that a user's own network drives
    :func:`ecd2g_fast.sample` and :func:`ecd2g_fast.exact_output_distribution` without flat indices.

    ``fn(layer, z, w)`` returns the physical current ``I_layer(z[b], w[s])`` of every pair:
    ``layer`` a Python int in ``[0, L)``, ``z`` ``(B, D)`` int64 tail states (vertex layer
    ``layer``), ``w`` ``(S, D)`` int64 head states (layer ``layer + 1``), both on :attr:`device`;
    the result a ``(B, S)`` floating tensor on :attr:`device` in units of the total current
    (a network trained on normalised targets multiplies its output back by the scale first). The
    field methods map onto ``fn`` as follows (``states(...)``: ``Circuit.unflatten``):

    * ``currents_to_next(layer, z, start, stop)``: the walkers grouped by layer; for each layer
      ``l``, ``fn(l, states(z of those walkers), states(start..stop-1))``.
    * ``currents_from_prev(layer, z, start, stop)``: for each layer ``l``,
      ``fn(l - 1, states(start..stop-1), states(z of those walkers)).T``.
    * ``sink_currents(z)``: ``max(sum_w fn(L - 1, states(w), states(z)), 0)`` summed over all
      ``M`` states ``w`` in blocks of :func:`default_chunk_size` (Kirchhoff at ``(L, z)``), cached
      per state (:class:`SinkCache`). The cache is dropped by :meth:`refresh` and, when ``fn`` is
      an ``nn.Module``, whenever its parameters change (:func:`parameter_version`).

    ``fn`` is never asked for a square ``(B, B)`` block (:func:`column_blocks`), so a transposed
    output is caught; it is called under ``torch.inference_mode()`` by the samplers. The field is
    not :attr:`~Field.acyclic`: nothing makes ``fn``'s currents derive from a potential.

    Args:
        circuit: the circuit; ``M <= 2**24`` for the sink currents and the samplers.
        fn: the callable.
        device: where ``fn`` takes and returns tensors; default: the device of ``fn``'s first
            parameter when ``fn`` is an ``nn.Module`` with parameters, else the CPU.
        bytes_per_pair: memory ``fn`` holds per ``(z, w)`` pair at once, in bytes
            (:attr:`Field.bytes_per_pair`; default 1024, a small MLP).

    Raises:
        TypeError: ``circuit`` not a (complete) Circuit, ``fn`` not callable, ``device`` not a device.
        ValueError: ``bytes_per_pair < 1``.
        FieldError: (from the methods) ``fn`` returned anything but a ``(B, S)`` floating tensor on
            :attr:`device`, naming the call and the expected and actual shape.
    """

    def __init__(
        self,
        circuit: Circuit,
        fn: StateFn,
        *,
        device: torch.device | str | None = None,
        bytes_per_pair: int = 1024,
    ) -> None:
        if not isinstance(circuit, Circuit):
            raise TypeError(
                f"circuit must be an ecd2g_fast.Circuit (StateField evaluates all M states per call), "
                f"got {type(circuit).__name__}"
            )
        super().__init__(circuit)
        if not callable(fn):
            raise TypeError(f"fn must be callable (layer, z, w) -> (B, S) currents, got {type(fn).__name__}")
        if device is None:
            parameter = next(fn.parameters(), None) if isinstance(fn, torch.nn.Module) else None
            device = parameter.device if parameter is not None else torch.device("cpu")
        if not isinstance(device, (torch.device, str)):
            raise TypeError(f"device must be a torch.device or str, got {type(device).__name__}")
        self.fn = fn
        self._device = torch.device(device)
        self.bytes_per_pair = check_int("bytes_per_pair", bytes_per_pair, 1)
        self._sink = SinkCache()

    @property
    def device(self) -> torch.device:
        return self._device

    def refresh(self) -> None:
        """Drop the cached sink currents (after changing what ``fn`` computes)."""
        self._sink.clear()

    def _call(self, layer: int, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Checked ``fn(layer, z, w)``: ``(len(z), len(w))``."""
        out = self.fn(layer, z, w)
        what = f"fn(layer={layer}, z: {tuple(z.shape)}, w: {tuple(w.shape)})"
        return check_output(self, what, out, (z.shape[0], w.shape[0]), "(B, S)")

    def _blocks(
        self, layer: int, flat: torch.Tensor, start: int, stop: int, walker_is_tail: bool
    ) -> torch.Tensor:
        """``(n, stop - start)`` float64: ``I_layer(flat, w)`` (walker is the tail) or ``I_layer(w, flat)``."""
        c = self.circuit
        out = torch.empty((flat.shape[0], stop - start), dtype=torch.float64, device=self.device)
        walkers = c.unflatten(flat)
        for a, b in column_blocks(start, stop, stop - start, flat.shape[0]):
            states = c.unflatten(torch.arange(a, b, device=self.device))
            if walker_is_tail:
                out[:, a - start : b - start] = self._call(layer, walkers, states)
            else:
                out[:, a - start : b - start] = self._call(layer, states, walkers).T
        return out

    def _by_layer(
        self, layer: torch.Tensor, z: torch.Tensor, start: int, stop: int, tail: bool
    ) -> torch.Tensor:
        out = torch.zeros((z.shape[0], stop - start), dtype=torch.float64, device=self.device)
        if z.shape[0] == 0 or stop == start:
            return out
        for l in torch.unique(layer).tolist():
            rows = torch.nonzero(layer == l).squeeze(1)
            edge_layer = l if tail else l - 1
            out[rows] = self._blocks(edge_layer, z[rows], start, stop, walker_is_tail=tail)
        return out

    def currents_to_next(self, layer: torch.Tensor, z: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """``(B, stop-start)`` float64 ``I_layer(z, w)``; ``layer``, ``z`` ``(B,)`` int64, layer in ``[0, L)``."""
        return self._by_layer(layer, z, start, stop, tail=True)

    def currents_from_prev(self, layer: torch.Tensor, z: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """``(B, stop-start)`` float64 ``I_{layer-1}(w, z)``; layer in ``[1, L]``."""
        return self._by_layer(layer, z, start, stop, tail=False)

    def sink_currents(self, z: torch.Tensor) -> torch.Tensor:
        """``(B,)`` float64 ``max(sum_w I_{L-1}(w, z), 0)`` for ``(B,)`` int64 flat states ``z``."""
        key = parameter_version(self.fn) if isinstance(self.fn, torch.nn.Module) else None
        return self._sink.lookup(self, z, key, self._inflow)

    def _inflow(self, states: torch.Tensor) -> torch.Tensor:
        """``(n,)`` float64 ``sum_w I_{L-1}(w, z)`` over all ``M`` states ``w``, in budgeted blocks."""
        M, L = self.circuit.num_states, self.circuit.num_layers
        total = torch.zeros(states.shape[0], dtype=torch.float64, device=self.device)
        chunk = default_chunk_size(self, states.shape[0])
        for start in range(0, M, chunk):
            stop = min(start + chunk, M)
            total += self._blocks(L - 1, states, start, stop, walker_is_tail=False).sum(1)
        return total
