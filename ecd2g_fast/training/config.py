"""Every training setting, once: :class:`TrainConfig`.

:func:`ecd2g_fast.train`, the :class:`~ecd2g_fast.training.Trainer`, the checkpoint and its resume
check, the experiment configuration and the ``ecd2g`` command's options all read the settings
from here. To add a setting, add a field below (with its default, help text and check); the CLI
option, the JSON form and the validation follow from it.

**Defaults.** The paper's SGD, 5000 steps and batch 256 (its Appendix B; the paper's learning
rate and weight decay were lost from its text) with ``lr = 0.01``, ``momentum = 0.9``, no weight
decay and an exponential moving average (EMA) of the weights, decay 0.999. The Monte-Carlo
targets are very noisy (one batch of 256 samples per step), so the last SGD iterate carries a
noise floor set by the step size; averaging the iterates removes most of it at no cost in gradient
evaluations. On the 1D task of ``docs/theory.md`` §4 (K = 50, 5000 steps of batch 256, 7 seeds)
the EMA cut the current network's relative L2 current error from 0.12-0.32 to 0.05-0.08 and its
output TV from 0.03-0.16 to 0.01-0.03, the potential network's TV from 0.016-0.022 to
0.004-0.006. The learning rate: on the same task lr 0.003-0.03 with momentum 0.9 (effective step
``lr / (1 - momentum) = 0.1`` at the default) and plain SGD at 0.1 all converge; 0.001 is too slow
for 5000 steps. No weight decay: the targets are unbiased and the network is small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .. import backends
from ..circuit import Circuit
from ..models import CurrentNet, PotentialNet
from ..settings import Settings, choice, flag, integer, mapping, optional, real, setting

__all__ = ["MODELS", "QUERIES", "TrainConfig"]

#: The learned models by name: the paper's current network and the potential network.
MODELS: dict[str, type[nn.Module]] = {"current": CurrentNet, "potential": PotentialNet}
#: Query distributions (:class:`~ecd2g_fast.training.data.QuerySampler`).
QUERIES = ("uniform", "data")
#: Optimisers by name (``foreach`` implementations: one code path on the CPU and CUDA).
OPTIMIZERS = ("sgd", "adam", "adamw")
#: Learning-rate schedules (:meth:`TrainConfig.lr_factor`).
LR_SCHEDULES = ("constant", "cosine")
#: Optimiser hyperparameters are applied to float32 weights.
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
#: Largest seed: ``torch.Generator.manual_seed`` takes 64-bit signed values.
SEED_MAX = 2**63 - 1


def _target_backends() -> tuple[str, ...]:
    from .. import targets  # noqa: F401  (registers the target-pass backends)

    return ("auto", *backends.names("current_targets"))


@dataclass(frozen=True)
class TrainConfig(Settings):
    """The settings of one training run (Algorithm 1), validated on construction.

    A frozen dataclass: change settings with :meth:`replace` (validated) and store it with
    :meth:`to_json` / :meth:`from_json`. The fields marked *resume* below must agree between a
    checkpoint and the run that resumes it.

    Attributes:
        model: ``"current"`` (the paper's network) or ``"potential"`` (:data:`MODELS`). *resume*
        steps: optimiser steps in total (a resumed run continues up to this many).
        batch_size: source and target samples per step, from which the Monte-Carlo targets are
            counted (>= 2). *resume*
        num_queries: queries per step; None: ``batch_size``. *resume*
        queries: ``"uniform"`` (the paper's) or ``"data"`` (docs/theory.md §5). *resume*
        optimizer: ``"sgd"`` (the paper's; with ``momentum``), ``"adam"`` or ``"adamw"`` (torch's
            default betas). *resume*
        lr: the peak learning rate. *resume*
        lr_schedule: ``"constant"`` or ``"cosine"`` (from ``lr`` down to 0 at ``steps``), after
            ``warmup_steps`` of linear warm-up from 0. The factor is a function of the step
            number alone, so resuming continues it exactly. *resume*
        warmup_steps: steps of linear warm-up (0: none). *resume*
        momentum: SGD's momentum (unused by Adam/AdamW). *resume*
        weight_decay: L2 penalty (SGD, Adam) or decoupled decay (AdamW). *resume*
        ema_decay: decay of the exponential moving average of the weights; None: the last
            iterate (the paper's). *resume*
        model_kwargs: extra constructor arguments of the model (``hidden``, ``encoding``, ...).
            *resume* (compared after defaults are filled in)
        seed: model initialisation and the trainer's generator (data and queries). *resume*
        amp: bf16 autocast of the networks' hidden layers; None: on for CUDA, never on the CPU.
        targets_backend: backend of the target pass (``"auto"``, ``"reference"``, ``"torch"``,
            ``"triton"``).
        checkpoint_every: write a checkpoint after every this many steps (and after the last).
    """

    model: str = setting(
        "current", "the learned model: current (the paper's) or potential", check=choice(MODELS)
    )
    steps: int = setting(5000, "optimiser steps", check=integer(1), resume=False)
    batch_size: int = setting(256, "data samples per step (Monte-Carlo targets)", check=integer(2))
    num_queries: int | None = setting(
        None, "queries per step; none: the batch size", check=optional(integer(1))
    )
    queries: str = setting("uniform", "query distribution", check=choice(QUERIES))
    optimizer: str = setting("sgd", "the optimiser", check=choice(OPTIMIZERS))
    lr: float = setting(0.01, "peak learning rate", check=real(0.0, inclusive=False, high=FLOAT32_MAX))
    lr_schedule: str = setting(
        "constant", "learning-rate schedule after the warm-up", check=choice(LR_SCHEDULES)
    )
    warmup_steps: int = setting(0, "steps of linear learning-rate warm-up", check=integer(0))
    momentum: float = setting(0.9, "SGD momentum", check=real(0.0, inclusive=True, high=1.0))
    weight_decay: float = setting(0.0, "SGD weight decay", check=real(0.0, inclusive=True, high=FLOAT32_MAX))
    ema_decay: float | None = setting(
        0.999, "decay of the weights' moving average; none: the last iterate",
        check=optional(real(0.0, inclusive=True, high=1.0)),
    )  # fmt: skip
    model_kwargs: dict = setting(
        help='model constructor arguments as JSON, e.g. \'{"hidden": [64, 64]}\'',
        check=mapping, default_factory=dict,
    )  # fmt: skip
    seed: int = setting(0, "seed of the initialisation, data draws and queries", check=integer(0, SEED_MAX))
    amp: bool | None = setting(
        None, "bf16 autocast of hidden layers; none: on for CUDA only", check=optional(flag), resume=False
    )
    targets_backend: str = setting(
        "auto", "backend of the target pass", check=choice(_target_backends), resume=False
    )
    checkpoint_every: int = setting(1000, "steps between checkpoints", check=integer(1), resume=False)

    @property
    def queries_per_step(self) -> int:
        """``num_queries``, or ``batch_size`` when it is None."""
        return self.batch_size if self.num_queries is None else self.num_queries

    def lr_factor(self, step: int) -> float:
        """The learning rate of step ``step`` (0-based) divided by :attr:`lr`."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.lr_schedule == "constant":
            return 1.0
        span = max(1, self.steps - self.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - self.warmup_steps, span) / span))

    def build_optimizer(self, parameters) -> torch.optim.Optimizer:
        """The configured optimiser over ``parameters`` (``foreach`` implementations)."""
        if self.optimizer == "sgd":
            return torch.optim.SGD(
                parameters, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay, foreach=True
            )
        cls = torch.optim.Adam if self.optimizer == "adam" else torch.optim.AdamW
        return cls(parameters, lr=self.lr, weight_decay=self.weight_decay, foreach=True)

    def build_model(self, circuit: Circuit) -> nn.Module:
        """A freshly initialised :attr:`model` for ``circuit``, seeded by :attr:`seed`.

        The initialisation depends only on the settings; the caller's global RNG is untouched.

        Raises:
            TypeError, ValueError: bad :attr:`model_kwargs` (the model's own checks).
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return MODELS[self.model](circuit, **self.model_kwargs)
