"""The exact output distribution of the walk, by propagating probability mass (no sampling).

Transient states are the ``(L+1) M`` vertices; the walk moves mass along the normalised positive
out-currents, and the sink at layer L absorbs it. Mass is propagated move by move, all layers at
once, until less than ``tol`` remains in the circuit; for a potential field this is exact after at
most ``(L+1) M`` moves and in practice reaches ``tol = 1e-15`` after a few dozen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._validation import MAX_DENSE_CURRENT_ENTRIES, check_choice, check_enumerable, check_int, check_pmf
from ..fields import (
    Field,
    FieldError,
    call_field,
    check_field,
    column_blocks,
    default_chunk_size,
    field_currents,
)
from .reference import MODES, describe_vertex

#: Mass that may reach vertices without positive outflow before the field is blamed. Currents that
#: vanish in exact arithmetic (``p = q`` with zeros) come out as +-1e-17 rounding noise and lead
#: a mass of order 1e-14 into such vertices; a broken field strands far more.
STRANDED_MASS_LIMIT = 1e-12


@dataclass(frozen=True)
class OutputDistribution:
    """Result of :func:`exact_output_distribution`.

    Attributes:
        pmf: ``(M,)`` float64, the law of the terminal state.
        expected_moves: mean number of edge moves per walker (the sink exit is not a move).
        residual_mass: mass still inside the circuit when propagation stopped (``<= tol``).
        stranded_mass: mass dropped at vertices without positive outflow, at most
            :data:`STRANDED_MASS_LIMIT` in all (rounding noise of currents that vanish exactly;
            more raises ``FieldError``).
    """

    pmf: torch.Tensor
    expected_moves: float
    residual_mass: float
    stranded_mass: float = 0.0


def transition_tables(
    field: Field, mode: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positive out-current tables of every vertex.

    The field is asked for all ``M`` states of a layer at once, in blocks of neighbour states
    within the memory budget (:func:`~ecd2g_fast.fields.default_chunk_size`) and never square
    (:func:`~ecd2g_fast.fields.column_blocks`), each output checked
    (:func:`~ecd2g_fast.fields.call_field`).

    Returns:
        forward ``(L, M, N)`` (``[l, z, k]``: weight of ``(l, z) -> (l+1, w_k)``, ``w_k`` the state
        in slot ``k`` of ``z``, ``N`` the circuit's ``num_neighbours``: on the complete circuit
        ``N = M`` and ``w_k = k``), backward ``(L, M, N)`` (``[l-1, z, k]``: weight of
        ``(l, z) -> (l-1, w_k)``), sink ``(M,)``, and the
        total outflow ``(L+1, M)``; all float64, unnormalised. In forward mode the backward and
        sink tables are zero and the layer-L totals are 1 (walkers stop there).

    Raises:
        FieldError: an output of the wrong shape, dtype or device, or non-finite currents.
    """
    c = field.circuit
    M, N, L = c.num_states, c.num_neighbours, c.num_layers
    dev = field.device
    states = torch.arange(M, device=dev)
    forward = torch.empty((L, M, N), dtype=torch.float64, device=dev)
    backward = torch.zeros((L, M, N), dtype=torch.float64, device=dev)
    sink = torch.zeros(M, dtype=torch.float64, device=dev)
    blocks = list(column_blocks(0, N, default_chunk_size(field, M), M))
    for l in range(L):
        layer = torch.full((M,), l, device=dev)
        for start, stop in blocks:
            forward[l, :, start:stop] = field_currents(field, "currents_to_next", layer, states, start, stop)
            if mode == "bidirectional":
                arriving = field_currents(field, "currents_from_prev", layer + 1, states, start, stop)
                backward[l, :, start:stop] = -arriving.to(torch.float64)
    if mode == "bidirectional":
        sink = call_field(field, "sink_currents", (states,), (M,)).to(torch.float64)
    for name, table in (("forward", forward), ("backward", backward), ("sink", sink)):
        if not bool(torch.isfinite(table).all()):
            raise FieldError(f"field returned non-finite {name} currents")
    forward.clamp_min_(0.0)
    backward.clamp_min_(0.0)
    sink = sink.clamp_min(0.0)
    total = torch.zeros((L + 1, M), dtype=torch.float64, device=dev)
    total[:-1] += forward.sum(2)
    total[1:] += backward.sum(2)
    total[-1] += sink if mode == "bidirectional" else 1.0
    return forward, backward, sink, total


