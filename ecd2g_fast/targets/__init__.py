"""Monte-Carlo training targets (eq. 13): the current-target pass.

A batch of source samples ``x`` and target samples ``y`` replaces the pmfs by their empirical
frequencies, ``p(v) = #{i: x_i == v} / B``; because the potentials are affine in ``(p, q)`` the
targets are unbiased estimates of the exact currents and potentials (THEORY §3). Backends are
registered in :mod:`ecd2g_fast.backends` under the op names ``"current_targets"`` and
``"potential_targets"``.
"""

from __future__ import annotations

import torch

from .. import backends
from .._validation import check_int, check_states, check_tensor
from ..circuit import Circuit
from . import triton as _triton
from .packed import current_targets_torch, potential_targets_torch
from .reference import current_targets_reference, potential_targets_reference

__all__ = ["current_targets", "potential_targets"]

backends.register("current_targets", "reference", current_targets_reference)
backends.register("potential_targets", "reference", potential_targets_reference)
backends.register("current_targets", "torch", current_targets_torch)
backends.register("potential_targets", "torch", potential_targets_torch)
backends.register(
    "current_targets",
    "triton",
    _triton.current_targets_triton,
    _triton.is_available,
    _triton.UNAVAILABLE_REASON,
)
backends.register(
    "potential_targets",
    "triton",
    _triton.potential_targets_triton,
    _triton.is_available,
    _triton.UNAVAILABLE_REASON,
)
for _op in ("current_targets", "potential_targets"):
    # On CPU the Triton interpreter is for testing only: it runs when named explicitly.
    backends.set_auto_order(_op, "cuda", ("triton", "torch", "reference"))
    backends.set_auto_order(_op, "cpu", ("torch", "reference"))


def _check_common(circuit: Circuit, layer, x, y, edges: bool, num_queries: int):
    # edges: layers index edge tails, [0, L-1]; otherwise vertices, [0, L].
    if not isinstance(circuit, Circuit):
        raise TypeError(f"circuit must be an ecd2g_fast.Circuit, got {type(circuit).__name__}")
    layer_max = circuit.num_layers - 1 if edges else circuit.num_layers
    K, D = circuit.num_categories, circuit.dim
    layer = check_tensor("layer", layer)
    if layer.dtype != torch.int64:
        raise TypeError(f"layer must have dtype torch.int64, got {layer.dtype}")
    if layer.shape != (num_queries,):
        raise ValueError(f"layer must have shape (Q,) = ({num_queries},), got {tuple(layer.shape)}")
    if layer.numel() and (int(layer.min()) < 0 or int(layer.max()) > layer_max):
        raise ValueError(
            f"layer must hold layer indices in [0, {layer_max}], got [{int(layer.min())}, {int(layer.max())}]"
        )
    x = check_states("x", x, K, D)
    y = check_states("y", y, K, D)
    check_int("x.shape[0] (batch size)", x.shape[0], 1)
    check_int("y.shape[0] (batch size)", y.shape[0], 1)
    for name, t in (("x", x), ("y", y)):
        if t.device != layer.device:
            raise ValueError(f"{name} must be on layer's device {layer.device}, got {t.device}")
    return layer, x, y


def current_targets(
    circuit: Circuit,
    layer: torch.Tensor,
    z: torch.Tensor,
    w: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Monte-Carlo estimate of the edge currents ``I_layer(z, w)`` (eq. 13).

    ``I = C(z, w) (phi_l(z) - phi_{l+1}(w))`` with ``p``, ``q`` in eq. (12) replaced by the
    frequencies of the states in ``x`` and ``y``.

    Args:
        circuit: the circuit.
        layer: ``(Q,)`` int64 layer of each query edge's tail, in ``[0, L)``.
        z: ``(Q, D)`` int64 tail states (at ``layer``), in ``[0, K)``.
        w: ``(Q, D)`` int64 head states (at ``layer + 1``).
        x: ``(B, D)`` int64 source samples; ``y``: ``(B', D)`` int64 target samples (usually
            ``B' = B``, the two halves of a coupling's batch). All on one device.
        backend: ``"auto"`` (CUDA: ``"triton"``, ``"torch"``, ``"reference"``, the first available;
            CPU: ``"torch"``), ``"reference"`` (pairwise, ``O(Q B D)``), ``"torch"`` (sorted
            batch, ``O((Q + B) log B)``) or ``"triton"`` (one fused kernel; CUDA, or CPU with
            ``TRITON_INTERPRET=1``).

    Returns:
        ``(Q,)`` float64 physical currents (units of the total current 1).

    Raises:
        TypeError: a tensor argument of the wrong type or dtype.
        ValueError: wrong shapes, states or layers out of range, mixed devices, empty batch,
            unknown or unavailable backend.
    """
    z = check_tensor("z", z)
    Q = z.shape[0] if z.dim() >= 1 else -1
    layer, x, y = _check_common(circuit, layer, x, y, True, Q)
    z = check_states("z", z, circuit.num_categories, circuit.dim)
    w = check_states("w", w, circuit.num_categories, circuit.dim)
    if w.shape != z.shape:
        raise ValueError(f"w must have the shape of z {tuple(z.shape)}, got {tuple(w.shape)}")
    for name, t in (("z", z), ("w", w)):
        if t.device != layer.device:
            raise ValueError(f"{name} must be on layer's device {layer.device}, got {t.device}")
    impl = backends.select("current_targets", backend, layer.device).impl
    return impl(circuit, layer, z, w, x, y)


def potential_targets(
    circuit: Circuit,
    layer: torch.Tensor,
    z: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Monte-Carlo estimate of the potentials ``phi_layer(z)`` (eq. 12, gauge ``c = 0``).

    Args:
        circuit: the circuit.
        layer: ``(Q,)`` int64 layers in ``[0, L]``.
        z: ``(Q, D)`` int64 states in ``[0, K)``.
        x, y: ``(B, D)`` / ``(B', D)`` int64 source and target samples, as in :func:`current_targets`.
        backend: as in :func:`current_targets`.

    Returns:
        ``(Q,)`` float64 potentials.

    Raises:
        TypeError, ValueError: as :func:`current_targets`.
    """
    z = check_tensor("z", z)
    Q = z.shape[0] if z.dim() >= 1 else -1
    layer, x, y = _check_common(circuit, layer, x, y, False, Q)
    z = check_states("z", z, circuit.num_categories, circuit.dim)
    if z.device != layer.device:
        raise ValueError(f"z must be on layer's device {layer.device}, got {z.device}")
    impl = backends.select("potential_targets", backend, layer.device).impl
    return impl(circuit, layer, z, x, y)
