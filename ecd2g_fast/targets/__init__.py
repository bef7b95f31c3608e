"""Monte-Carlo training targets (eq. 13): the current-target pass.

A batch of source samples ``x`` and target samples ``y`` replaces the pmfs by their empirical
frequencies, ``p(v) = #{i: x_i == v} / B``; because the potentials are affine in ``(p, q)`` the
targets are unbiased estimates of the exact currents and potentials (docs/theory.md §3). Backends are
registered in :mod:`ecd2g_fast.backends` under the op names ``"current_targets"`` and
``"potential_targets"``; those of the Hamming circuit (:mod:`ecd2g_fast.hamming.targets`, every
sample contributing through its Hamming distance) under ``"hamming_current_targets"`` and
``"hamming_potential_targets"``. Both families go through the same checks, in :func:`_run`.
"""

from __future__ import annotations

import torch

from .. import backends
from .._validation import ValueRange, check_ranges, check_states, check_tensor, state_range
from ..circuit import Circuit
from ..hamming import HammingCircuit
from ..hamming import targets as _hamming
from . import triton as _triton
from .packed import TORCH as _TORCH
from .reference import current_targets_reference, potential_targets_reference

__all__ = ["current_targets", "potential_targets"]

_REFERENCE = {"current_targets": current_targets_reference, "potential_targets": potential_targets_reference}
for _op in ("current_targets", "potential_targets"):
    backends.register(_op, "reference", _REFERENCE[_op])
    backends.register(_op, "torch", getattr(_TORCH, _op))
    backends.register(
        _op, "triton", getattr(_triton.TRITON, _op), _triton.is_available, _triton.UNAVAILABLE_REASON
    )
    # On CPU the Triton interpreter is for testing only: it runs when named explicitly.
    backends.set_auto_order(_op, "cuda", ("triton", "torch", "reference"))
    backends.set_auto_order(_op, "cpu", ("torch", "reference"))
for _index, _op in enumerate(("hamming_current_targets", "hamming_potential_targets")):
    for _name, _impls in _hamming.BACKENDS.items():
        _extra = (_triton.is_available, _triton.UNAVAILABLE_REASON) if _name == "triton" else ()
        backends.register(_op, _name, _impls[_index], *_extra)
    backends.set_auto_order(_op, "cuda", ("triton", "torch", "reference"))
    backends.set_auto_order(_op, "cpu", ("torch", "reference"))


def _run(
    op: str,
    circuit: Circuit | HammingCircuit,
    layer,
    queries: dict,
    x,
    y,
    backend: str,
    check_values: bool,
    normalize: bool,
) -> torch.Tensor:
    """Check the arguments of a pass and run the backend of ``op`` that ``backend`` selects.

    ``queries``: name -> ``(Q, D)`` query states (``z``, and ``w`` for currents: then layers
    index edge tails, ``[0, L-1]``; otherwise vertices, ``[0, L]``). The value ranges of all
    tensors are checked together, with one device-to-host copy, when ``check_values``; under
    ``torch.compile`` by asserts inside the graph instead (:func:`_assert_ranges`). A
    :class:`HammingCircuit` runs the ``"hamming_"`` op, whose edges must also join states at
    Hamming distance <= 1 (checked with the values).
    """
    hamming = isinstance(circuit, HammingCircuit)
    if not (hamming or isinstance(circuit, Circuit)):
        raise TypeError(
            f"circuit must be an ecd2g_fast.Circuit or HammingCircuit, got {type(circuit).__name__}"
        )
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool, got {type(normalize).__name__}")
    K, D = circuit.num_categories, circuit.dim
    states = {name: check_tensor(name, t) for name, t in queries.items()}
    z = states["z"]
    if z.dim() != 2:
        raise ValueError(f"z must have shape (Q, {D}) (D = {D}), got {tuple(z.shape)}")
    num_queries = z.shape[0]
    layer = check_tensor("layer", layer)
    if layer.dtype != torch.int64:
        raise TypeError(f"layer must have dtype torch.int64, got {layer.dtype}")
    if layer.shape != (num_queries,):
        raise ValueError(f"layer must have shape (Q,) = ({num_queries},), got {tuple(layer.shape)}")
    states["x"], states["y"] = x, y
    states = {name: check_states(name, t, K, D, check_values=False) for name, t in states.items()}
    for name in ("x", "y"):
        if states[name].shape[0] < 1:
            raise ValueError(f"{name}.shape[0] (batch size) must be >= 1, got {states[name].shape[0]}")
    if "w" in states and states["w"].shape != states["z"].shape:
        raise ValueError(f"w must have the shape of z {tuple(z.shape)}, got {tuple(states['w'].shape)}")
    for name, t in states.items():
        if t.device != layer.device:
            raise ValueError(f"{name} must be on layer's device {layer.device}, got {t.device}")
    compiling = torch.compiler.is_compiling()
    if check_values:
        layer_max = circuit.num_layers - 1 if "w" in states else circuit.num_layers
        ranges = [("layer", layer, 0, layer_max + 1, f"layer indices in [0, {layer_max}]")]
        ranges += [state_range(name, t, K) for name, t in states.items()]
        (_assert_ranges if compiling else check_ranges)(ranges)
        if hamming and "w" in states:
            _check_edges(states["z"], states["w"], compiling)
    if hamming:
        op = f"hamming_{op}"
    if compiling:
        if backend == "triton":
            raise ValueError(
                f"backend 'triton' for {op} cannot be traced by torch.compile; use 'torch' (what "
                "'auto' means under torch.compile: inductor then generates the fused kernels itself)"
            )
        backend = "torch" if backend == "auto" else backend
    impl = backends.select(op, backend, layer.device).impl
    return impl(circuit, layer, *states.values(), normalize=normalize)


