"""How the samplers call a field: the memory budget, column blocks, and checked calls.

Every consumer of a :class:`~ecd2g_fast.fields.Field` calls it through :func:`call_field`: under
``torch.inference_mode()``, with its output checked (shape, floating dtype, device) on every call,
and a broken contract raised as :class:`FieldError`. How many neighbour states a call covers
follows a memory budget (:data:`SAMPLE_MEMORY_BYTES`, :func:`memory_budget`,
:func:`default_chunk_size`). :class:`SinkCache` keeps a learned field's sink currents.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch

from ._validation import check_enumerable

if TYPE_CHECKING:
    from .fields import Field

#: Default memory budget, in bytes, of one field evaluation over ``B`` walkers x ``chunk``
#: neighbour states, with what the sampler holds per pair besides: the default ``chunk_size`` of
#: :func:`ecd2g_fast.sample` (and the column blocks of ``exact_output_distribution``) is
#: ``budget // (B * field.bytes_per_pair)``. 512 MiB: ``2**23`` pairs of an analytic field
#: (64 bytes a pair), ``2**19`` of a field of unknown cost (1024 bytes a pair).
SAMPLE_MEMORY_BYTES = 2**29
#: Environment variable that replaces :data:`SAMPLE_MEMORY_BYTES` (a positive int of bytes).
MEMORY_ENV = "ECD2G_SAMPLE_MEMORY_BYTES"


class FieldError(ValueError):
    """A field broke its contract: an output of the wrong shape, dtype or device, a nan/inf
    current, or no positive outflow at a vertex that a walker (or probability mass) reached."""


def memory_budget() -> int:
    """The memory budget in bytes: ``$ECD2G_SAMPLE_MEMORY_BYTES`` if set, else :data:`SAMPLE_MEMORY_BYTES`.

    Raises:
        ValueError: the environment variable is not a positive int.
    """
    value = os.environ.get(MEMORY_ENV)
    if value is None:
        return SAMPLE_MEMORY_BYTES
    try:
        budget = int(value.replace("_", ""))
    except ValueError:
        budget = 0
    if budget < 1:
        raise ValueError(f"{MEMORY_ENV} must be a positive int (bytes), got {value!r}")
    return budget


def default_chunk_size(field: Field, num_walkers: int) -> int:
    """Neighbour slots per field call for ``num_walkers`` walkers within :func:`memory_budget`.

    Returns:
        ``budget // (num_walkers * field.bytes_per_pair)``, clipped to ``[1, N]`` (``N`` the
        circuit's ``num_neighbours``: ``M`` on the complete circuit).
    """
    pairs = memory_budget() // (max(num_walkers, 1) * field.bytes_per_pair)
    return max(1, min(field.circuit.num_neighbours, pairs))


def column_blocks(start: int, stop: int, chunk: int, rows: int) -> Iterator[tuple[int, int]]:
    """``[start, stop)`` in blocks of at most ``chunk`` columns, none of width ``rows`` unless 1.

    A field's ``(B, S)`` output transposed to ``(S, B)`` has the right shape when ``B == S``, so
    the consumers never ask for a square block: one of width ``rows >= 2`` is split into
    ``rows - 1`` columns and 1, and every transposed output then fails the shape check.

    Yields:
        ``(block_start, block_stop)`` Python ints covering ``[start, stop)`` in order.
    """
    chunk = max(chunk, 1)
    for block_start in range(start, stop, chunk):
        block_stop = min(block_start + chunk, stop)
        if block_stop - block_start == rows >= 2:
            yield block_start, block_stop - 1
            block_start = block_stop - 1
        yield block_start, block_stop


@contextlib.contextmanager
def cache_mode() -> Iterator[None]:
    """For building a cache that outlives a field call: ordinary tensors, no autograd graph.

    Fields are called under ``torch.inference_mode()``; a tensor made there is an inference
    tensor, which cannot be updated in place or saved for backward outside inference mode later.
    """
    with torch.inference_mode(False), torch.no_grad():
        yield


def parameter_version(module: torch.nn.Module) -> tuple:
    """A key that changes whenever a parameter or buffer of ``module`` is replaced or changed in place.

    Optimiser steps and ``load_state_dict`` modify tensors in place, which bumps their autograd
    version counter; moving the module replaces the tensors. Field adapters key their caches on it.
    """
    return tuple((t.data_ptr(), t._version, t.device) for t in (*module.parameters(), *module.buffers()))


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def check_output(
    field: Field, what: str, out: object, shape: tuple[int, ...], shape_name: str
) -> torch.Tensor:
    """Check one output of a field: a floating tensor of ``shape`` on ``field.device``.

    Args:
        field: the field (named in messages).
        what: the call, for messages (``"currents_to_next"``, ``"fn(layer=2)"``).
        out: what the call returned.
        shape: the expected shape.
        shape_name: the expected shape in symbols (``"(B, stop - start)"``).

    Returns:
        ``out``, unchanged. Finiteness is checked where the values are consumed (naming the
        walker's vertex).

    Raises:
        FieldError: naming ``what`` and the expected against the actual type, shape, dtype or device.
    """
    call = f"{type(field).__name__}.{what}"
    if not isinstance(out, torch.Tensor):
        raise FieldError(
            f"{call} must return a torch.Tensor of shape {shape_name} = {shape}, got {type(out).__name__}"
        )
    if tuple(out.shape) != shape:
        raise FieldError(f"{call} returned shape {tuple(out.shape)}, expected {shape_name} = {shape}")
    if not out.is_floating_point():
        raise FieldError(f"{call} must return a floating-point tensor, got {out.dtype}")
    if not _same_device(out.device, field.device):
        raise FieldError(
            f"{call} must return a tensor on the field's device {field.device}, got {out.device}"
        )
    return out


#: Expected output shape of each field method, in symbols (for :func:`call_field`'s messages).
SHAPE_NAMES = {
    "currents_to_next": "(B, stop - start)",
    "currents_from_prev": "(B, stop - start)",
    "sink_currents": "(B,)",
    "potential_table": "(L+1, M)",
    "sink_table": "(M,)",
    "outlet_currents": "(B, 2N + 1)",
}


def call_field(field: Field, method: str, args: tuple, shape: tuple[int, ...]) -> torch.Tensor:
    """``field.<method>(*args)`` under ``torch.inference_mode()``, its output checked.

    Args:
        field: the field.
        method: a key of :data:`SHAPE_NAMES`.
        args: the method's arguments.
        shape: the shape the output must have.

    Raises:
        FieldError: see :func:`check_output`.
    """
    with torch.inference_mode():
        out = getattr(field, method)(*args)
    return check_output(field, method, out, shape, SHAPE_NAMES[method])


def field_currents(
    field: Field, method: str, layer: torch.Tensor, z: torch.Tensor, start: int, stop: int
) -> torch.Tensor:
    """Checked ``currents_to_next`` or ``currents_from_prev``: ``(B, stop - start)`` (:func:`call_field`)."""
    return call_field(field, method, (layer, z, start, stop), (z.shape[0], stop - start))


class SinkCache:
    """Per-state cache of a learned field's sink currents, filled on demand.

    A learned field's sink current at ``(L, z)`` is its own net inflow, ``max(sum_w I_{L-1}(w,
    z), 0)`` (Kirchhoff, docs/theory.md §4): ``M`` evaluations per state, so each state is computed
    once and kept (``M`` float64 values, built under :func:`cache_mode`) until :meth:`clear` or
    until the key given to :meth:`lookup` changes (for a network: :func:`parameter_version`).
    """

    def __init__(self) -> None:
        self._values: torch.Tensor | None = None
        self._key: object = None

    def clear(self) -> None:
        """Drop every cached value."""
        self._values = None

    def lookup(
        self, field: Field, z: torch.Tensor, key: object, inflow: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """``(B,)`` float64 sink currents of the ``(B,)`` int64 flat states ``z``.

        Args:
            field: the field (its circuit; named in messages).
            z: the states, on the device the values are cached on.
            key: the cache is dropped when this differs from the last call's.
            inflow: ``(n,)`` int64 distinct states -> ``(n,)`` float64 net inflow
                ``sum_w I_{L-1}(w, z)`` (not clipped); called for the states not cached yet.

        Raises:
            ValueError: ``M > 2**24``.
        """
        M = field.circuit.num_states
        if self._values is None or self._key != key or self._values.device != z.device:
            check_enumerable(f"{type(field).__name__}.sink_currents", M)
            with cache_mode():
                self._values = torch.full((M,), math.nan, dtype=torch.float64, device=z.device)
            self._key = key
        missing = torch.unique(z[torch.isnan(self._values[z])])
        if missing.numel():
            self._values[missing] = inflow(missing).to(torch.float64).clamp_min(0.0)
        return self._values[z]
