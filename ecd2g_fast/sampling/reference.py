"""The movement-rule walk in plain torch (Definition 3.1): the ``"torch"`` sampler backend.

One move of a batch of walkers draws an *outlet* for each: ``w`` in ``[0, M)`` is the edge to
``(l+1, w)``, ``M + w`` the edge to ``(l-1, w)``, ``2M`` the sink at layer L. Outlet weights are
the positive out-currents. They are consumed in chunks of neighbour states by a one-pass
weighted reservoir: after a chunk with positive mass ``S`` and running total ``T``, the draw
moves into that chunk with probability ``S / (T + S)`` and, if it does, to state ``j`` of it
with probability ``w_j / S`` (inverse CDF). The result is an exact draw proportional to the
weights, with memory ``O(B x chunk)`` and one field evaluation per neighbour.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..fields import Field

MODES = ("bidirectional", "forward")
#: Default bound on ``B x chunk`` float64 values held at once by a move.
DEFAULT_CHUNK_ELEMENTS = 2**23


#: A per-move outlet sampler, with the signature of :func:`draw_outlets`:
#: ``(field, layer, z, mode, generator, chunk_size) -> (n,) int64 outlet codes``.
DrawFn = Callable[..., torch.Tensor]
#: A backend of :func:`ecd2g_fast.sample`, with the signature of :func:`walk` without ``draw``:
#: ``(field, start, mode, generator, chunk_size, max_moves) -> (terminal, moves)``.
SampleFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


class FieldError(ValueError):
    """A field gave nan/inf currents, or no positive outflow at a vertex a walker reached."""


def default_chunk_size(num_walkers: int, num_states: int) -> int:
    return max(1, min(num_states, DEFAULT_CHUNK_ELEMENTS // max(num_walkers, 1)))


def describe_vertex(field: Field, layer: int, index: int) -> str:
    """``layer l, state (z_1, ..., z_D)`` for error messages."""
    state = field.circuit.unflatten(torch.tensor([index]))[0].tolist()
    return f"layer {layer}, state {tuple(state)} (index {index})"


def check_outflow(field: Field, layer: torch.Tensor, z: torch.Tensor, stuck: torch.Tensor) -> None:
    """Raise :class:`FieldError` for the first walker (in batch order) flagged in ``stuck``.

    Args:
        field: the field (for the state's coordinates in the message).
        layer, z: ``(n,)`` int64 walker positions.
        stuck: ``(n,)`` bool: the walker's vertex has no positive outflow.
    """
    if bool(stuck.any()):
        i = int(torch.nonzero(stuck)[0])
        raise FieldError(f"no positive outflow at {describe_vertex(field, int(layer[i]), int(z[i]))}")


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
        weights = weights.to(torch.float64)
        if negate:
            weights = -weights
        finite = torch.isfinite(weights).all(dim=1)
        if not bool(finite.all()):
            bad = int(rows[~finite][0])
            raise FieldError(
                f"field returned a non-finite current at {describe_vertex(self.field, int(self.layer[bad]), int(self.z[bad]))}"
            )
        cdf = weights.clamp_min(0.0).cumsum(dim=1)
        mass = cdf[:, -1]
        u = torch.rand((rows.shape[0], 2), dtype=torch.float64, device=weights.device, generator=self.generator)
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
    layer: torch.Tensor,
    z: torch.Tensor,
    mode: str,
    generator: torch.Generator | None,
    chunk_size: int,
    reservoir: type[OutletDraw] = OutletDraw,
) -> torch.Tensor:
    """One move's outlet for each walker at ``(layer, z)``; see the module docstring for codes.

    The field's currents are evaluated in chunks of ``chunk_size`` neighbour states and offered to
    ``reservoir(field, layer, z, generator)`` (:class:`OutletDraw` or a class with its methods):
    forward currents, then the negated currents from the previous layer and the sink currents
    (bidirectional mode only).
    """
    circuit = field.circuit
    M, L = circuit.num_states, circuit.num_layers
    draw = reservoir(field, layer, z, generator)
    forward_rows = torch.nonzero(layer < L).squeeze(1)
    lf, zf = layer[forward_rows], z[forward_rows]
    for start in range(0, M, chunk_size):
        stop = min(start + chunk_size, M)
        draw.consume(forward_rows, field.currents_to_next(lf, zf, start, stop), start)
    if mode == "bidirectional":
        backward_rows = torch.nonzero(layer > 0).squeeze(1)
        lb, zb = layer[backward_rows], z[backward_rows]
        for start in range(0, M, chunk_size):
            stop = min(start + chunk_size, M)
            # out-current to (l-1, w) is minus the current arriving from it
            draw.consume(backward_rows, field.currents_from_prev(lb, zb, start, stop), M + start, negate=True)
        sink_rows = torch.nonzero(layer == L).squeeze(1)
        draw.consume(sink_rows, field.sink_currents(z[sink_rows]).unsqueeze(1), 2 * M)
    return draw.result()


def walk(
    field: Field,
    start: torch.Tensor,
    mode: str,
    generator: torch.Generator | None,
    chunk_size: int | None,
    max_moves: int,
    draw: DrawFn = draw_outlets,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run walkers from ``(0, start)`` to termination.

    Args:
        field: the current field.
        start: ``(B,)`` int64 flat start states, on ``field.device``.
        mode: ``"bidirectional"`` (Definition 3.1) or ``"forward"`` (forward-only inference).
        generator: torch generator on ``field.device``, or None for the default one.
        chunk_size: neighbour states per chunk (None: ``2**23 // B``, at most M).
        max_moves: raise ``RuntimeError`` if a walker has not terminated after this many moves.
        draw: the per-move outlet sampler (same signature as :func:`draw_outlets`); backends swap it.

    Returns:
        ``(B,)`` int64 terminal flat states and ``(B,)`` int64 numbers of edge moves.
    """
    M, L = field.circuit.num_states, field.circuit.num_layers
    B = start.shape[0]
    if chunk_size is None:
        chunk_size = default_chunk_size(B, M)
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
            break
        la, za = layer[active], z[active]
        outlet = draw(field, la, za, mode, generator, chunk_size)
        sink = outlet == 2 * M
        backward = (outlet >= M) & ~sink
        z[active] = torch.where(sink, za, outlet % M)
        layer[active] = la + torch.where(backward, -1, 1) * (~sink)
        moves[active] += (~sink).to(torch.int64)
        active = active[~sink]
    raise RuntimeError(
        f"{active.numel()} walkers did not terminate within max_moves={max_moves}; the field has "
        "a current cycle (possible for a learned current field) or max_moves is too small"
    )


def walk_with(choose_draw: Callable[[Field, str, torch.device], DrawFn]) -> SampleFn:
    """A sampler backend that runs :func:`walk` with the drawer that ``choose_draw`` picks.

    Args:
        choose_draw: ``(field, mode, device) -> drawer`` (a :data:`DrawFn`), called once per
            :func:`ecd2g_fast.sample` call, before the first move (it may build tables).

    Returns:
        The backend: ``(field, start, mode, generator, chunk_size, max_moves) -> (terminal,
        moves)``, the arguments and results of :func:`walk` (checked by :func:`ecd2g_fast.sample`).
    """

    def sample_backend(field, start, mode, generator, chunk_size, max_moves):
        draw = choose_draw(field, mode, start.device)
        return walk(field, start, mode, generator, chunk_size, max_moves, draw=draw)

    return sample_backend
