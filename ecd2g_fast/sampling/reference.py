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

import torch

from ..fields import Field

MODES = ("bidirectional", "forward")
#: Default bound on ``B x chunk`` float64 values held at once by a move.
DEFAULT_CHUNK_ELEMENTS = 2**23


class FieldError(ValueError):
    """A field gave nan/inf currents, or no positive outflow at a vertex a walker reached."""


def default_chunk_size(num_walkers: int, num_states: int) -> int:
    return max(1, min(num_states, DEFAULT_CHUNK_ELEMENTS // max(num_walkers, 1)))


def describe_vertex(field: Field, layer: int, index: int) -> str:
    """``layer l, state (z_1, ..., z_D)`` for error messages."""
    state = field.circuit._unflatten(torch.tensor([index]))[0].tolist()
    return f"layer {layer}, state {tuple(state)} (index {index})"


class OutletDraw:
    """Running state of one move's streaming draw for ``n`` walkers."""

    def __init__(self, field: Field, layer: torch.Tensor, z: torch.Tensor, generator: torch.Generator | None):
        self.field, self.layer, self.z, self.generator = field, layer, z, generator
        n = layer.shape[0]
        self.total = torch.zeros(n, dtype=torch.float64, device=layer.device)
        self.choice = torch.full((n,), -1, dtype=torch.int64, device=layer.device)

    def consume(self, rows: torch.Tensor, weights: torch.Tensor, offset: int) -> None:
        """Offer outlets ``offset + j`` with weights ``max(weights[:, j], 0)`` to walkers ``rows``."""
        if rows.numel() == 0:
            return
        weights = weights.to(torch.float64)
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
        stuck = self.total <= 0
        if bool(stuck.any()):
            bad = int(torch.nonzero(stuck)[0])
            raise FieldError(
                f"no positive outflow at {describe_vertex(self.field, int(self.layer[bad]), int(self.z[bad]))}"
            )
        return self.choice


def draw_outlets(
    field: Field,
    layer: torch.Tensor,
    z: torch.Tensor,
    mode: str,
    generator: torch.Generator | None,
    chunk_size: int,
) -> torch.Tensor:
    """One move's outlet for each walker at ``(layer, z)``; see the module docstring for codes."""
    circuit = field.circuit
    M, L = circuit.num_states, circuit.num_layers
    draw = OutletDraw(field, layer, z, generator)
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
            draw.consume(backward_rows, -field.currents_from_prev(lb, zb, start, stop), M + start)
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
    draw=draw_outlets,
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
