"""The compiled extension ``ecd2g_fast._C``: loaded lazily, probed once, in this module only.

``import ecd2g_fast`` never loads the extension. The first call of :func:`available` (or
:func:`ops`) imports ``ecd2g_fast._C``, which registers the ``torch.ops.ecd2g_fast`` operators
(schemas in ``csrc/sampler.cpp``, CPU kernels in ``csrc/cpu``, CUDA kernels in ``csrc/cuda``), and
then registers their fake (meta) implementations so the ops trace under ``torch.compile``. The
outcome is recorded; a failure is never retried and never raises here.

Operators (all without autograd; inputs are never modified):

* ``consume_outlets(weights, rows, total, choice, status, outlet_offset, negate, seed, offset)``
  ``-> (total, choice, status)``: one chunk of the streaming outlet draw of a move for a generic
  field (see :mod:`ecd2g_fast.sampling.cpp`).
* ``potential_move(phi, sink, layer, z, G, e, bidirectional, seed, offset) -> (outlet, status)``:
  one move of a potential field, currents computed on the fly from the potential table.
* ``potential_move_sorted(phi, order, reference, prefix, count, masses, layer, z, seed, offset)``
  ``-> (outlet, status)``: one move of a potential field in O(log M) per walker from the tables of
  :class:`ecd2g_fast.sampling.potential.PotentialTables`.
* ``hamming_move(phi, sink, layer, z, num_categories, dim, g, G, bidirectional, seed, offset)``
  ``-> (outlet, status)``: one move of a potential field on a Hamming circuit, over the
  ``1 + D (K-1)`` local edges of each walker, currents on the fly (slot outlet codes).
* ``philox4x32(counters, seed) -> out``: the raw Philox4x32-10 generator (known-answer tests).

One more op, ``hashed_counts``, is a Python custom op of the target pass registered by
``import ecd2g_fast`` (:mod:`ecd2g_fast.targets.packed`); it needs no extension.
"""

from __future__ import annotations

import importlib

import torch

#: Status bit flags returned by the ops (csrc/sampler_kernels.h).
STATUS_NON_FINITE = 1
STATUS_NO_OUTFLOW = 2
STATUS_BAD_INDEX = 4

_OPS = ("consume_outlets", "potential_move", "potential_move_sorted", "hamming_move", "philox4x32")
_state: dict[str, object] = {}


def _probe() -> None:
    if _state:
        return
    try:
        importlib.import_module("ecd2g_fast._C")
    except ImportError as error:  # not built, or built against another torch
        _state.update(available=False, reason=f"ecd2g_fast._C could not be imported ({error})")
        return
    _register_fakes()
    _state.update(available=True, reason="")


def available() -> bool:
    """Whether ``ecd2g_fast._C`` is importable (probed on the first call only)."""
    _probe()
    return bool(_state["available"])


def unavailable_reason() -> str:
    """Why the extension is unavailable, with a hint to build it; ``""`` when available."""
    _probe()
    if _state["available"]:
        return ""
    return (
        f"the C++/CUDA extension is not built: {_state['reason']}; build it with "
        "`pip install --no-build-isolation -e .` (or `bash scripts/setup_env.sh`)"
    )


def has_device_kernels(device: torch.device) -> bool:
    """Whether the extension is loaded and has kernels for ``device``'s type (CPU always; CUDA
    only when it was compiled with nvcc against a CUDA torch)."""
    if not available():
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(torch.device(device).type)
    return key is not None and all(
        torch._C._dispatch_has_kernel_for_dispatch_key(f"ecd2g_fast::{op}", key) for op in _OPS
    )


def device_unavailable_reason(device: torch.device) -> str:
    """Why :func:`has_device_kernels` is False for ``device`` (``""`` when it is True)."""
    if not available():
        return unavailable_reason()
    if has_device_kernels(device):
        return ""
    return f"the extension was built without {torch.device(device).type.upper()} kernels"


def ops():
    """``torch.ops.ecd2g_fast`` after loading the extension.

    Raises:
        RuntimeError: the extension is not built (see :func:`unavailable_reason`).
    """
    if not available():
        raise RuntimeError(unavailable_reason())
    return torch.ops.ecd2g_fast


def _register_fakes() -> None:
    @torch.library.register_fake("ecd2g_fast::consume_outlets")
    def _consume_outlets_fake(weights, rows, total, choice, status, outlet_offset, negate, seed, offset):
        torch._check(weights.dim() == 2, lambda: "consume_outlets: weights must be 2-D")
        torch._check(rows.shape[0] == weights.shape[0], lambda: "consume_outlets: rows must have shape (N,)")
        return torch.empty_like(total), torch.empty_like(choice), torch.empty_like(status)

    @torch.library.register_fake("ecd2g_fast::potential_move")
    def _potential_move_fake(phi, sink, layer, z, G, e, bidirectional, seed, offset):
        torch._check(phi.dim() == 2, lambda: "potential_move: phi must be 2-D (L+1, M)")
        return torch.empty_like(layer), torch.empty_like(layer, dtype=torch.int32)

    @torch.library.register_fake("ecd2g_fast::potential_move_sorted")
    def _potential_move_sorted_fake(phi, order, reference, prefix, count, masses, layer, z, seed, offset):
        torch._check(phi.dim() == 2, lambda: "potential_move_sorted: phi must be 2-D (L+1, M)")
        return torch.empty_like(layer), torch.empty_like(layer, dtype=torch.int32)

    @torch.library.register_fake("ecd2g_fast::hamming_move")
    def _hamming_move_fake(phi, sink, layer, z, num_categories, dim, g, G, bidirectional, seed, offset):
        torch._check(phi.dim() == 2, lambda: "hamming_move: phi must be 2-D (L+1, M)")
        return torch.empty_like(layer), torch.empty_like(layer, dtype=torch.int32)

    @torch.library.register_fake("ecd2g_fast::philox4x32")
    def _philox_fake(counters, seed):
        return torch.empty_like(counters)