def _check_edges(z: torch.Tensor, w: torch.Tensor, compiling: bool) -> None:
    """Hamming circuits: every ``w`` equals its ``z`` or differs from it in one coordinate."""
    bad = _hamming.distance_violations(z, w)
    message = "w must equal z or differ from it in exactly one coordinate (the Hamming circuit's edges)"
    if compiling:
        torch._assert_async(~bad.any(), message)
        return
    if bool(bad.any()):
        first = int(torch.nonzero(bad)[0, 0])
        distance = int((z[first] != w[first]).sum())
        raise ValueError(f"{message}; query {first} is at distance {distance}")


def _assert_ranges(ranges: list[ValueRange]) -> None:
    """:func:`check_ranges` inside a ``torch.compile`` graph: no device-to-host copy, no graph break.

    One ``torch._assert_async`` per tensor: out-of-range values raise ``RuntimeError`` (not
    ``ValueError``) with the message of :func:`check_ranges` without the values found, when the
    compiled graph runs (on CUDA as a device-side assert, which ends the CUDA context).
    """
    for name, t, low, high, description in ranges:
        torch._assert_async(((t >= low) & (t < high)).all(), f"{name} must hold {description}")


def current_targets(
    circuit: Circuit | HammingCircuit,
    layer: torch.Tensor,
    z: torch.Tensor,
    w: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    backend: str = "auto",
    check_values: bool = True,
    normalize: bool = False,
) -> torch.Tensor:
    """Monte-Carlo estimate of the edge currents ``I_layer(z, w)`` (eq. 13).

    ``I = C(z, w) (phi_l(z) - phi_{l+1}(w))`` with ``p``, ``q`` in eq. (12) replaced by the
    frequencies of the states in ``x`` and ``y``. With ``normalize``, the dimensionless
    ``I / (C(z, w) sigma_l)`` that :class:`~ecd2g_fast.CurrentNet` regresses (docs/theory.md §5;
    ``exp(circuit.log_current_scale(layer, z, w))`` turns it back into ``I``), computed in log
    space (:attr:`Circuit.current_terms`): finite for every ``K`` and ``D`` wherever the value is
    representable. A query absent from both batches has ``|target| <= 1``; a state found in a
    batch contributes up to ``M count / B`` (a density ratio), which is ``+-inf`` once it exceeds
    float64 (``M / B > 1e308``).

    Under ``torch.compile`` (``fullgraph=True`` works, exact and hashed keys) ``"auto"`` means
    ``"torch"``, ``"triton"`` raises ``ValueError`` while tracing (which Dynamo reports as
    ``torch._dynamo.exc.Unsupported`` under ``fullgraph=True``), and ``check_values`` asserts
    inside the graph: out-of-range values raise ``RuntimeError`` naming the tensor when the
    compiled graph runs (on CUDA a device-side assert); nothing out of range is silently used.

    A :class:`~ecd2g_fast.HammingCircuit` takes the same arguments, with ``w`` equal to ``z`` or
    one coordinate away (else ``ValueError`` naming ``w``, checked with ``check_values``): every
    sample contributes through its Hamming distance (:mod:`ecd2g_fast.hamming.targets`), computed
    with per-state relative accuracy at any ``D``; the normalised target is
    ``I / (C(z, w) sigma_l)`` with ``|normalised| <= 1`` (``circuit.log_current_scale``). Its
    backends: ``"reference"`` (pairwise, ``O(Q B D)``), ``"torch"`` (one-hot matrix products,
    ``O(Q B D K)`` multiply-adds) and ``"triton"`` (one fused kernel, bit-packed states).

    Args:
        circuit: the circuit (:class:`~ecd2g_fast.Circuit` or :class:`~ecd2g_fast.HammingCircuit`).
        layer: ``(Q,)`` int64 layer of each query edge's tail, in ``[0, L)``.
        z: ``(Q, D)`` int64 tail states (at ``layer``), in ``[0, K)``.
        w: ``(Q, D)`` int64 head states (at ``layer + 1``).
        x: ``(B, D)`` int64 source samples; ``y``: ``(B', D)`` int64 target samples (usually
            ``B' = B``, the two halves of a coupling's batch). All on one device.
        backend: ``"auto"`` (CUDA: ``"triton"``, ``"torch"``, ``"reference"``, the first available;
            CPU: ``"torch"``), ``"reference"`` (pairwise, ``O(Q B D)``), ``"torch"`` (sorted
            batch, ``O((Q + B) log B)``) or ``"triton"`` (one fused kernel; CUDA, or CPU with
            ``TRITON_INTERPRET=1``).
        check_values: check that layers and states are in range (one device-to-host copy for
            all tensors, a sync on CUDA). ``False`` skips it, for loops whose inputs are in range
            by construction (the trainer); out-of-range values then give meaningless targets
            or out-of-bounds memory accesses.
        normalize: return the normalised targets instead of the physical ones.

    Returns:
        ``(Q,)`` float64 physical currents (units of the total current 1), or with ``normalize``
        the dimensionless normalised ones.

    Raises:
        TypeError: a tensor argument of the wrong type or dtype, ``normalize`` not a bool.
        ValueError: wrong shapes, states or layers out of range, mixed devices, empty batch,
            unknown or unavailable backend.
    """
    return _run("current_targets", circuit, layer, {"z": z, "w": w}, x, y, backend, check_values, normalize)


