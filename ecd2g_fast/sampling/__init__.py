"""Sampling: the movement-rule walk (Definition 3.1) and its exact output distribution.

Public entry point :func:`sample`: check the inputs, select the per-move draw from the backend
table (:mod:`ecd2g_fast.backends`, op ``"sample"``), run the one walk loop
(:func:`.reference.walk`). The draws: ``"torch"`` (:mod:`.reference`), ``"cpp"`` (:mod:`.cpp`),
``"potential"`` and ``"potential-torch"`` (:mod:`.potential`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import torch

from .. import backends
from .._validation import check_choice, check_enumerable, check_generator, check_int, check_states
from ..fields import Field, FieldError, check_field, default_chunk_size
from .exact import OutputDistribution, exact_output_distribution
from .outflow import DeadEnds, check_no_dead_ends, find_dead_ends
from .reference import MODES, torch_draw, walk

__all__ = [
    "sample",
    "exact_output_distribution",
    "OutputDistribution",
    "FieldError",
    "MODES",
    "find_dead_ends",
    "check_no_dead_ends",
    "DeadEnds",
]

P = ParamSpec("P")
R = TypeVar("R")


backends.register("sample", "torch", torch_draw)
from . import cpp as _cpp  # noqa: E402, F401  (registers "cpp")
from . import potential as _potential  # noqa: E402, F401  (registers "potential", "potential-torch")

# "auto": the O(log M) potential draw for potential fields, else the compiled draw, else torch
# (with one warning when the extension is missing: backends.select)
backends.set_auto_order("sample", "cpu", ("potential", "cpp", "torch"))
backends.set_auto_order("sample", "cuda", ("potential", "cpp", "torch"))


def eager_under_compile(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` run eagerly when called from code that ``torch.compile`` traces.

    Dynamo must not trace a walk: its length depends on the draws, and each move's fresh Philox
    seeds would be specialised (a recompilation per move). Under tracing the call goes through
    ``torch.compiler.disable(fn)`` (a graph break; nothing is specialised, so new inputs of the
    same shape do not recompile); the wrapper is made at that point, so that ``import
    ecd2g_fast`` does not import ``torch._dynamo``.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if torch.compiler.is_compiling():
            return torch.compiler.disable(fn)(*args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper


@eager_under_compile
def sample(
    field: Field,
    x0: torch.Tensor,
    mode: str = "bidirectional",
    *,
    backend: str = "auto",
    generator: torch.Generator | int | None = None,
    chunk_size: int | None = None,
    max_moves: int | None = None,
    return_moves: bool = False,
    unfinished: str = "raise",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Carry start states through the circuit with the movement rule.

    Each walker starts at ``(0, x0[i])`` and moves along an outgoing edge, or leaves through the
    sink at layer L, with probability proportional to the positive out-current (Definition 3.1).
    Check, select, walk: the inputs are checked, the backend's per-move draw is taken from the
    backend table, and the one walk loop runs it. The field is called under
    ``torch.inference_mode()`` and every output it gives is checked (``Field``'s contract).

    Under ``torch.compile`` the call runs eagerly (:func:`eager_under_compile`): a graph break,
    no recompilation for new inputs of the same shape, nothing specialised per move. Not for
    ``fullgraph=True``.

    Args:
        field: a :class:`~ecd2g_fast.fields.Field` (``ExactField``, ``StateField``, a trained
            model's field, ...). A field with ``state_vectors`` (a Hamming-circuit
            :class:`~ecd2g_fast.hamming.LogField`) is walked on ``(B, D)`` state vectors, one
            ``outlet_currents`` call per move, for any ``M``; the others need ``M <= 2**24``.
        x0: ``(B, D)`` integer start states in ``[0, K)``, on ``field.device``: int64, or int8,
            int16, int32, uint8 (cast to int64 once). For exact output they should be drawn from
            the field's source pmf.
        mode: ``"bidirectional"`` (default; exact: output ~ q) or ``"forward"`` (the paper's
            forward-only inference: moves to layer l+1 only, renormalised, stops at layer L;
            biased, docs/theory.md §4).
        backend: the per-move draw: ``"torch"`` (plain torch, the reference), ``"cpp"`` (the
            C++/CUDA extension: chunked one-pass draw, Philox RNG; on-the-fly currents for
            potential fields), ``"potential"`` (potential fields only: sorted tables and prefix
            sums, O(log M) per move, docs/theory.md §6; compiled draw, plain torch without the
            extension), ``"potential-torch"`` (the same tables drawn in plain torch) or
            ``"auto"``: ``"potential"`` for potential fields, else ``"cpp"``, else ``"torch"``
            (warning once if the extension is not built). ``ECD2G_BACKEND_SAMPLE`` replaces
            ``"auto"``.
        generator: a ``torch.Generator`` on ``field.device``, or an int seed (a new generator
            on ``field.device`` seeded with it), for reproducible draws; None: torch's default.
        chunk_size: neighbour states per field call (memory ``O(B x chunk)``); default
            ``memory_budget() // (B * field.bytes_per_pair)`` within ``[1, M]``, the budget
            ``ECD2G_SAMPLE_MEMORY_BYTES`` or ``field_calls.SAMPLE_MEMORY_BYTES`` (512 MiB). Results for
            a seed depend on it (where the draw evaluates the field in chunks).
        max_moves: raise ``RuntimeError`` if a walker is still moving after this many moves.
            Default: ``(L+1) M`` for acyclic (potential) fields (their walks provably end sooner,
            so it never triggers), ``100 L + 1000`` otherwise (learned current fields may have
            cycles).
        return_moves: also return the number of edge moves of each walker.
        unfinished: what happens to walkers still moving after ``max_moves``: ``"raise"``
            (default: ``RuntimeError``) or ``"keep"`` (they are returned where they are, with move
            count -1: for measuring a learned field whose walk may cycle).

    Returns:
        ``(B, D)`` int64 terminal states (and ``(B,)`` int64 move counts if ``return_moves``).

    Raises:
        TypeError, ValueError: bad ``field``, ``x0``, ``mode``, ``backend``, ``generator``,
            ``chunk_size``, ``max_moves``.
        FieldError: the field breaks its contract: no circuit, an output of the wrong shape,
            dtype or device (naming the method and the expected shape), nan/inf currents or no
            positive outflow at a visited vertex (naming the vertex).
        RuntimeError: a walker exceeded ``max_moves`` (with ``unfinished="raise"``).
    """
    circuit = check_field(field)
    vectors = bool(getattr(field, "state_vectors", False))
    if not vectors:
        check_enumerable("sample", circuit.num_states)
    check_choice("mode", mode, MODES)
    x0 = check_states("x0", x0, circuit.num_categories, circuit.dim)
    if x0.device != field.device:
        raise ValueError(f"x0 must be on the field's device {field.device}, got {x0.device}")
    generator = check_generator("generator", generator, field.device)
    if chunk_size is None:
        chunk_size = default_chunk_size(field, x0.shape[0])
    check_int("chunk_size", chunk_size, 1)
    if max_moves is None:
        L, M = circuit.num_layers, circuit.num_states
        max_moves = min((L + 1) * M, 2**62) if field.acyclic else 100 * L + 1000
    check_int("max_moves", max_moves, 1)
    check_choice("unfinished", unfinished, ("raise", "keep"))
    draw = backends.select("sample", backend, x0.device, subject=field).impl(field, mode)
    start = x0.clone() if vectors else circuit.flatten(x0)
    terminal, moves = walk(
        field, start, mode, draw, generator, chunk_size, max_moves, keep_unfinished=unfinished == "keep"
    )
    states = terminal if vectors else circuit.unflatten(terminal)
    return (states, moves) if return_moves else states
