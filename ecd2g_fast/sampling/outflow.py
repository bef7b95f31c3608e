"""Dead ends of a field, found before sampling: reachable vertices with no positive outflow.

A walker at ``(l, z)`` moves along an edge, or leaves through the sink at layer L, with
probability proportional to the positive out-currents (Definition 3.1). A field whose currents
come from a potential by Ohm's law (:class:`~ecd2g_fast.fields.PotentialField`, the potential
network's field) leads every walk to the sink. A learned *current* field
(:class:`~ecd2g_fast.models.CurrentNet`'s, or any non-acyclic field) has no such guarantee: a vertex
may have no positive out-current at all, and a walker that reaches it cannot move;
:func:`ecd2g_fast.sample` then raises :class:`~ecd2g_fast.fields.FieldError` midway through a walk.

:func:`find_dead_ends` finds every such vertex that a walker can reach, before any walk:

1. start from the layer-0 vertices ``(0, z)`` of the start states (``start``; default every
   state);
2. breadth-first, evaluate the positive out-currents of each newly reached vertex with the
   sampler's own outlet enumeration (:func:`~ecd2g_fast.sampling.reference.draw_outlets`: the
   same field calls, blocks and checks as one move of the walk, so "positive" means exactly what
   it means to the sampler), add up its outflow, and mark the head of every edge with a positive
   out-current as reached;
3. report the reached vertices whose outflow is 0.

A vertex is reachable exactly when some walk from a start state visits it with positive
probability, so the walk of :func:`ecd2g_fast.sample` from those start states raises for a dead
end only if this function lists one. Each reachable vertex is evaluated once: the cost is that of
one move of one walker per reachable vertex, at most ``(L+1) M`` vertices times ``2 N`` neighbour
slots (``N = M`` on the complete circuit), about the cost of walking ``M`` walkers; memory is two
``(L+1, M)`` tables and the blocks of the memory budget
(:func:`~ecd2g_fast.fields.memory_budget`).

In forward mode (the paper's forward-only walk) walkers stop on reaching layer L: those vertices
are never dead ends, and only forward edges count.

:func:`check_no_dead_ends` raises :class:`~ecd2g_fast.fields.FieldError` listing them; the
experiment runner calls it before sampling a learned current field
(:func:`ecd2g_fast.experiments.runner.sample_stage`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .._validation import check_choice, check_enumerable, check_int, check_tensor
from ..fields import Field, FieldError, check_field, default_chunk_size, memory_budget
from .reference import MODES, checked_out_currents, draw_outlets

__all__ = ["DeadEnds", "check_no_dead_ends", "find_dead_ends"]


@dataclass(frozen=True)
class DeadEnds:
    """Result of :func:`find_dead_ends`: the reachable vertices with no positive outflow.

    ``len(dead_ends)`` is their number; a ``DeadEnds`` is false when there are none.

    Attributes:
        layers: ``(n,)`` int64 layers of the dead ends, in ``[0, L]``, sorted by (layer, index).
        index: ``(n,)`` int64 flat states (``Circuit.state_index``) of the dead ends.
        states: ``(n, D)`` int64 states of the dead ends.
        reachable: ``(L+1, M)`` bool: vertices some walk from a start state visits with positive
            probability (the start vertices included).
        outflow: ``(L+1, M)`` float64: total positive out-current of each evaluated vertex
            (forward + backward + sink, unnormalised, in units of the total current); NaN for
            vertices not evaluated (unreachable ones unless ``all_vertices``, and layer L in
            forward mode, where walkers stop).
        mode: the walk mode, ``"bidirectional"`` or ``"forward"``.
    """

    layers: torch.Tensor
    index: torch.Tensor
    states: torch.Tensor
    reachable: torch.Tensor
    outflow: torch.Tensor
    mode: str

    def __len__(self) -> int:
        return int(self.layers.shape[0])

    @property
    def num_reachable(self) -> int:
        """Number of reachable vertices."""
        return int(self.reachable.sum())

    def describe(self, limit: int = 5) -> str:
        """One line: the count and the first ``limit`` dead ends, e.g. ``layer 0, state (3, 4) (index 100)``."""
        limit = check_int("limit", limit, 1)
        n = len(self)
        if n == 0:
            return f"no dead end among {self.num_reachable} reachable vertices ({self.mode} walk)"
        shown = [
            f"layer {int(layer)}, state {tuple(state.tolist())} (index {int(index)})"
            for layer, state, index in zip(self.layers[:limit], self.states[:limit], self.index[:limit])
        ]
        more = f"; and {n - limit} more" if n > limit else ""
        noun = "vertex" if n == 1 else "vertices"
        return (
            f"{n} reachable {noun} with no positive outflow, out of {self.num_reachable} reachable "
            f"({self.mode} walk): {'; '.join(shown)}{more}"
        )


class _OutflowRecorder:
    """A reservoir for :func:`draw_outlets` that draws nothing: it adds up each vertex's positive
    out-current and marks the heads of its positive edges in ``reached`` (``(L+1, M)`` bool)."""

    def __init__(
        self,
        field: Field,
        layer: torch.Tensor,
        z: torch.Tensor,
        generator: torch.Generator | None,
        *,
        reached: torch.Tensor,
    ) -> None:
        self.field, self.layer, self.z, self.reached = field, layer, z, reached
        self.total = torch.zeros(layer.shape[0], dtype=torch.float64, device=layer.device)

    def consume(self, rows: torch.Tensor, weights: torch.Tensor, offset: int, negate: bool = False) -> None:
        """Outlets ``offset + j`` (slot codes of :mod:`.reference`) with out-currents ``+-weights[:, j]``."""
        if rows.numel() == 0:
            return
        weights = checked_out_currents(self.field, self.layer, self.z, rows, weights, negate)
        positive = weights > 0
        self.total[rows] += weights.clamp_min(0.0).sum(dim=1)
        N = self.field.circuit.num_neighbours
        if offset >= 2 * N:  # the sink: leaves the circuit
            return
        step, first_slot = (1, offset) if offset < N else (-1, offset - N)
        r, j = torch.nonzero(positive, as_tuple=True)
        if r.numel() == 0:
            return
        tails = rows[r]
        heads = self.field.circuit.neighbour_at(self.z[tails], first_slot + j)
        self.reached[self.layer[tails] + step, heads] = True

    def result(self) -> torch.Tensor:
        return self.total


def _start_mask(start: object, num_states: int, device: torch.device) -> torch.Tensor:
    """``(M,)`` bool start mask from ``start`` (None, a bool mask, or non-negative weights)."""
    if start is None:
        return torch.ones(num_states, dtype=torch.bool, device=device)
    start = check_tensor("start", start)
    if start.dim() != 1 or start.shape[0] != num_states:
        raise ValueError(f"start must have shape ({num_states},) (M = K**D), got {tuple(start.shape)}")
    if start.dtype == torch.bool:
        return start.to(device)
    if not start.is_floating_point():
        raise TypeError(f"start must be a bool mask or floating-point weights, got {start.dtype}")
    if not bool(torch.isfinite(start).all()) or bool((start < 0).any()):
        raise ValueError("start weights must be finite and non-negative")
    return (start > 0).to(device)


def _expand(
    field: Field, mode: str, vertices: torch.Tensor, reached: torch.Tensor, outflow: torch.Tensor
) -> None:
    """Evaluate the out-currents of ``vertices`` (``(n, 2)`` int64 ``(layer, z)``) into ``outflow``,
    marking the heads of their positive edges in ``reached``; rows in blocks of the memory budget."""
    N = field.circuit.num_neighbours
    rows_per_call = max(1, memory_budget() // (field.bytes_per_pair * N))
    recorder = functools.partial(_OutflowRecorder, reached=reached)
    for lo in range(0, vertices.shape[0], rows_per_call):
        layer, z = vertices[lo : lo + rows_per_call].unbind(1)
        chunk = default_chunk_size(field, layer.shape[0])
        total = draw_outlets(field, mode, layer, z, None, chunk, reservoir=recorder)  # type: ignore[arg-type]
        outflow[layer, z] = total


def find_dead_ends(
    field: Field,
    mode: str = "bidirectional",
    start: torch.Tensor | None = None,
    *,
    all_vertices: bool = False,
) -> DeadEnds:
    """The vertices a walk can reach and cannot leave (module docstring).

    The field is called under ``torch.inference_mode()``, never with a square block, and every
    output is checked, exactly as by one move of :func:`ecd2g_fast.sample`'s ``"torch"`` draw.

    Args:
        field: any :class:`~ecd2g_fast.fields.Field` over a circuit with ``M <= 2**24``.
        mode: ``"bidirectional"`` (default) or ``"forward"``: the walk to check.
        start: the start states of the walk, as ``(M,)`` bool (True: a walker may start at
            ``(0, z)``) or ``(M,)`` non-negative float weights (a start pmf: its support); None
            (default): every state.
        all_vertices: also evaluate the unreachable vertices, so that ``outflow`` covers all
            ``(L+1) M`` (in forward mode, all but layer L); dead ends among them are visible as
            ``(outflow <= 0) & ~reachable`` but not listed. Costs up to the full ``(L+1) M``
            vertex evaluations.

    Returns:
        :class:`DeadEnds` (empty when every reachable vertex has an outlet).

    Raises:
        TypeError: ``field`` is not a Field; ``start`` not a tensor, or of an integer dtype.
        ValueError: bad ``mode``; ``start`` of the wrong shape or with negative or non-finite
            weights; ``M > 2**24``.
        FieldError: the field breaks its contract (an output of the wrong shape, dtype or device,
            or a non-finite current at a reachable vertex, naming it).
    """
    circuit = check_field(field)
    check_choice("mode", mode, MODES)
    if not isinstance(all_vertices, bool):
        raise TypeError(f"all_vertices must be a bool, got {type(all_vertices).__name__}")
    M, L = circuit.num_states, circuit.num_layers
    check_enumerable("find_dead_ends", M)
    device = field.device
    reached = torch.zeros((L + 1, M), dtype=torch.bool, device=device)
    reached[0] = _start_mask(start, M, device)
    evaluated = torch.zeros_like(reached)
    if mode == "forward":
        evaluated[L] = True  # walkers stop at layer L: nothing to evaluate there
    outflow = torch.full((L + 1, M), float("nan"), dtype=torch.float64, device=device)
    while True:  # breadth first: each round evaluates the vertices the previous one reached
        frontier = torch.nonzero(reached & ~evaluated)
        if frontier.shape[0] == 0:
            break
        evaluated[frontier[:, 0], frontier[:, 1]] = True
        _expand(field, mode, frontier, reached, outflow)
    reachable = reached.clone()
    if all_vertices:
        _expand(field, mode, torch.nonzero(~evaluated), reached, outflow)
    dead = reachable & (outflow <= 0)  # NaN (never evaluated) compares False
    layers, index = torch.nonzero(dead).unbind(1)
    return DeadEnds(
        layers=layers.cpu(),
        index=index.cpu(),
        states=circuit.unflatten(index.cpu()).reshape(-1, circuit.dim),
        reachable=reachable,
        outflow=outflow,
        mode=mode,
    )


def check_no_dead_ends(
    field: Field,
    mode: str = "bidirectional",
    start: torch.Tensor | None = None,
    *,
    limit: int = 5,
) -> DeadEnds:
    """:func:`find_dead_ends`, raising when there is any.

    Args:
        field, mode, start: as :func:`find_dead_ends`.
        limit: how many dead ends the message lists (the count is always given).

    Returns:
        The (empty) :class:`DeadEnds`, with the reachable set and the outflow table.

    Raises:
        FieldError: a reachable vertex has no positive outflow: the message gives their number
            and the first ``limit`` (layer, state, flat index); and everything
            :func:`find_dead_ends` raises.
    """
    limit = check_int("limit", limit, 1)
    found = find_dead_ends(field, mode, start)
    if len(found):
        raise FieldError(
            f"{type(field).__name__} would strand walkers: {found.describe(limit)}. A walker that reaches "
            "such a vertex cannot move; train longer, or use a potential network (its walks always end)"
        )
    return found
