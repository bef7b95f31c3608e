"""The ``"cpp"`` sampler backend: the walk of :mod:`.reference` with each move drawn by the
compiled ops of ``ecd2g_fast._C`` (C++ on CPU tensors, CUDA kernels on CUDA tensors).

* Potential fields (:class:`~ecd2g_fast.fields.PotentialField`): ``potential_move`` computes every
  out-current of a walker on the fly from the ``(L+1, M)`` potential table (Ohm's law) and draws
  the outlet in the same pass; nothing of size ``B x M`` exists at any time.
* Any other field: the field's own ``currents_to_next`` / ``-currents_from_prev`` /
  ``sink_currents`` are evaluated in chunks of ``chunk_size`` neighbour states (one chunk when
  ``B x M`` is small) and ``consume_outlets`` folds each chunk into a streaming weighted reservoir,
  as :class:`.reference.OutletDraw` does: memory ``O(B x chunk)``.

Randomness: every op call draws a 64-bit Philox key and a 64-bit counter offset from the
``torch.Generator`` passed to :func:`ecd2g_fast.sample` (on the field's device); walker ``i`` of
the call uses counter ``(i, offset)``. The same seed therefore gives the same samples on the same
device, whatever the number of threads, and CPU and CUDA follow the same streams.
"""

from __future__ import annotations

import torch

from .. import _extension, backends
from ..fields import Field, PotentialField
from .reference import FieldError, default_chunk_size, describe_vertex, walk


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
    where = describe_vertex(field, int(layer[first]), int(z[first]))
    if flags & _extension.STATUS_BAD_INDEX:
        raise RuntimeError(f"ecd2g_fast sampler op got a layer or state index out of range at {where}")
    if flags & _extension.STATUS_NON_FINITE:
        raise FieldError(f"field returned a non-finite current at {where}")
    raise FieldError(f"no positive outflow at {where}")


def draw_outlets_chunked(
    field: Field,
    layer: torch.Tensor,
    z: torch.Tensor,
    mode: str,
    generator: torch.Generator | None,
    chunk_size: int,
) -> torch.Tensor:
    """One move's outlets for walkers of a generic field, drawn by ``consume_outlets``.

    Same contract as :func:`.reference.draw_outlets`: outlet ``w`` is the edge to ``(l+1, w)``,
    ``M + w`` the edge to ``(l-1, w)``, ``2M`` the sink.

    Args:
        field: any :class:`~ecd2g_fast.fields.Field`.
        layer, z: ``(n,)`` int64 walker positions on ``field.device``.
        mode: ``"bidirectional"`` or ``"forward"``.
        generator: ``torch.Generator`` on ``field.device`` or None.
        chunk_size: neighbour states per field evaluation (memory ``O(n x chunk_size)``).

    Returns:
        ``(n,)`` int64 outlet codes.

    Raises:
        FieldError: non-finite currents, or no positive outflow, at a walker's vertex.
    """
    ops = _extension.ops()
    circuit = field.circuit
    M, L = circuit.num_states, circuit.num_layers
    n, device = layer.shape[0], layer.device
    total = torch.zeros(n, dtype=torch.float64, device=device)
    choice = torch.full((n,), -1, dtype=torch.int64, device=device)
    status = torch.zeros(n, dtype=torch.int32, device=device)

    def consume(rows, weights, outlet_offset, negate):
        nonlocal total, choice, status
        if rows.numel() == 0:
            return
        if weights.dtype not in (torch.float32, torch.float64):
            weights = weights.to(torch.float64)
        seed, offset = philox_key(generator, device)
        total, choice, status = ops.consume_outlets(
            weights, rows, total, choice, status, outlet_offset, negate, seed, offset
        )

    forward_rows = torch.nonzero(layer < L).squeeze(1)
    lf, zf = layer[forward_rows], z[forward_rows]
    for start in range(0, M, chunk_size):
        stop = min(start + chunk_size, M)
        consume(forward_rows, field.currents_to_next(lf, zf, start, stop), start, False)
    if mode == "bidirectional":
        backward_rows = torch.nonzero(layer > 0).squeeze(1)
        lb, zb = layer[backward_rows], z[backward_rows]
        for start in range(0, M, chunk_size):
            stop = min(start + chunk_size, M)
            # out-current to (l-1, w) is minus the current arriving from it
            consume(backward_rows, field.currents_from_prev(lb, zb, start, stop), M + start, True)
        sink_rows = torch.nonzero(layer == L).squeeze(1)
        consume(sink_rows, field.sink_currents(z[sink_rows]).unsqueeze(1), 2 * M, False)
    status = torch.where((status == 0) & (total <= 0), _extension.STATUS_NO_OUTFLOW, status)
    raise_for_status(field, layer, z, status)
    return choice


def potential_drawer(field: PotentialField, mode: str):
    """The per-move drawer of a potential field: ``potential_move`` on its cached tables.

    Args:
        field: a :class:`~ecd2g_fast.fields.PotentialField`.
        mode: ``"bidirectional"`` or ``"forward"``.

    Returns:
        A function with the signature of :func:`.reference.draw_outlets`.
    """
    ops = _extension.ops()
    circuit = field.circuit
    phi = field.potential_table().to(torch.float64).contiguous()
    bidirectional = mode == "bidirectional"
    if bidirectional:
        sink = field.sink_table().to(device=phi.device, dtype=torch.float64).contiguous()
    else:
        sink = torch.zeros(circuit.num_states, dtype=torch.float64, device=phi.device)
    G, e = float(circuit.G), float(circuit.e)

    def draw(field_, layer, z, mode_, generator, chunk_size):
        seed, offset = philox_key(generator, layer.device)
        outlet, status = ops.potential_move(phi, sink, layer, z, G, e, bidirectional, seed, offset)
        raise_for_status(field, layer, z, status)
        return outlet

    return draw


def sample_cpp(
    field: Field,
    start: torch.Tensor,
    mode: str,
    generator: torch.Generator | None,
    chunk_size: int | None,
    max_moves: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``"cpp"`` backend of :func:`ecd2g_fast.sample` (arguments checked there).

    Args:
        field: any field; potential fields take the on-the-fly ``potential_move`` path.
        start: ``(B,)`` int64 flat start states on ``field.device``.
        mode: ``"bidirectional"`` or ``"forward"``.
        generator: ``torch.Generator`` on ``field.device`` or None.
        chunk_size: neighbour states per chunk for generic fields (None: ``min(M, 2**23 // B)``);
            unused for potential fields.
        max_moves: see :func:`.reference.walk`.

    Returns:
        ``(B,)`` int64 terminal flat states and ``(B,)`` int64 move counts.

    Raises:
        FieldError: see :func:`raise_for_status`.
        RuntimeError: the extension is not built, or a walker exceeded ``max_moves``.
    """
    if isinstance(field, PotentialField):
        draw = potential_drawer(field, mode)
    else:
        draw = draw_outlets_chunked
        if chunk_size is None:
            chunk_size = default_chunk_size(start.shape[0], field.circuit.num_states)
    return walk(field, start, mode, generator, chunk_size, max_moves, draw=draw)


def is_available(device: torch.device) -> bool:
    """Whether the ``"cpp"`` backend can run on ``device``.

    Args:
        device: the walkers' device.

    Returns:
        True when ``ecd2g_fast._C`` is built and has kernels for ``device.type`` (probed once).
    """
    return _extension.has_device_kernels(device)


backends.register(
    "sample",
    "cpp",
    sample_cpp,
    is_available,
    _extension.device_unavailable_reason,
)
