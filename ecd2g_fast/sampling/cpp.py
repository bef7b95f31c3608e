"""The ``"cpp"`` draw: each move of the walk (:func:`.reference.walk`) drawn by the compiled ops of
``ecd2g_fast._C`` (C++ on CPU tensors, CUDA kernels on CUDA tensors).

* Potential fields (:class:`~ecd2g_fast.fields.PotentialField`): ``potential_move`` computes every
  out-current of a walker on the fly from the ``(L+1, M)`` potential table (Ohm's law) and draws
  the outlet in the same pass; nothing of size ``B x M`` exists at any time. On a Hamming circuit
  ``hamming_move`` does the same over the walker's ``1 + D (K-1)`` local edges.
* Any other field: the field's own ``currents_to_next`` / ``-currents_from_prev`` /
  ``sink_currents`` are evaluated (checked, under inference mode) in chunks of ``chunk_size``
  neighbour states (one chunk when ``B x M`` is small) by :func:`.reference.draw_outlets`, and
  ``consume_outlets`` folds each chunk into a streaming weighted reservoir (:class:`CompiledOutletDraw`, the compiled form of
  :class:`.reference.OutletDraw`): memory ``O(B x chunk)``.

Randomness: every op call draws a 64-bit Philox key and a 64-bit counter offset from the
``torch.Generator`` passed to :func:`ecd2g_fast.sample` (on the field's device); walker ``i`` of
the call uses counter ``(i, offset)``. The same seed therefore gives the same samples on the same
device, whatever the number of threads, and CPU and CUDA follow the same streams.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from .. import _extension, backends
from ..fields import Field, FieldError, PotentialField, call_field
from ..hamming import HammingCircuit
from .reference import Draw, OutletDraw, describe_vertex, draw_outlets


def philox_key(generator: torch.Generator | None, device: torch.device) -> tuple[int, int]:
    """A fresh ``(seed, offset)`` pair of int64 for one op call, drawn from ``generator``.

    Args:
        generator: a ``torch.Generator`` on ``device``, or None for the device's default one.
        device: the device of the walkers.

    Returns:
        Two Python ints in ``[-2**63, 2**63)``.
    """
    key = torch.randint(-(2**63), 2**63 - 1, (2,), dtype=torch.int64, device=device, generator=generator)
    seed, offset = key.tolist()
    return seed, offset


def raise_for_status(field: Field, layer: torch.Tensor, z: torch.Tensor, status: torch.Tensor) -> None:
    """Raise for the first walker (in batch order) whose status flags a problem.

    Args:
        field: the field (for the state's coordinates in the message).
        layer, z: ``(n,)`` int64 positions of the walkers of the op call.
        status: ``(n,)`` int32 bit flags of the op (``_extension.STATUS_*``).

    Raises:
        FieldError: a non-finite current, or no positive outflow, at the walker's vertex (named by
            layer and state).
        RuntimeError: an index out of range reached the op (a bug in the caller).
    """
    flagged = torch.nonzero(status).squeeze(1)
    if flagged.numel() == 0:
        return
    first = int(flagged[0])
    flags = int(status[first])
    where = describe_vertex(field, int(layer[first]), z[first])
    if flags & _extension.STATUS_BAD_INDEX:
        raise RuntimeError(f"ecd2g_fast sampler op got a layer or state index out of range at {where}")
    if flags & _extension.STATUS_NON_FINITE:
        raise FieldError(f"field returned a non-finite current at {where}")
    raise FieldError(f"no positive outflow at {where}")


class CompiledOutletDraw(OutletDraw):
    """:class:`.reference.OutletDraw` with each chunk consumed by the compiled ``consume_outlets``.

    Every :meth:`consume` draws a fresh Philox key from the generator; the per-walker status flags
    of the op are raised, for the first flagged walker, by :meth:`result`.

    Raises:
        RuntimeError: the extension is not built (on construction).
    """

    def __init__(self, field: Field, layer: torch.Tensor, z: torch.Tensor, generator: torch.Generator | None):
        self.ops = _extension.ops()
        super().__init__(field, layer, z, generator)
        self.status = torch.zeros(layer.shape[0], dtype=torch.int32, device=layer.device)

    def consume(self, rows: torch.Tensor, weights: torch.Tensor, offset: int, negate: bool = False) -> None:
        if rows.numel() == 0:
            return
        if weights.dtype not in (torch.float32, torch.float64):
            weights = weights.to(torch.float64)
        seed, key_offset = philox_key(self.generator, self.layer.device)
        self.total, self.choice, self.status = self.ops.consume_outlets(
            weights, rows, self.total, self.choice, self.status, offset, negate, seed, key_offset
        )

    def result(self) -> torch.Tensor:
        status = torch.where(
            (self.status == 0) & (self.total <= 0), _extension.STATUS_NO_OUTFLOW, self.status
        )
        raise_for_status(self.field, self.layer, self.z, status)
        return self.choice


def op_drawer(field: Field, move: Callable[..., tuple[torch.Tensor, torch.Tensor]]) -> Draw:
    """A per-move draw (:data:`.reference.Draw`) from a compiled move op.

    Args:
        field: the field (named in error messages).
        move: ``(layer, z, seed, offset) -> (outlet, status)``: one move of the walkers with the
            Philox key ``(seed, offset)``, drawn afresh from the generator for every move.

    Returns:
        The draw; it raises (:func:`raise_for_status`) for the first walker the op flags.
    """

    def draw(layer, z, generator, chunk_size):
        seed, offset = philox_key(generator, layer.device)
        outlet, status = move(layer, z, seed, offset)
        raise_for_status(field, layer, z, status)
        return outlet

    return draw


def tables(field: PotentialField, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The checked ``(L+1, M)`` potential table and ``(M,)`` sink currents of a potential field, float64.

    In forward mode the sink is zeros (walkers stop on reaching layer L). Finiteness is checked
    by the op, at the walkers' vertices.

    Raises:
        FieldError: a table of the wrong shape, dtype or device (:func:`~ecd2g_fast.fields.call_field`).
    """
    circuit = field.circuit
    L, M = circuit.num_layers, circuit.num_states
    phi = call_field(field, "potential_table", (), (L + 1, M)).to(torch.float64).contiguous()
    if mode != "bidirectional":
        return phi, torch.zeros(M, dtype=torch.float64, device=phi.device)
    return phi, call_field(field, "sink_table", (), (M,)).to(torch.float64).contiguous()


