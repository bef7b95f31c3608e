"""The ``"triton"`` backend of the current-target pass: one fused query kernel per pass.

The batches are prepared by :func:`ecd2g_fast.targets.packed.prepare`, which picks the mode:
with a dense count table (exact keys, small ``M``) one kernel computes the batch rows' keys and
counts them with atomic adds, and the query kernel computes the keys of ``z`` and ``w`` itself:
the pass is a memset and two launches. Otherwise the batches are sorted by the torch code of the
``"torch"`` backend and the query kernel searches them. Either way one launch handles every
query: the four counts, the gathers of ``a_l, b_l, a_{l+1}, b_{l+1}`` and the target (or of the
log-terms of the normalised target, combined as in :func:`~ecd2g_fast.targets.reference.signed_exp_sum`).

Hashed keys (``M >= 2**63``; batches collapsed into runs) stay in the kernel: it compares each
key match with the run's first row, so a collision between a query and a batch row counts 0,
and it flags queries whose key falls in an *ambiguous* run (distinct batch rows with one hash,
about ``2**-48`` per pair of rows). Only those flagged queries, normally none, are recounted by
the torch path.

Available for CUDA tensors with Triton installed, and for CPU tensors when ``TRITON_INTERPRET``
is set (Triton's interpreter; slow, for testing). ``triton`` is imported on first use.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from types import ModuleType

import torch

from ..circuit import Circuit
from .packed import PreparedBatches, SortedBatch, StateKeys, TargetBackend, targets_from_prepared

UNAVAILABLE_REASON = "needs the triton package, and a CUDA tensor or TRITON_INTERPRET=1 for CPU tensors"

# Queries (or batch rows) per program, and at most this many int64 columns per step of the row
# loops (exact keys computed in the kernels, row comparisons of hashed keys). Conventional sizes,
# not yet tuned on a GPU; larger BLOCK_Q also means fewer interpreted programs.
_BLOCK_Q = 128
_BLOCK_D = 8  # 32 spills registers in the hashed row comparison (D = 1024: 255 registers + spills)

_KERNEL_MODULES: dict[bool, ModuleType] = {}


def _import_triton() -> ModuleType | None:
    try:
        import triton
    except ImportError:
        return None
    return triton


def _interpret_requested(triton: ModuleType) -> bool:
    """``TRITON_INTERPRET`` as Triton reads it now (not when ``triton`` was imported)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def is_available(device: torch.device) -> bool:
    """Whether the Triton backend can run on ``device`` now (reads ``TRITON_INTERPRET``)."""
    triton = _import_triton()
    if triton is None:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and _interpret_requested(triton)


@contextlib.contextmanager
def _decorating_mode(triton: ModuleType, interpret: bool):
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        with knobs.runtime.scope():
            knobs.runtime.interpret = interpret
            yield
        return
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


def load_kernel_module(path: str, name: str, interpret: bool) -> ModuleType:
    """The Triton kernel file ``path`` loaded as module ``<name>_interpreted`` or ``<name>_compiled``.

    ``@triton.jit`` picks interpreted or compiled when it decorates, so a kernel file is executed
    once per mode, under that mode (callers cache the result per mode).
    """
    import triton

    full_name = f"{name}_{'interpreted' if interpret else 'compiled'}"
    spec = importlib.util.spec_from_file_location(full_name, path)
    module = importlib.util.module_from_spec(spec)
    with _decorating_mode(triton, interpret):
        sys.modules[full_name] = module  # importlib's recipe: the module is findable by its name
        spec.loader.exec_module(module)
    return module


def _kernels(interpret: bool) -> ModuleType:
    """The kernel module compiled (``False``) or interpreted (``True``); loaded once per mode."""
    module = _KERNEL_MODULES.get(interpret)
    if module is None:
        path = os.path.join(os.path.dirname(__file__), "_triton_kernels.py")
        module = _KERNEL_MODULES[interpret] = load_kernel_module(
            path, f"{__package__}._triton_kernels", interpret
        )
    return module


def _block_d(dim: int) -> int:
    """Columns per step of the kernels' row loops: ``D`` rounded up to a power of two in ``[2, 8]``."""
    return min(_BLOCK_D, max(2, 1 << max(dim - 1, 0).bit_length()))


def _kernels_for(device: torch.device) -> ModuleType:
    # CPU tensors can only be interpreted; CUDA ones are when TRITON_INTERPRET asks for it.
    return _kernels(device.type == "cpu" or _interpret_requested(_import_triton()))


