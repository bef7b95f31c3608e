"""The training loss of Algorithm 1: squared error to normalised Monte-Carlo targets."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..circuit import Circuit
from ..hamming import HammingCircuit
from ..targets import current_targets, potential_targets
from .config import CIRCUIT_MODELS

__all__ = ["TargetRegressionLoss", "make_loss"]


class TargetRegressionLoss:
    """Sum of squared errors between a network and its normalised Monte-Carlo targets (eq. (13)).

    The targets of the queries are counted on the batch ``(x, y)`` and normalised by the
    circuit's closed-form scales in the same pass (:func:`~ecd2g_fast.current_targets` /
    :func:`~ecd2g_fast.potential_targets` with ``normalize=True``: float64, order one, finite for
    every circuit), cast to float32 and compared with the network's output. Its minimiser at every
    query is the exact normalised current (or potential): the targets are unbiased
    (docs/theory.md §3, §5). The call traces with ``torch.compile(fullgraph=True)``.

    Args:
        circuit: the circuit.
        model: ``"current"`` (edge queries) or ``"potential"`` (vertex queries).
        targets_backend: backend of the target pass.
        amp: evaluate the network under CUDA bf16 autocast.
    """

    def __init__(
        self, circuit: Circuit, model: str, targets_backend: str = "auto", amp: bool = False
    ) -> None:
        self.circuit, self.model, self.targets_backend, self.amp = circuit, model, targets_backend, amp

    def targets(self, queries: tuple[torch.Tensor, ...], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(Q,)`` float64 normalised targets of ``queries`` (``(layer, z[, w])``) from ``(B, D)`` batches."""
        # in range by construction (sources checked on entry, queries drawn in range): no value scan
        op = current_targets if self.model == "current" else potential_targets
        return op(
            self.circuit, *queries, x, y, backend=self.targets_backend, check_values=False, normalize=True
        )

    def __call__(
        self, net: nn.Module, queries: tuple[torch.Tensor, ...], x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """0-d float32 sum over the queries of the squared normalised error.

        Args:
            net: the module evaluated on the queries: the network or its DistributedDataParallel
                wrapper.
            queries: ``(layer (Q,), z (Q, D)[, w (Q, D)])``.
            x, y: ``(B, D)`` source and target batches.
        """
        normalised = self.targets(queries, x, y).to(torch.float32)
        with torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else contextlib.nullcontext():
            out = net(*queries)
        return (out.float() - normalised).square().sum()


def make_loss(
    circuit,
    model: str,
    targets_backend: str = "auto",
    amp: bool = False,
    device: torch.device | str = "cpu",
    ratio_weight: float = 1.0,
    sink_labels: str = "posterior",
    consistency_weight: float = 0.0,
):
    """The loss of ``model``: ``(net, queries, x, y) -> 0-d sum over the queries``.

    :class:`TargetRegressionLoss` for the complete circuit's models; for the Hamming circuit's the
    scale-free log-field loss :class:`~ecd2g_fast.hamming.BregmanLogLoss` with its denoising ratio
    term weighted by ``ratio_weight``, a learned sink trained on ``sink_labels`` and a ratio head's
    edge-consistency term weighted by ``consistency_weight`` (its targets come from distance histograms;
    ``targets_backend`` and ``amp`` do not apply; its tables live on ``device``).
    """
    if model in CIRCUIT_MODELS[HammingCircuit]:
        from ..hamming import BregmanLogLoss

        return BregmanLogLoss(circuit, device, ratio_weight, sink_labels, consistency_weight)
    return TargetRegressionLoss(circuit, model, targets_backend, amp)