def potential_drawer(field: PotentialField, mode: str) -> Draw:
    """The per-move draw of a potential field: ``potential_move`` on its tables (Ohm's law on the fly),
    ``hamming_move`` on a Hamming circuit (the ``1 + D (K-1)`` local edges of each walker).

    Args:
        field: a :class:`~ecd2g_fast.fields.PotentialField`.
        mode: ``"bidirectional"`` or ``"forward"``.

    Raises:
        FieldError: see :func:`tables`.
    """
    ops = _extension.ops()
    phi, sink = tables(field, mode)
    circuit = field.circuit
    bidirectional = mode == "bidirectional"
    if isinstance(circuit, HammingCircuit):
        K, D, g, G = circuit.num_categories, circuit.dim, float(circuit.g), float(circuit.G)

        def move(layer, z, seed, offset):
            return ops.hamming_move(phi, sink, layer, z, K, D, g, G, bidirectional, seed, offset)

    else:
        G, e = float(circuit.G), float(circuit.e)

        def move(layer, z, seed, offset):
            return ops.potential_move(phi, sink, layer, z, G, e, bidirectional, seed, offset)

    return op_drawer(field, move)


def cpp_drawer(field: Field, mode: str) -> Draw:
    """The ``"cpp"`` draw factory (:data:`.reference.DrawFactory`).

    Potential fields take the on-the-fly :func:`potential_drawer`; any other field
    :func:`.reference.draw_outlets` with the compiled reservoir :class:`CompiledOutletDraw`, in
    blocks of at most ``chunk_size`` neighbour states.

    Raises:
        RuntimeError: the extension is not built (for a potential field here, otherwise at the
            first move).
        FieldError: see :func:`tables`, :func:`raise_for_status`.
    """
    if isinstance(field, PotentialField):
        return potential_drawer(field, mode)
    return functools.partial(draw_outlets, field, mode, reservoir=CompiledOutletDraw)


def is_available(device: torch.device) -> bool:
    """Whether the ``"cpp"`` draw can run on ``device``.

    Args:
        device: the walkers' device.

    Returns:
        True when ``ecd2g_fast._C`` is built and has kernels for ``device.type`` (probed once).
    """
    return _extension.has_device_kernels(device)


backends.register("sample", "cpp", cpp_drawer, is_available, _extension.device_unavailable_reason)
