"""ecd2g_fast: Electric Current Discrete Data Generation (ECD2G) in PyTorch.

Public API: :class:`Circuit` (closed-form potentials and currents; every state joined to every
state) and :class:`HammingCircuit` (states joined one coordinate apart, for any ``D``), both
:class:`CircuitBase` (layers and neighbour slots, what fields and samplers use), :class:`ExactField` (the
analytic current field of given pmfs), :class:`Field` (the checked field contract) and
:class:`StateField` (a user's own network on ``(Q, D)`` states as a field), :func:`sample` (the
movement-rule walk) and :func:`exact_output_distribution` (the walk's output law without sampling noise),
:func:`current_targets` / :func:`potential_targets` (Monte-Carlo training targets, eq. (13)),
:class:`CurrentNet` / :class:`PotentialNet` (learned fields), :class:`TrainConfig` (every training
setting), :class:`Trainer` and :func:`train` (Algorithm 1). The theory is in ``docs/theory.md``.
"""

from . import models, training
from .circuit import Circuit
from .circuit_base import CircuitBase
from .fields import ExactField, Field, FieldError, PotentialField, StateField
from .hamming import HammingCircuit
from .models import CurrentNet, PotentialNet
from .sampling import OutputDistribution, exact_output_distribution, sample
from .targets import current_targets, potential_targets
from .training import NonFiniteLossError, TrainConfig, Trainer, TrainResult, train

__all__ = [
    "Circuit",
    "CircuitBase",
    "CurrentNet",
    "ExactField",
    "Field",
    "FieldError",
    "HammingCircuit",
    "NonFiniteLossError",
    "OutputDistribution",
    "PotentialField",
    "PotentialNet",
    "StateField",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "current_targets",
    "exact_output_distribution",
    "potential_targets",
    "models",
    "sample",
    "train",
    "training",
]
__version__ = "0.1.0"