def exact_output_distribution(
    field: Field,
    p0: torch.Tensor,
    mode: str = "bidirectional",
    *,
    tol: float = 1e-15,
    max_moves: int | None = None,
) -> OutputDistribution:
    """Law of the walk's terminal state when it starts at ``(0, x)``, ``x ~ p0``.

    The field is called under ``torch.inference_mode()``, never with a square block, and every
    output is checked (:func:`transition_tables`).

    Args:
        field: any field over a circuit with ``M <= 2**24`` and ``2 L M N <= 2**28`` (``N`` its
            ``num_neighbours``: ``M`` for the complete circuit, ``1 + D (K-1)`` for a Hamming one).
        p0: ``(M,)`` start pmf (float, non-negative, sums to 1).
        mode: ``"bidirectional"`` or ``"forward"``.
        tol: stop once the mass left inside the circuit is below this.
        max_moves: give up (``RuntimeError``) after this many moves; default ``100 (L+1) + 10**4``.

    Returns:
        :class:`OutputDistribution`.

    Raises:
        TypeError: ``field`` is not a Field; ``tol`` or ``max_moves`` of the wrong type.
        ValueError: bad ``p0`` or ``mode``; ``tol`` negative or not finite; ``max_moves < 1``;
            circuit too large.
        FieldError: the field breaks its contract (see :func:`~ecd2g_fast.fields.check_field`,
            :func:`transition_tables`), or mass reaches a vertex without positive outflow.
        RuntimeError: mass still circulating after ``max_moves`` (a current cycle).
    """
    c = check_field(field)
    check_choice("mode", mode, MODES)
    M, L = c.num_states, c.num_layers
    check_enumerable("exact_output_distribution", M)
    if 2 * L * M * c.num_neighbours > MAX_DENSE_CURRENT_ENTRIES:
        raise ValueError(
            f"exact_output_distribution holds 2*L*M*N = {2 * L * M * c.num_neighbours} float64 values and supports "
            f"at most {MAX_DENSE_CURRENT_ENTRIES} (2**28)"
        )
    p0 = check_pmf("p0", p0, M).to(field.device)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)):
        raise TypeError(f"tol must be a real number, got {type(tol).__name__}")
    if not (math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be finite and >= 0, got {tol}")
    max_moves = 100 * (L + 1) + 10**4 if max_moves is None else check_int("max_moves", max_moves, 1)
    forward, backward, sink, total = transition_tables(field, mode)
    safe_total = torch.where(total > 0, total, torch.ones_like(total))
    forward /= safe_total[:-1, :, None]
    backward /= safe_total[1:, :, None]
    sink_prob = sink / safe_total[-1] if mode == "bidirectional" else torch.ones_like(sink)
    stuck = total <= 0

    mass = torch.zeros((L + 1, M), dtype=torch.float64, device=field.device)
    mass[0] = p0
    out = torch.zeros(M, dtype=torch.float64, device=field.device)
    expected_moves = 0.0
    stranded_total = 0.0
    for _ in range(max_moves):
        stranded = stuck & (mass > 0)
        if bool(stranded.any()):
            stranded_mass = float(mass[stranded].sum())
            if stranded_total + stranded_mass > STRANDED_MASS_LIMIT:
                l, z = (int(v) for v in torch.nonzero(stranded)[0])
                raise FieldError(
                    f"probability mass {stranded_mass:.3g} reaches {describe_vertex(field, l, z)}, "
                    "which has no positive outflow"
                )
            # currents that vanish exactly can come out as +-1e-17 rounding noise (p = q with zeros)
            # and carry a tiny mass into a dead end: it is dropped and reported
            stranded_total += stranded_mass
            mass = torch.where(stranded, torch.zeros_like(mass), mass)
        absorbed = mass[-1] * sink_prob
        out += absorbed
        expected_moves += float(mass.sum() - absorbed.sum())
        new = torch.zeros_like(mass)
        # transition probabilities already include the sink share in their normalisation
        new[1:] += c.push(mass[:-1], forward)
        new[:-1] += c.push(mass[1:], backward)
        mass = new
        residual = float(mass.sum())
        if residual <= tol:
            return OutputDistribution(out, expected_moves, residual, stranded_total)
    raise RuntimeError(
        f"mass {residual:.3g} still inside the circuit after {max_moves} moves (a current cycle?)"
    )
