"""Sampling: the movement-rule walk (Definition 3.1) and its exact output distribution.

Public entry point :func:`sample`; backends are registered in :mod:`ecd2g_fast.backends` under
the op name ``"sample"``.
"""

from __future__ import annotations

import torch

from .. import backends
from .._validation import check_choice, check_enumerable, check_int, check_states
from ..fields import Field
from .exact import OutputDistribution, exact_output_distribution
from .reference import MODES, FieldError, walk

__all__ = ["sample", "exact_output_distribution", "OutputDistribution", "FieldError", "MODES"]


# the walk with its default drawer takes the arguments of every "sample" backend
backends.register("sample", "torch", walk)
from . import cpp as _cpp  # noqa: E402, F401  (registers "cpp")
from . import potential as _potential  # noqa: E402, F401  (registers "potential")

# "auto": the O(log M) potential sampler for potential fields, else the compiled walk, else torch
# (with one warning when the extension is missing: backends.select)
backends.set_auto_order("sample", "cpu", ("potential", "cpp", "torch"))
backends.set_auto_order("sample", "cuda", ("potential", "cpp", "torch"))


def sample(
    field: Field,
    x0: torch.Tensor,
    mode: str = "bidirectional",
    *,
    backend: str = "auto",
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    max_moves: int | None = None,
    return_moves: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Carry start states through the circuit with the movement rule.

    Each walker starts at ``(0, x0[i])`` and moves along an outgoing edge, or leaves through the
    sink at layer L, with probability proportional to the positive out-current (Definition 3.1).

    Args:
        field: a :class:`~ecd2g_fast.fields.Field` (``ExactField``, a trained model, ...).
        x0: ``(B, D)`` int64 start states in ``[0, K)``, on ``field.device``; for exact output
            they should be drawn from the field's source pmf.
        mode: ``"bidirectional"`` (default; exact: output ~ q) or ``"forward"`` (the paper's
            forward-only inference: moves to layer l+1 only, renormalised, stops at layer L;
            biased, docs/theory.md §4).
        backend: ``"torch"`` (plain-torch walk, ``reference.py``), ``"cpp"`` (the C++/CUDA
            extension: chunked one-pass draw, Philox RNG; on-the-fly currents for potential
            fields), ``"potential"`` (potential fields only: sorted tables and prefix sums,
            O(log M) per move, docs/theory.md §6) or ``"auto"``: ``"potential"`` for potential fields,
            else ``"cpp"``, else ``"torch"`` (warning once if the extension is not built).
        generator: ``torch.Generator`` on ``field.device`` for reproducible draws.
        chunk_size: neighbour states evaluated at once per walker (memory ``O(B x chunk)``);
            default ``min(M, 2**23 // B)``. Results for a seed depend on it.
        max_moves: raise ``RuntimeError`` if a walker is still moving after this many moves.
            Default: ``(L+1) M`` for potential fields (their walks provably end sooner, so it
            never triggers), ``100 L + 1000`` otherwise (learned current fields may have cycles).
        return_moves: also return the number of edge moves of each walker.

    Returns:
        ``(B, D)`` int64 terminal states (and ``(B,)`` int64 move counts if ``return_moves``).

    Raises:
        TypeError, ValueError: bad ``x0``, ``mode``, ``backend``, ``chunk_size``, ``max_moves``.
        FieldError: the field gives nan/inf or no positive outflow at a visited vertex.
        RuntimeError: a walker exceeded ``max_moves``.
    """
    if not isinstance(field, Field):
        raise TypeError(f"field must be an ecd2g_fast Field, got {type(field).__name__}")
    circuit = field.circuit
    check_enumerable("sample", circuit.num_states)
    check_choice("mode", mode, MODES)
    x0 = check_states("x0", x0, circuit.num_categories, circuit.dim)
    if x0.device != field.device:
        raise ValueError(f"x0 must be on the field's device {field.device}, got {x0.device}")
    if chunk_size is not None:
        check_int("chunk_size", chunk_size, 1)
    if max_moves is None:
        L, M = circuit.num_layers, circuit.num_states
        max_moves = (L + 1) * M if field.acyclic else 100 * L + 1000
    check_int("max_moves", max_moves, 1)
    impl = backends.select("sample", backend, x0.device, subject=field).impl
    terminal, moves = impl(field, circuit.flatten(x0), mode, generator, chunk_size, max_moves)
    states = circuit.unflatten(terminal)
    return (states, moves) if return_moves else states
