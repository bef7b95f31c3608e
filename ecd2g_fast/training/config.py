"""Every training setting, once: :class:`TrainConfig`.

:func:`ecd2g_fast.train`, the :class:`~ecd2g_fast.training.Trainer`, the checkpoint and its resume
check, the experiment configuration and the ``ecd2g`` command's options all read the settings
from here. To add a setting, add a field below (with its default, help text and check); the CLI
option, the JSON form and the validation follow from it.

**Defaults: measured, per model** (``benchmarks/sweep.py``; raw results, tables and the reasoning
in ``benchmarks/results/sweep/``, ``SUMMARY.md`` there). :data:`RECIPES` ``["default"]`` holds one
recipe per model; the field defaults below are the current network's, and the potential network's
is ``TrainConfig.recipe("default", model="potential")`` (the presets and ``ecd2g --model`` use it).
The sweep found the same recipe best for both: the one-hot state encoding, Adam at ``lr = 3e-3``
with a cosine schedule, uniform queries (512 per step), 10,000 steps of Monte-Carlo batch 16,384,
and the weights' exponential moving average (EMA, decay 0.999: the Monte-Carlo targets are noisy,
and averaging the iterates removes most of the noise at no cost in gradient evaluations). It was
chosen by the TV of the exact output law of the learned field (bidirectional walk) on the 2D
(moons -> swiss roll, ``K = 32``) and 1D (uniform -> gaussian, ``K = 50``) experiments: a screening
at 2500 steps, then the best two per model at the full budget with seeds 0 and 1. Measured (seeds
0 / 1): 2D current network 0.0098 / 0.0099 (Adam 1e-3: 0.0128 / 0.0138; the previous defaults,
scaled coordinates and SGD 0.01, about 0.28), 2D potential network 0.0034 / 0.0038 (previously
0.019); 1D 0.0020 / 0.0021 (current), 0.0005 / 0.0005 (potential). A third pair held out from
the choice (circles -> checkerboard) confirms it (``SUMMARY.md``).

**The paper's recipe** (its Appendix B: SGD, 5000 steps, batch 256 with as many uniform queries,
the scaled-coordinate encoding, the last iterate; its learning rate and weight decay were lost from
its text: ``lr = 0.01``, momentum 0.9, no weight decay here) is :data:`RECIPES` ``["paper"]``:
``TrainConfig.recipe("paper")``, ``ecd2g run ... --recipe paper``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .. import backends
from ..circuit import Circuit
from ..hamming import HammingCircuit, HammingMixer, HammingNet
from ..hamming.learning import SINK_LABELS, check_ratio_training, check_sink_training
from ..models import CurrentNet, PotentialNet
from ..settings import Settings, choice, flag, integer, mapping, optional, real, setting

__all__ = [
    "CIRCUIT_MODELS",
    "DEFAULT_ENCODING",
    "MODELS",
    "QUERIES",
    "RECIPES",
    "RECIPE_SETTINGS",
    "Recipe",
    "TrainConfig",
]

#: The learned models by name: the paper's current network and the potential network; the Hamming
#: circuit's log-field networks.
MODELS: dict[str, type[nn.Module]] = {
    "current": CurrentNet,
    "potential": PotentialNet,
    "hamming": HammingNet,
    "hamming-mixer": HammingMixer,
}
#: The models of each circuit family: the complete circuit's two, the Hamming circuit's log-fields.
CIRCUIT_MODELS: dict[type, tuple[str, ...]] = {
    Circuit: ("current", "potential"),
    HammingCircuit: ("hamming", "hamming-mixer"),
}
#: Query distributions (:class:`~ecd2g_fast.training.data.QuerySampler`).
QUERIES = ("uniform", "data", "walk", "kernel", "kernel-walk")
#: Optimisers by name (``foreach`` implementations: one code path on the CPU and CUDA).
OPTIMIZERS = ("sgd", "adam", "adamw")
#: Learning-rate schedules (:meth:`TrainConfig.lr_factor`).
LR_SCHEDULES = ("constant", "cosine")
#: Optimiser hyperparameters are applied to float32 weights.
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
#: The state encoding of the models when ``model_kwargs`` names none (measured; module docstring).
DEFAULT_ENCODING = "onehot"
#: Largest seed: ``torch.Generator.manual_seed`` takes 64-bit signed values.
SEED_MAX = 2**63 - 1


#: The settings a recipe sets (all of them, for every model); the others (seed, amp, backend,
#: checkpoints) are never touched by a recipe.
RECIPE_SETTINGS = (
    "model", "steps", "batch_size", "num_queries", "queries", "optimizer", "lr", "lr_schedule",
    "warmup_steps", "momentum", "weight_decay", "grad_clip", "ema_decay", "model_kwargs", "ratio_weight",
    "query_kwargs", "sink_labels", "consistency_weight",
)  # fmt: skip


@dataclass(frozen=True)
class Recipe:
    """A named set of training settings applied together (:meth:`TrainConfig.with_recipe`).

    Attributes:
        name: its name (``ecd2g ... --recipe NAME``).
        help: one line.
        settings: per model name, a value for every name in :data:`RECIPE_SETTINGS`.
        model: the model the recipe selects when none is asked for; None: the configuration's.
    """

    name: str
    help: str
    settings: dict[str, dict]
    model: str | None = None

    def for_model(self, model: str | None = None) -> dict:
        """The settings for ``model`` (None: :attr:`model`, or ``"current"``); a fresh dict."""
        model = model if model is not None else (self.model or "current")
        if model not in self.settings:
            raise ValueError(f"model must be one of {', '.join(map(repr, self.settings))}, got {model!r}")
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.settings[model].items()}


def _measured(model: str, queries: str, encoding: str = "onehot") -> dict:
    return dict(
        model=model, steps=10_000, batch_size=16_384, num_queries=512, queries=queries, optimizer="adam",
        lr=3e-3, lr_schedule="cosine", warmup_steps=0, momentum=0.9, weight_decay=0.0, grad_clip=None,
        ema_decay=0.999, model_kwargs={"encoding": encoding}, ratio_weight=1.0, query_kwargs={},
        sink_labels="posterior", consistency_weight=0.0,
    )  # fmt: skip


def _paper(model: str) -> dict:
    return dict(
        model=model, steps=5000, batch_size=256, num_queries=None, queries="uniform", optimizer="sgd",
        lr=0.01, lr_schedule="constant", warmup_steps=0, momentum=0.9, weight_decay=0.0, grad_clip=None, ema_decay=None,
        model_kwargs={"encoding": "scaled"}, ratio_weight=1.0, query_kwargs={},
        sink_labels="posterior", consistency_weight=0.0,
    )  # fmt: skip


#: The named recipes. ``"default"``: the measured per-model defaults (module docstring; the
#: numbers are in ``benchmarks/results/sweep/SUMMARY.md``). ``"paper"``: the paper's Algorithm 1
#: and budget with its current network (scaled coordinates, SGD 0.01, 5000 steps of batch 256,
#: uniform queries, the last iterate).
#: The Hamming log-field's recipe (docs/hamming.md §8), chosen by the D = 64 measurements of
#: ``benchmarks/results/highdim_learning.md`` (against the exact field) and of the README: Adam 2e-3
#: cosine after 300 warm-up steps, gradient norm clipped (without warm-up and clipping the network
#: collapses to a constant), smooth layer features (no dead ends), 1024 data samples and 1024
#: queries per step, EMA. The sink is learned (``model_kwargs`` ``"sink": "learned"``) from contrast
#: labels (``sink_labels``): over four seeds (walked twice each), the mean gap at 3000 steps fell
#: from 2.8 (the field's own inflow) to 1.1. The walk reads the field through a ratio head
#: (``"head": "ratios"``: one network row per walker and move instead of ``2 (1 + D (K-1)) + 1``),
#: trained on every edge of ``kernel-walk`` queries with the ratio term weighted 256: on binary
#: digits the label TV against all images fell from 0.120-0.124 (the scalar head, ratio weight 4)
#: to 0.035-0.045 over two seeds (0.19-0.21 with the ratio head at weight 4: the noisy scalar term
#: then shapes the shared body; 0.05 with ``kernel`` queries, 0.052 at weight 1024). Measured no
#: better and left out: half of the ratio edges among the corrections, a learning rate of 1e-3,
#: 30 % stay edges, the per-layer output scale and clipping at 10 (scalar head).
_HAMMING = dict(
    model="hamming", steps=10_000, batch_size=1024, num_queries=1024, queries="kernel-walk", optimizer="adam",
    lr=2e-3, lr_schedule="cosine", warmup_steps=300, momentum=0.9, weight_decay=0.0, grad_clip=1.0, ema_decay=0.999,
    model_kwargs={"layer_encoding": "smooth", "sink": "learned", "head": "ratios"}, ratio_weight=256.0,
    query_kwargs={}, sink_labels="contrast", consistency_weight=0.0,
)  # fmt: skip

RECIPES: dict[str, Recipe] = {
    "default": Recipe(
        "default",
        "measured: one-hot, Adam 3e-3 cosine, uniform queries, 10k steps of batch 16384, 512 queries, EMA",
        {
            "current": _measured("current", "uniform"),
            "potential": _measured("potential", "uniform"),
            "hamming": _HAMMING,
            # the same recipe for the mixer body (not tuned for it)
            "hamming-mixer": {**_HAMMING, "model": "hamming-mixer"},
        },
    ),
    "paper": Recipe(
        "paper",
        "the paper's: current network, scaled coordinates, SGD 0.01, 5000 steps of batch 256, uniform queries",
        {"current": _paper("current"), "potential": _paper("potential")},
        model="current",
    ),
}


def check_model_for_circuit(model: str, circuit: object) -> None:
    """Raise ``ValueError`` naming ``model`` when it does not belong to the circuit's family
    (:data:`CIRCUIT_MODELS`); ``TypeError`` for an object that is no circuit."""
    for family, models in CIRCUIT_MODELS.items():
        if isinstance(circuit, family):
            if model not in models:
                raise ValueError(
                    f"model {model!r} does not fit a {family.__name__}; use one of {', '.join(map(repr, models))}"
                )
            return
    raise TypeError(f"circuit must be an ecd2g_fast.Circuit or HammingCircuit, got {type(circuit).__name__}")


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
        model: ``"current"`` (the paper's network) or ``"potential"`` on a :class:`Circuit`;
            ``"hamming"`` (:class:`~ecd2g_fast.hamming.HammingNet`, noise to data: the source must
            be uniform noise) or ``"hamming-mixer"`` (:class:`~ecd2g_fast.hamming.HammingMixer`, the
            same with an MLP-mixer body for large ``D``) on a
            :class:`~ecd2g_fast.hamming.HammingCircuit` (:data:`MODELS`, :data:`CIRCUIT_MODELS`). *resume*
        steps: optimiser steps in total (a resumed run continues up to this many).
        batch_size: source and target samples per step, from which the Monte-Carlo targets are
            counted (>= 2). *resume*
        num_queries: queries per step; None: ``batch_size``. *resume*
        queries: ``"uniform"`` (the paper's), ``"data"`` (docs/theory.md §5), or for the Hamming
            model ``"walk"`` (where the exact walk to a data point goes), ``"kernel"`` (data
            smoothed by the layer's kernel, with edges for the denoising ratio term) or
            ``"kernel-walk"`` (the same with half of the distances drawn where the walk goes,
            importance-weighted; docs/hamming.md §8). *resume*
        optimizer: ``"sgd"`` (the paper's; with ``momentum``), ``"adam"`` or ``"adamw"`` (torch's
            default betas). *resume*
        lr: the peak learning rate. *resume*
        lr_schedule: ``"constant"`` or ``"cosine"`` (from ``lr`` down to 0 at ``steps``), after
            ``warmup_steps`` of linear warm-up from 0. The factor is a function of the step
            number alone, so resuming continues it exactly. *resume*
        warmup_steps: steps of linear warm-up (0: none). *resume*
        momentum: SGD's momentum (unused by Adam/AdamW). *resume*
        weight_decay: L2 penalty (SGD, Adam) or decoupled decay (AdamW). *resume*
        grad_clip: largest global norm of the gradient (of the mean loss); larger gradients are
            scaled down to it. None: no clipping. *resume*
        ema_decay: decay of the exponential moving average of the weights; None: the last
            iterate (the paper's). *resume*
        model_kwargs: extra constructor arguments of the model (``hidden``, ``encoding``, ...;
            ``width``, ``depth`` for ``"hamming"``); for the complete circuit's models an
            ``encoding`` not given is :data:`DEFAULT_ENCODING` (``"onehot"``, not the models' own
            default, the paper's ``"scaled"``).
            *resume* (compared after defaults are filled in)
        ratio_weight: weight of the denoising ratio term of the Hamming model's loss (with
            ``"kernel"`` queries; docs/hamming.md §8). *resume*
        query_kwargs: options of the kernel queries (``walk_fraction``, ``correction_fraction``,
            ``stay_fraction``, ``edges``: :class:`~ecd2g_fast.hamming.learning.KernelQueries`); an unknown option, or
            options with other queries, is an error when the trainer starts. *resume*
        sink_labels: how the Hamming model's loss trains a learned sink (``model_kwargs``
            ``"sink": "learned"``): ``"posterior"`` or ``"contrast"``
            (:data:`~ecd2g_fast.hamming.learning.SINK_LABELS`); unused without a learned sink.
            *resume*
        consistency_weight: weight of the Hamming model's edge-consistency term (a ratio head,
            ``model_kwargs`` ``"head": "ratios"``, only;
            :meth:`~ecd2g_fast.hamming.BregmanLogLoss.consistency_terms`); 0: none. *resume*
        seed: model initialisation and the trainer's generator (data and queries). *resume*
        amp: bf16 autocast of the networks' hidden layers; None: on for CUDA, never on the CPU.
        targets_backend: backend of the target pass (``"auto"``, ``"reference"``, ``"torch"``,
            ``"triton"``).
        checkpoint_every: write a checkpoint after every this many steps (and after the last).
    """

    model: str = setting(
        "current",
        "the learned model: current (the paper's) or potential on a Circuit, hamming or hamming-mixer on a "
        "HammingCircuit",
        check=choice(MODELS),
    )
    steps: int = setting(10_000, "optimiser steps", check=integer(1), resume=False)
    batch_size: int = setting(16_384, "data samples per step (Monte-Carlo targets)", check=integer(2))
    num_queries: int | None = setting(
        512, "queries per step; none: the batch size", check=optional(integer(1))
    )
    queries: str = setting("uniform", "query distribution", check=choice(QUERIES))
    optimizer: str = setting("adam", "the optimiser", check=choice(OPTIMIZERS))
    lr: float = setting(3e-3, "peak learning rate", check=real(0.0, inclusive=False, high=FLOAT32_MAX))
    lr_schedule: str = setting(
        "cosine", "learning-rate schedule after the warm-up", check=choice(LR_SCHEDULES)
    )
    warmup_steps: int = setting(0, "steps of linear learning-rate warm-up", check=integer(0))
    momentum: float = setting(0.9, "SGD momentum", check=real(0.0, inclusive=True, high=1.0))
    weight_decay: float = setting(0.0, "SGD weight decay", check=real(0.0, inclusive=True, high=FLOAT32_MAX))
    grad_clip: float | None = setting(
        None, "largest global gradient norm (clipped beyond); none: no clipping",
        check=optional(real(0.0, inclusive=False, high=FLOAT32_MAX)),
    )  # fmt: skip
    ema_decay: float | None = setting(
        0.999, "decay of the weights' moving average; none: the last iterate",
        check=optional(real(0.0, inclusive=True, high=1.0)),
    )  # fmt: skip
    model_kwargs: dict = setting(
        help='model constructor arguments as JSON, e.g. \'{"hidden": [64, 64]}\'; an encoding not given '
        "is onehot",
        check=mapping, default_factory=lambda: {"encoding": DEFAULT_ENCODING},
    )  # fmt: skip
    ratio_weight: float = setting(
        1.0, "weight of the Hamming model's denoising ratio loss (kernel queries)",
        check=real(0.0, inclusive=True, high=FLOAT32_MAX),
    )  # fmt: skip
    query_kwargs: dict = setting(
        help='options of the Hamming model\'s kernel queries as JSON, e.g. \'{"correction_fraction": 0.5}\'',
        check=mapping, default_factory=dict,
    )  # fmt: skip
    sink_labels: str = setting(
        "posterior", "how the Hamming model's loss trains a learned sink (model_kwargs sink=learned)",
        check=choice(SINK_LABELS),
    )  # fmt: skip
    consistency_weight: float = setting(
        0.0, "weight of the Hamming ratio head's edge-consistency term; 0: none",
        check=real(0.0, inclusive=True, high=FLOAT32_MAX),
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

    @classmethod
    def recipe(cls, name: str, model: str | None = None, **overrides) -> TrainConfig:
        """The defaults with recipe ``name`` (:data:`RECIPES`) for ``model`` applied, then ``overrides``.

        Args:
            name: ``"default"`` or ``"paper"``.
            model: ``"current"`` or ``"potential"``; None: the recipe's own model (the paper's:
                ``"current"``), else ``"current"``.
            **overrides: settings replacing the recipe's.

        Raises:
            ValueError: unknown ``name`` or ``model``; TypeError, ValueError: bad ``overrides``.
        """
        return cls().with_recipe(name, model).replace(**overrides)

    def with_recipe(self, name: str, model: str | None = None) -> TrainConfig:
        """A copy with every setting of recipe ``name`` (:data:`RECIPE_SETTINGS`) for ``model`` set.

        Args:
            name: a key of :data:`RECIPES`.
            model: the model; None: the recipe's own model if it has one (``"paper"``: the current
                network), else this configuration's. The seed, ``amp``, backend and checkpoint
                settings are kept.

        Raises:
            ValueError: unknown ``name`` or ``model``.
        """
        if not isinstance(name, str) or name not in RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(map(repr, RECIPES))}, got {name!r}")
        recipe = RECIPES[name]
        if model is None:
            model = recipe.model or self.model
        return self.replace(**recipe.for_model(model))

    def build_optimizer(self, parameters) -> torch.optim.Optimizer:
        """The configured optimiser over ``parameters`` (``foreach`` implementations)."""
        if self.optimizer == "sgd":
            return torch.optim.SGD(
                parameters, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay, foreach=True
            )
        cls = torch.optim.Adam if self.optimizer == "adam" else torch.optim.AdamW
        return cls(parameters, lr=self.lr, weight_decay=self.weight_decay, foreach=True)

    def build_model(self, circuit: Circuit | HammingCircuit) -> nn.Module:
        """A freshly initialised :attr:`model` for ``circuit``, seeded by :attr:`seed`.

        For the complete circuit's models, ``model_kwargs`` without an ``encoding`` gets
        :data:`DEFAULT_ENCODING`.

        The initialisation depends only on the settings; the caller's global RNG is untouched.

        Raises:
            TypeError, ValueError: bad :attr:`model_kwargs` (the model's own checks); a model
                that does not fit the circuit's family; a learned sink with queries it cannot
                learn from (:func:`~ecd2g_fast.hamming.learning.check_sink_training`); a ratio head
                with queries or query options it cannot use (:func:`~ecd2g_fast.hamming.learning.check_ratio_training`).
        """
        check_model_for_circuit(self.model, circuit)
        kwargs = (
            self.model_kwargs
            if self.model in CIRCUIT_MODELS[HammingCircuit]
            else {"encoding": DEFAULT_ENCODING, **self.model_kwargs}
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = MODELS[self.model](circuit, **kwargs)
        check_sink_training(getattr(net, "sink", "inflow"), self.queries)
        check_ratio_training(
            getattr(net, "head_kind", "scalar"), self.queries, self.query_kwargs, self.consistency_weight
        )
        return net