def potential_targets(
    circuit: Circuit | HammingCircuit,
    layer: torch.Tensor,
    z: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    backend: str = "auto",
    check_values: bool = True,
    normalize: bool = False,
) -> torch.Tensor:
    """Monte-Carlo estimate of the potentials ``phi_layer(z)`` (eq. 12, gauge ``c = 0``).

    With ``normalize``, the dimensionless ``(phi_l(z) + l s) / tau_l`` with
    ``tau_l = (a_l + b_l) / M``, i.e. ``alpha_l (M p(z) - 1) - beta_l (M q(z) - 1)``, that
    :class:`~ecd2g_fast.PotentialNet` regresses (docs/theory.md §6):
    ``phi_l(z) = -l s + exp(circuit.log_potential_scale(layer)) * normalised``. Computed in log
    space (:attr:`Circuit.potential_terms`), finite wherever representable, as in
    :func:`current_targets`: ``|target| <= 1`` for a state absent from both batches.

    For a :class:`~ecd2g_fast.HammingCircuit` the normalised target is
    ``(phi_l(z) + l s) / tau_l`` with ``|normalised| <= 1`` (``circuit.log_potential_scale``).

    Args:
        circuit: the circuit (:class:`~ecd2g_fast.Circuit` or :class:`~ecd2g_fast.HammingCircuit`).
        layer: ``(Q,)`` int64 layers in ``[0, L]``.
        z: ``(Q, D)`` int64 states in ``[0, K)``.
        x, y: ``(B, D)`` / ``(B', D)`` int64 source and target samples, as in :func:`current_targets`.
        backend, check_values, normalize: as in :func:`current_targets`.

    Returns:
        ``(Q,)`` float64 potentials (normalised with ``normalize``).

    Raises:
        TypeError, ValueError: as :func:`current_targets`.
    """
    return _run("potential_targets", circuit, layer, {"z": z}, x, y, backend, check_values, normalize)
