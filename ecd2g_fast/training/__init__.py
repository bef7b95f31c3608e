"""Training a learned field (Algorithm 1).

==================  ==========================================================================
:mod:`.config`      :class:`TrainConfig`: every training setting, once (defaults and why)
:mod:`.data`        data sources and the query distributions
:mod:`.loss`        :class:`TargetRegressionLoss`: squared error to normalised Monte-Carlo targets
:mod:`.trainer`     :class:`Trainer` (``step()``, ``run()``), :class:`TrainResult`
:mod:`.checkpoint`  the checkpoint format: atomic save, load, resume check, ``load_model``/``load_field``
==================  ==========================================================================

:func:`train` is the one-call entry point.
"""

from __future__ import annotations

import os

import torch

from ..circuit import Circuit
from ..hamming import HammingCircuit
from .checkpoint import load_checkpoint, load_field, load_model
from .config import CIRCUIT_MODELS, MODELS, QUERIES, TrainConfig
from .data import Source
from .loss import TargetRegressionLoss
from .trainer import CHECK_EVERY, NonFiniteLossError, Trainer, TrainResult

__all__ = [
    "CHECK_EVERY",
    "MODELS",
    "QUERIES",
    "NonFiniteLossError",
    "TargetRegressionLoss",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "load_checkpoint",
    "load_field",
    "load_model",
    "train",
]


def train(
    circuit: Circuit | HammingCircuit,
    source: Source,
    target: Source,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    **overrides,
) -> TrainResult:
    """Learn the circuit's field from samples of ``p`` and ``q`` (Algorithm 1).

    ``train(circuit, x, y, model="potential", steps=2000)`` is
    ``Trainer(circuit, x, y, TrainConfig(model="potential", steps=2000)).run()``.

    Args:
        circuit: the circuit.
        source, target: ``(N, D)`` int64 samples of ``p`` and ``q`` (drawn with replacement each
            step), or callables ``n -> (n, D)`` int64.
        config: the settings (:class:`TrainConfig`); None: the defaults (on a
            :class:`~ecd2g_fast.hamming.HammingCircuit`: the default recipe of the ``model``
            override, or of the ``"hamming"`` model without one; they learn from uniform noise to
            data).
        device: training device; None: CUDA when available, else the CPU.
        checkpoint_path: where to write checkpoints (atomically); None for none.
        resume: continue from ``checkpoint_path`` if it exists (bit-identical to an
            uninterrupted run; :meth:`Trainer.run`).
        progress: tqdm progress bar with the loss at the last check point.
        **overrides: :class:`TrainConfig` settings replacing those of ``config``.

    Returns:
        :class:`TrainResult` (``.field`` for sampling, ``.model``, ``.losses``).

    Raises:
        TypeError: an unknown setting, or an argument of the wrong type.
        ValueError: a setting out of range; states that do not fit the circuit; ``resume``
            without ``checkpoint_path``; a checkpoint of a different run.
        NonFiniteLossError: the loss became nan/inf (:meth:`Trainer.run`).
    """
    if config is None:
        # a Hamming circuit learns the noise-to-data log-field by default, with its model's recipe
        model = overrides.get("model", "hamming")
        hamming = isinstance(circuit, HammingCircuit) and model in CIRCUIT_MODELS[HammingCircuit]
        config = TrainConfig.recipe("default", model=model) if hamming else TrainConfig()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig or None, got {type(config).__name__}")
    if overrides:
        config = config.replace(**overrides)
    if resume and checkpoint_path is None:
        raise ValueError("resume=True needs a checkpoint_path")
    trainer = Trainer(
        circuit, source, target, config, device=device, checkpoint_path=checkpoint_path, progress=progress
    )
    return trainer.run(resume=resume)