def _count_table(state_keys: StateKeys, x: torch.Tensor, y: torch.Tensor, num_states: int) -> torch.Tensor:
    """:func:`packed.count_table` in one kernel launch: keys computed and counted in it."""
    nx, ny, dim = x.shape[0], y.shape[0], x.shape[1]
    table = torch.zeros((2, num_states), dtype=torch.int32, device=x.device)
    grid = (-(-(nx + ny) // _BLOCK_Q),)
    _kernels_for(x.device).count_table_kernel[grid](
        table, x, nx, y, ny, state_keys.weights, num_states, dim, BLOCK_Q=_BLOCK_Q, BLOCK_D=_block_d(dim)
    )
    return table


def _batch_args(prepared: PreparedBatches, batch: SortedBatch | None, row: int, dummy: torch.Tensor) -> tuple:
    """One batch's kernel arguments: keys, counts (or its table row), searched length, search
    steps, and the three hashed-key extras (``dummy`` where unused)."""
    if prepared.table is not None:
        return (dummy, prepared.table[row], 0, 0, dummy, dummy, dummy)
    length = batch.keys.shape[0]
    if batch.exact:
        return (batch.keys, dummy, length, length.bit_length(), dummy, dummy, dummy)
    extras = (batch.representatives, batch.ambiguous.to(torch.int8), batch.states)
    return (batch.keys, batch.counts, length, length.bit_length(), *extras)


def _launch(
    circuit: Circuit,
    prepared: PreparedBatches,
    layer: torch.Tensor,
    z: torch.Tensor,
    kz: torch.Tensor,
    w: torch.Tensor | None,
    kw: torch.Tensor | None,
    normalize: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the kernel; returns ``(out (Q,) float64, flag (Q,) int8 or None for exact keys)``."""
    device = layer.device
    num_queries, dim = z.shape
    hashed = not prepared.state_keys.exact
    out = torch.empty(num_queries, dtype=torch.float64, device=device)
    flag = torch.zeros(num_queries, dtype=torch.int8, device=device) if hashed else out
    current = w is not None
    coefficients = circuit.coefficients(device)
    kernel = _kernels_for(device).targets_kernel
    grid = (-(-num_queries // _BLOCK_Q),)
    kernel[grid](
        out,
        flag,
        coefficients.scalars,
        coefficients.a,
        coefficients.b,
        coefficients.current_terms if current else coefficients.potential_terms,
        layer,
        kz,
        z,
        kw if current else kz,
        w if current else z,
        *_batch_args(prepared, prepared.x, 0, kz),
        prepared.x_size,
        *_batch_args(prepared, prepared.y, 1, kz),
        prepared.y_size,
        num_queries,
        dim,
        CURRENT=current,
        HASHED=hashed,
        DENSE=prepared.table is not None,
        NORMALIZE=normalize,
        BLOCK_Q=_BLOCK_Q,
        BLOCK_D=_block_d(dim),
    )
    return out, (flag if hashed else None)


def _query_keys(prepared: PreparedBatches, states: torch.Tensor) -> torch.Tensor:
    """The kernel's key argument for ``(Q, D)`` query states: their ``(Q,)`` keys, or with a dense
    table the ``(D,)`` key weights (the kernel then computes the exact keys itself)."""
    if prepared.table is not None:
        return prepared.state_keys.weights
    return prepared.state_keys(states)


def evaluate_triton(
    circuit: Circuit,
    prepared: PreparedBatches,
    layer: torch.Tensor,
    z: torch.Tensor,
    w: torch.Tensor | None,
    normalize: bool,
) -> torch.Tensor:
    """The pass of the ``"triton"`` backend on prepared batches: one kernel launch, then the torch
    recount of the queries it flags (hashed keys in an ambiguous run; normally none)."""
    z, layer = z.contiguous(), layer.contiguous()
    w = None if w is None else w.contiguous()
    kz = _query_keys(prepared, z)
    kw = None if w is None else _query_keys(prepared, w)
    if z.shape[0] == 0:
        return torch.empty(0, dtype=torch.float64, device=layer.device)
    out, flag = _launch(circuit, prepared, layer, z, kz, w, kw, normalize)
    if flag is not None:
        fix = torch.nonzero(flag).squeeze(1)
        if fix.numel():
            w_fix, kw_fix = (None, None) if w is None else (w[fix], kw[fix])
            out[fix] = targets_from_prepared(
                circuit, prepared, layer[fix], z[fix], kz[fix], w_fix, kw_fix, normalize
            )
    return out


#: The ``"triton"`` backend (:func:`is_available` says where it runs).
TRITON = TargetBackend(evaluate_triton, _count_table)
current_targets_triton = TRITON.current_targets
potential_targets_triton = TRITON.potential_targets
