"""The movement-rule walk (Definition 3.1): the one walk loop, and the plain-torch per-move draw.

A sampler backend is a *draw*: one move's outlet for each of a batch of walkers. The backend table
(:mod:`ecd2g_fast.backends`, op ``"sample"``) maps a name to a draw factory
``(field, mode) -> draw`` (:data:`DrawFactory`), which may build tables once per
:func:`ecd2g_fast.sample` call; :func:`walk` runs every backend's moves in the same loop.

One move of a batch of walkers draws an *outlet* for each, in the neighbour slots of the circuit
(:mod:`ecd2g_fast.circuit_base`, ``N = circuit.num_neighbours``): ``k`` in ``[0, N)`` is the edge
to ``(l+1, w_k)``, ``N + k`` the edge to ``(l-1, w_k)``, ``2N`` the sink at layer L, with ``w_k =
circuit.neighbour_at(z, k)``. On the complete circuit ``N = M`` and ``w_k = k``, so the codes are
``w``, ``M + w`` and ``2M``. Outlet weights are
the positive out-currents. The ``"torch"`` draw (:func:`draw_outlets`) consumes them in chunks of
neighbour states by a one-pass weighted reservoir: after a chunk with positive mass ``S`` and
running total ``T``, the draw moves into that chunk with probability ``S / (T + S)`` and, if it
does, to state ``j`` of it with probability ``w_j / S`` (inverse CDF). The result is an exact draw
proportional to the weights, with memory ``O(B x chunk)`` and one field evaluation per neighbour.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from ..fields import Field, FieldError, call_field, column_blocks, field_currents

MODES = ("bidirectional", "forward")

#: One move's outlets: ``draw(layer, z, generator, chunk_size) -> (n,) int64 outlet codes`` for
#: ``(n,)`` int64 walker positions, bound to one field and mode (see :data:`DrawFactory`).
Draw = Callable[[torch.Tensor, torch.Tensor, torch.Generator | None, int], torch.Tensor]
#: A ``"sample"`` backend of the table: ``(field, mode) -> Draw``; it may build per-call tables
#: and raises :class:`~ecd2g_fast.fields.FieldError` for a field it finds broken.
DrawFactory = Callable[[Field, str], Draw]

__all__ = ["MODES", "Draw", "DrawFactory", "FieldError", "OutletDraw", "draw_outlets", "torch_draw", "walk"]


def describe_vertex(field: Field, layer: int, state: int | torch.Tensor) -> str:
    """``layer l, state (z_1, ..., z_D)`` for error messages.

    ``state``: a flat index (int or 0-d tensor) or a ``(D,)`` state vector (fields with
    ``state_vectors``); long vectors are shortened.
    """
    if isinstance(state, torch.Tensor) and state.dim() == 1:
        values = state.tolist()
        shown = ", ".join(map(str, values[:32])) + (
            f", ... ({len(values)} coordinates)" if len(values) > 32 else ""
        )
        return f"layer {layer}, state ({shown})"
    index = int(state)
    coordinates = field.circuit.unflatten(torch.tensor([index]))[0].tolist()
    return f"layer {layer}, state {tuple(coordinates)} (index {index})"


def check_outflow(field: Field, layer: torch.Tensor, z: torch.Tensor, stuck: torch.Tensor) -> None:
    """Raise :class:`FieldError` for the first walker (in batch order) flagged in ``stuck``.

    Args:
        field: the field (for the state's coordinates in the message).
        layer, z: ``(n,)`` int64 walker positions.
        stuck: ``(n,)`` bool: the walker's vertex has no positive outflow.
    """
    if bool(stuck.any()):
        i = int(torch.nonzero(stuck)[0])
        raise FieldError(f"no positive outflow at {describe_vertex(field, int(layer[i]), z[i])}")


def checked_out_currents(
    field: Field,
    layer: torch.Tensor,
    z: torch.Tensor,
    rows: torch.Tensor,
    weights: torch.Tensor,
    negate: bool,
) -> torch.Tensor:
    """``weights`` of the walkers ``rows`` as float64 out-currents (negated when ``negate``).

    Raises:
        FieldError: a non-finite current, naming the first such walker's vertex.
    """
    weights = weights.to(torch.float64)
    if negate:
        weights = -weights
    finite = torch.isfinite(weights).all(dim=1)
    if not bool(finite.all()):
        bad = int(rows[~finite][0])
        raise FieldError(
            f"field returned a non-finite current at {describe_vertex(field, int(layer[bad]), z[bad])}"
        )
    return weights


class OutletDraw:
    """Running state of one move's streaming draw for ``n`` walkers, in plain torch."""

    def __init__(self, field: Field, layer: torch.Tensor, z: torch.Tensor, generator: torch.Generator | None):
        self.field, self.layer, self.z, self.generator = field, layer, z, generator
        n = layer.shape[0]
        self.total = torch.zeros(n, dtype=torch.float64, device=layer.device)
        self.choice = torch.full((n,), -1, dtype=torch.int64, device=layer.device)

    def consume(self, rows: torch.Tensor, weights: torch.Tensor, offset: int, negate: bool = False) -> None:
        """Offer outlets ``offset + j`` with weights ``max(+-weights[:, j], 0)`` to walkers ``rows``
        (``-weights`` when ``negate``)."""
        if rows.numel() == 0:
            return
        weights = checked_out_currents(self.field, self.layer, self.z, rows, weights, negate)
        cdf = weights.clamp_min(0.0).cumsum(dim=1)
        mass = cdf[:, -1]
        u = torch.rand(
            (rows.shape[0], 2), dtype=torch.float64, device=weights.device, generator=self.generator
        )
        new_total = self.total[rows] + mass
        take = u[:, 0] * new_total < mass
        pos = torch.searchsorted(cdf, (u[:, 1] * mass).unsqueeze(1), right=True).squeeze(1)
        pos = pos.clamp_max(weights.shape[1] - 1)
        self.choice[rows] = torch.where(take, offset + pos, self.choice[rows])
        self.total[rows] = new_total

    def result(self) -> torch.Tensor:
        """``(n,)`` int64 outlet codes; raises :class:`FieldError` for a walker without outflow."""
        check_outflow(self.field, self.layer, self.z, self.total <= 0)
        return self.choice


def draw_outlets(
    field: Field,
    mode: str,
    layer: torch.Tensor,
    z: torch.Tensor,
    generator: torch.Generator | None,
    chunk_size: int,
    reservoir: type[OutletDraw] = OutletDraw,
) -> torch.Tensor:
    """One move's outlet for each walker at ``(layer, z)``; see the module docstring for codes.

    A field with ``state_vectors`` (``z`` ``(n, D)`` state vectors) gives every outlet of every
    walker in one call of its ``outlet_currents(layer, z, mode)`` (``(n, 2N + 1)``: forward slots,
    backward slots, sink); the others are asked as follows.

    The field's currents are evaluated (checked, under inference mode:
    :func:`~ecd2g_fast.fields.call_field`) in blocks of at most ``chunk_size`` neighbour states
    (:func:`~ecd2g_fast.fields.column_blocks`) and offered to ``reservoir(field, layer, z,
    generator)`` (:class:`OutletDraw` or a class with its methods): forward currents, then the
    negated currents from the previous layer and the sink currents (bidirectional mode only).
    Walker sets that are empty are not asked for.
    """
    circuit = field.circuit
    N, L = circuit.num_neighbours, circuit.num_layers
    draw = reservoir(field, layer, z, generator)
    if getattr(field, "state_vectors", False):
        # every outlet of every walker from one evaluation of the field
        weights = call_field(field, "outlet_currents", (layer, z, mode), (layer.shape[0], 2 * N + 1))
        draw.consume(torch.arange(layer.shape[0], device=layer.device), weights, 0)
        return draw.result()
    groups = [("currents_to_next", torch.nonzero(layer < L).squeeze(1), 0)]
    if mode == "bidirectional":
        # out-current to (l-1, w) is minus the current arriving from it
        groups.append(("currents_from_prev", torch.nonzero(layer > 0).squeeze(1), N))
    for method, rows, offset in groups:
        if rows.numel() == 0:
            continue
        lr, zr = layer[rows], z[rows]
        for start, stop in column_blocks(0, N, chunk_size, rows.numel()):
            currents = field_currents(field, method, lr, zr, start, stop)
            draw.consume(rows, currents, offset + start, negate=offset > 0)
    if mode == "bidirectional":
        rows = torch.nonzero(layer == L).squeeze(1)
        if rows.numel():
            sink = call_field(field, "sink_currents", (z[rows],), (rows.numel(),))
            draw.consume(rows, sink.unsqueeze(1), 2 * N)
    return draw.result()


def torch_draw(field: Field, mode: str) -> Draw:
    """The ``"torch"`` draw factory: :func:`draw_outlets` with the plain-torch :class:`OutletDraw`."""
    return functools.partial(draw_outlets, field, mode)


def walk(
    field: Field,
    start: torch.Tensor,
    mode: str,
    draw: Draw,
    generator: torch.Generator | None,
    chunk_size: int,
    max_moves: int,
    keep_unfinished: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run walkers from ``(0, start)`` to termination: the one walk loop of every backend.

    Args:
        field: the current field.
        start: ``(B,)`` int64 flat start states, or ``(B, D)`` int64 state vectors for a field
            with ``state_vectors`` (Hamming circuits), on ``field.device``.
        mode: ``"bidirectional"`` (Definition 3.1) or ``"forward"`` (forward-only inference).
        draw: the per-move draw (:data:`Draw`), from a backend's :data:`DrawFactory`.
        generator: torch generator on ``field.device``, or None for the default one.
        chunk_size: neighbour states per field call (draws that evaluate the field).
        max_moves: raise ``RuntimeError`` if a walker has not terminated after this many moves.
        keep_unfinished: instead of raising, return such walkers where they are, with move count -1.

    Returns:
        ``(B,)`` int64 terminal flat states (``(B, D)`` state vectors) and ``(B,)`` int64 numbers
        of edge moves.
    """
    circuit = field.circuit
    L, N = circuit.num_layers, circuit.num_neighbours
    B = start.shape[0]
    layer = torch.zeros(B, dtype=torch.int64, device=start.device)
    z = start.clone()
    moves = torch.zeros(B, dtype=torch.int64, device=start.device)
    active = torch.arange(B, device=start.device)
    for step in range(max_moves + 1):
        if mode == "forward":
            # forward-only walkers stop on reaching layer L
            active = active[layer[active] < L]
        if active.numel() == 0:
            return z, moves
        if step == max_moves:  # every active walker has made `step` moves
            if keep_unfinished:
                moves[active] = -1
                return z, moves
            break
        la, za = layer[active], z[active]
        outlet = draw(la, za, generator, chunk_size)
        sink = outlet == 2 * N
        backward = (outlet >= N) & ~sink
        if za.dim() == 2:  # state vectors; the sink's slot code 2N % N = 0 is the stay edge
            z[active] = circuit.apply_slot(za, outlet % N)
        else:
            z[active] = torch.where(sink, za, circuit.neighbour_at(za, outlet % N))
        layer[active] = la + torch.where(backward, -1, 1) * (~sink)
        moves[active] += (~sink).to(torch.int64)
        active = active[~sink]
    raise RuntimeError(
        f"{active.numel()} walkers did not terminate within max_moves={max_moves}; the field has "
        "a current cycle (possible for a learned current field) or max_moves is too small"
    )
