"""Experiment configurations: the shipped presets and the data-set specifications they use.

A data set is named by a *spec* string:

======================  ============================================================  =====
spec                    distribution                                                  D
======================  ============================================================  =====
``uniform``             uniform over ``{0..K-1}^D`` ("noise")                         any
``gaussian``            ``q(k)`` proportional to ``exp(-(k - (K-1)/2)^2 / (2 (K/10)^2))``  1
``moons``               two moons, noise sd 0.1, on a ``K x K`` grid                  2
``swissroll``           2D swiss roll ((x, z) of the 3D roll), noise sd 1.0           2
``circles``             two concentric circles (radii 1, 1/2), noise sd 0.05          2
``checkerboard``        uniform over the dark squares of a 4 x 4 checkerboard         2
``PATH.npy|PATH.csv``   the empirical law of the integer states in the file           file
======================  ============================================================  =====

(:mod:`ecd2g_fast.experiments.datasets` defines them and their exact pmfs.)

High-dimensional targets (:data:`~ecd2g_fast.experiments.highdim.HIGHDIM_TARGETS`; no pmf is
tabulated, ``K**D`` is astronomical):

=====================  ====================================================================  ===  =======
target                 distribution                                                          K    D
=====================  ====================================================================  ===  =======
``bernoulli-mixture``  ten product-Bernoulli components, ``BernoulliMixture.make(D, 10, 0)``  2    any (64)
``digits``             scikit-learn's 8 x 8 digits, 17 grey levels                           17   64
``digits-binary``      the same digits thresholded at grey level 8                           2    64
=====================  ====================================================================  ===  =======

A run with one of them learns a Hamming log-field (``HammingCircuit(K, D, L, r, R)``, ``--model
hamming`` or ``hamming-mixer``, docs/hamming.md) from uniform noise: ``--source uniform``, and
another ``--source`` or ``--model`` is an error. ``--R none`` (the presets' value) is the Hamming circuit's default
``R = r D (K - 1)``. The mixture trains on fresh exact draws every step; the digits on the training
split (``split(states, labels, 0.25, seed=0)``), the rest being held out for the metrics
(:mod:`ecd2g_fast.experiments.highdim_stages`).

Shipped experiments (:data:`EXPERIMENTS`):

* ``uniform-to-gaussian-1d``, the paper's §5.1: ``K = 50``, ``L = 10``, ``r = 0.1``, ``R = 100``,
  the paper's current network with the measured default recipe (``RECIPES["default"]`` of
  :mod:`ecd2g_fast.training.config`: one-hot encoding, Adam 3e-3 cosine, uniform queries, 10,000
  steps of batch 16,384; TV exact 0.0020 / 0.0021 for seeds 0 / 1, against 0.046 with the
  paper's recipe, ``--recipe paper``; ``benchmarks/results/sweep/``). Sampling a
  :class:`~ecd2g_fast.models.CurrentNet` evaluates the network for every (walker, neighbour)
  pair of every move, so the default sample is 20,000 walkers (770 per occupied target cell).
* ``moons-to-swissroll-2d``, the paper's §5.2. The paper's ``K`` and ``L`` were lost from its
  text; here ``K = 32`` (``M = 1024`` states; a cell is 1.08 roll units, so the roll's arms,
  ``2 pi`` apart with noise sd 1, are 5.8 cells apart and about 2 cells thick: resolved) and ``L = 10`` (the paper's 1D
  value). ``L`` barely matters beyond a few layers at this ``M``: ``theta = arccosh(1 + M G / e)
  = 1.33``, so the source term of eq. (12) decays by ``e^{-1.33}`` per layer and the middle layers
  carry a near-uniform current (with the exact field, the forward-only walk's bias is TV 0.130,
  0.075, 0.077, 0.077 for ``L`` = 2, 5, 10, 20 and the bidirectional walk is exact for every
  ``L``); the walk costs about ``L + 0.4`` moves. The default model is the potential network
  (docs/theory.md §6): its sampler needs no network call per move and its walk always terminates, which
  is what lets train + sample + exact evaluation fit in under three minutes on a 2-core CPU.
  Its training recipe is the measured default (``RECIPES["default"]``, chosen by the sweep of
  ``benchmarks/sweep.py`` on this pair and the 1D one; ``benchmarks/results/sweep/SUMMARY.md``):
  the one-hot encoding, Adam 3e-3 with a cosine schedule, 512 uniform queries per step, 10,000
  steps of Monte-Carlo batch 16,384, EMA 0.999. TV of the exact output law of the learned field
  (no sampling noise), seeds 0 / 1: 0.0034 / 0.0038 (the previous recipe, scaled coordinates, SGD
  0.01 and data queries at the same budget: 0.019). ``--model current`` runs the paper's network
  with the same recipe: 0.0098 / 0.0099 (0.28 with the previous recipe, 0.45 with the paper's:
  ``--recipe paper``). Its sampler evaluates the network for every walker and neighbour state
  (about 16 walkers per second on a 2-core CPU), so give it ``--num-samples`` of a few thousand.
* ``noise-to-swissroll-2d``: uniform noise over the grid to the swiss roll, otherwise as above.
* ``bernoulli-mixture-64``, ``digits-64``, ``binary-digits-64``: uniform noise to a
  64-dimensional target (table above) on a Hamming circuit with ``L = 64``, the Hamming model's
  default recipe (width 256, depth 3) with the quick budget of :data:`HIGHDIM_BUDGETS`.
* ``bernoulli-mixture-256``: the mixture at ``D = 256`` (``L = 64``): whether the machinery holds
  at ``D >= 256`` (``metrics.json`` has the time per walker move and the peak memory).
* ``custom``: ``--source`` and ``--target`` specs (files or names), ``--num-categories``,
  ``--num-layers`` (default 10).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import backends
from .._validation import MAX_ENUMERABLE_STATES
from ..hamming import HammingCircuit
from ..sampling import MODES
from ..settings import Settings, choice, integer, optional, real, setting, text
from ..training import TrainConfig
from ..training.config import CIRCUIT_MODELS, RECIPES, SEED_MAX
from .datasets import (
    Checkerboard,
    DiscretisedGaussian1D,
    EmpiricalDistribution,
    GridDistribution,
    UniformGrid,
    circles,
    load_states,
    moons,
    swiss_roll,
)
from .highdim import HIGHDIM_TARGETS, HighDimTarget

__all__ = [
    "EXPERIMENTS",
    "HIGHDIM_BUDGETS",
    "NAMED_DATASETS",
    "ExperimentConfig",
    "is_highdim",
    "make_distribution",
    "resolve_datasets",
]

#: Data sets known by name, with the dimension they fix (None: any D).
NAMED_DATASETS = {
    "uniform": None,
    "gaussian": 1,
    "moons": 2,
    "swissroll": 2,
    "circles": 2,
    "checkerboard": 2,
}


def _train_config(name: str, value: object) -> TrainConfig:
    if not isinstance(value, TrainConfig):
        raise TypeError(f"{name} must be a TrainConfig, got {type(value).__name__}")
    return value


def _note(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    return value


def _sampler_backends() -> tuple[str, ...]:
    return ("auto", *backends.names("sample"))


@dataclass(frozen=True)
class ExperimentConfig(Settings):
    """Everything that defines a run; stored as ``config.json`` in the output folder.

    A frozen, validated settings dataclass (:mod:`ecd2g_fast.settings`): the ``ecd2g`` options
    are generated from its fields (groups ``data``, ``circuit``, ``sample``, ``device``) and from
    those of :class:`~ecd2g_fast.training.TrainConfig`.

    Attributes:
        experiment: preset name (``custom`` for ad-hoc specs).
        source, target: data-set specs (module docstring).
        num_categories: ``K``; None: inferred (the largest state in the files, plus one; a
            high-dimensional target's own ``K``).
        dim: ``D``; None: inferred from the specs (``bernoulli-mixture``: 64).
        num_layers: ``L``.
        r, R: the circuit's resistances (ohms); ``R`` None: the Hamming circuit's default
            ``r D (K - 1)`` (high-dimensional targets only).
        recipe: the named recipe (:data:`~ecd2g_fast.training.config.RECIPES`) ``train`` was made
            from; ``ecd2g`` applies it again for another ``--model`` (the settings of the recipe
            for that model), and ``--recipe`` replaces it. Informative otherwise: ``train`` holds
            the settings used.
        train: the training settings; ``train.seed`` is the run's master seed (data, start
            states, walk and noise floors derive from it).
        mode: walk mode, ``"bidirectional"`` (exact) or ``"forward"`` (the paper's).
        backend: sampler backend (``"auto"``, ``"torch"``, ``"cpp"``, ``"potential"``).
        num_samples: generated samples (walkers); None: ten per occupied target cell, at least
            10,000 (high-dimensional targets: :data:`HIGHDIM_DEFAULT_WALKERS`).
        max_moves: most moves of a walker; None: the sampler's default (``100 L + 1000`` for
            learned current and Hamming fields). A grid run fails when a walker exceeds it; a
            high-dimensional run keeps such walkers out of the samples and counts them
            (``finished_fraction``: a learned log-field can cycle across a bridged dead end).
        sample_seed: seed of the start states and the walk; None: derived from ``train.seed``.
        device: ``"cpu"``, ``"cuda"``, ...; None: CUDA when available, else the CPU.
        exact_max_states: compute the exact output law (``tv_exact``) when ``M`` is at most this
            (and ``2 L M^2 <= 2**28``, the limit of ``exact_output_distribution``).
        notes: one line shown by ``ecd2g list``.
    """

    experiment: str = setting("custom", "preset name", check=text, cli=False)
    source: str = setting(
        "uniform",
        "source data set: uniform, gaussian, moons, swissroll, circles, checkerboard or a .npy/.csv file",
        check=text,
        group="data",
    )
    target: str = setting(
        "gaussian",
        "target data set, as --source, or high-dimensional: bernoulli-mixture, digits, digits-binary",
        check=text,
        group="data",
    )
    num_categories: int | None = setting(
        None,
        "K; none: inferred from the data files (high-dimensional targets: their own K)",
        check=optional(integer(2)),
        group="data",
    )
    dim: int | None = setting(
        None, "D; none: inferred from the data sets (bernoulli-mixture: 64)", check=optional(integer(1)),
        group="data",
    )  # fmt: skip
    num_layers: int = setting(10, "L, the number of layers of edges", check=integer(1), group="circuit")
    r: float = setting(0.1, "forward resistance", check=real(0.0, inclusive=False), group="circuit")
    R: float | None = setting(
        100.0,
        "lateral resistance; none: the Hamming circuit's default r D (K-1) (high-dimensional targets)",
        check=optional(real(0.0, inclusive=False)),
        group="circuit",
    )
    recipe: str = setting(
        "default",
        "training recipe the settings start from: default (measured per model) or paper (the paper's "
        "Algorithm 1 and budget, current network); options given override single settings",
        check=choice(RECIPES),
        group="training",
    )
    train: TrainConfig = setting(
        help="the training settings", check=_train_config, default_factory=TrainConfig, cli=False
    )
    mode: str = setting("bidirectional", "walk mode", check=choice(MODES), group="sample")
    backend: str = setting("auto", "sampler backend", check=choice(_sampler_backends), group="sample")
    num_samples: int | None = setting(
        None, "generated samples (walkers); none: 10 per occupied target cell, at least 10,000 "
        "(high-dimensional targets: 1000)",
        check=optional(integer(1)), group="sample",
    )  # fmt: skip
    max_moves: int | None = setting(
        None, "most moves of a walker; none: the sampler's default, 100 L + 1000 for learned fields "
        "(high-dimensional runs keep walkers still moving then out of the samples and count them)",
        check=optional(integer(1)), group="sample",
    )  # fmt: skip
    sample_seed: int | None = setting(
        None, "seed of the start states and the walk; none: derived from --seed",
        check=optional(integer(0, SEED_MAX)), group="sample",
    )  # fmt: skip
    device: str | None = setting(
        None,
        "cpu, cuda, cuda:1, ...; none: cuda if available, else cpu",
        check=optional(text),
        group="device",
    )
    exact_max_states: int = setting(5000, "largest M with an exact output law", check=integer(1), cli=False)
    notes: str = setting("", "one line for `ecd2g list`", check=_note, cli=False)

    def save(self, path: str | Path) -> None:
        """Write ``config.json``."""
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ExperimentConfig:
        """Read ``config.json``.

        Raises:
            FileNotFoundError: no file.
            TypeError, ValueError: not a valid configuration (the message names the setting).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"no config.json at {str(path)!r}: run `ecd2g train` or `ecd2g run` first"
            )
        return cls.from_json(json.loads(path.read_text()))


#: The shipped presets (module docstring); command-line options override their fields.
EXPERIMENTS: dict[str, ExperimentConfig] = {
    # the defaults are the paper's 1D setting: uniform -> gaussian, L = 10, r = 0.1, R = 100, and
    # TrainConfig's defaults are its current network and budget
    "uniform-to-gaussian-1d": ExperimentConfig(
        experiment="uniform-to-gaussian-1d",
        num_categories=50,
        dim=1,
        num_samples=20_000,
        notes="paper §5.1: K=50, L=10, r=0.1, R=100; current network, measured recipe",
    ),
    "moons-to-swissroll-2d": ExperimentConfig(
        experiment="moons-to-swissroll-2d",
        source="moons",
        target="swissroll",
        num_categories=32,
        dim=2,
        num_layers=10,
        train=TrainConfig.recipe("default", model="potential"),
        num_samples=100_000,
        notes="paper §5.2 with K=32, L=10 (the paper's values were lost); potential network, measured recipe",
    ),
}
# the noise-to-data case: the 2D preset with uniform noise over the grid as its source
EXPERIMENTS["noise-to-swissroll-2d"] = EXPERIMENTS["moons-to-swissroll-2d"].replace(
    experiment="noise-to-swissroll-2d",
    source="uniform",
    notes="uniform noise over the 32 x 32 grid -> swiss roll; as moons-to-swissroll-2d otherwise",
)

#: Walkers of a high-dimensional run without ``num_samples``: with the recipe's ratio head one
#: walker costs one network row per move (``2 (1 + D (K-1)) + 1`` rows with the scalar head).
HIGHDIM_DEFAULT_WALKERS = 1000

#: The quick budget of the high-dimensional presets, in one place: training steps, walkers and the
#: walkers' move cap, sized so that a whole ``ecd2g run`` takes at most 15 minutes on the project's
#: 2-core CPU with one thread. With the recipe's ratio head training dominates (about 0.09 s per
#: step at D = 64 with two jobs sharing the cores) and 2000 walkers take seconds (walks take about
#: L + 15 moves). Longer runs: ``--steps``, ``--num-samples``.
HIGHDIM_BUDGETS: dict[str, dict] = {
    "bernoulli-mixture-64": dict(steps=3000, num_samples=2000, max_moves=500),
    "digits-64": dict(steps=3000, num_samples=2000, max_moves=500),
    "binary-digits-64": dict(steps=3000, num_samples=2000, max_moves=500),
    "bernoulli-mixture-256": dict(steps=3000, num_samples=2000, max_moves=500),
}


def _highdim_preset(name: str, target: str, dim: int, notes: str) -> ExperimentConfig:
    budget = HIGHDIM_BUDGETS[name]
    recipe = TrainConfig.recipe("default", model="hamming")
    # the recipe's model settings (its layer encoding) with the presets' size
    train = recipe.replace(
        steps=budget["steps"], model_kwargs={**recipe.model_kwargs, "width": 256, "depth": 3}
    )
    return ExperimentConfig(
        experiment=name,
        source="uniform",
        target=target,
        num_categories=HIGHDIM_TARGETS[target].num_categories,
        dim=dim,
        num_layers=64,
        R=None,
        train=train,
        num_samples=budget["num_samples"],
        max_moves=budget["max_moves"],
        notes=notes,
    )


EXPERIMENTS.update(
    {
        "bernoulli-mixture-64": _highdim_preset(
            "bernoulli-mixture-64",
            "bernoulli-mixture",
            64,
            "noise -> 10-component Bernoulli mixture on {0,1}^64, Hamming circuit L=64; quick budget",
        ),
        "digits-64": _highdim_preset(
            "digits-64",
            "digits",
            64,
            "noise -> 8x8 digits at 17 grey levels, Hamming circuit L=64; quick budget",
        ),
        "binary-digits-64": _highdim_preset(
            "binary-digits-64",
            "digits-binary",
            64,
            "noise -> binarised 8x8 digits, Hamming circuit L=64; quick budget",
        ),
        "bernoulli-mixture-256": _highdim_preset(
            "bernoulli-mixture-256",
            "bernoulli-mixture",
            256,
            "the mixture at D=256 (L=64): does the machinery hold at D>=256 (time per move, peak memory)",
        ),
    }
)


def _is_file_spec(spec: str) -> bool:
    return spec.lower().endswith((".npy", ".csv"))


def make_distribution(
    spec: str, num_categories: int, dim: int, *, name: str = "source", states: np.ndarray | None = None
) -> GridDistribution:
    """The :class:`GridDistribution` a spec names (module docstring).

    Args:
        spec: a name of :data:`NAMED_DATASETS` or a ``.npy``/``.csv`` path.
        num_categories: ``K``.
        dim: ``D``.
        name: the option's name, for error messages.
        states: already loaded file states (avoids reading the file twice).

    Raises:
        ValueError: unknown spec, or a spec that does not fit ``D``/``K``.
        FileNotFoundError: a missing file.
    """
    if _is_file_spec(spec):
        data = load_states(spec, name=name) if states is None else states
        if data.shape[1] != dim:
            raise ValueError(f"{name} file {spec!r} has D = {data.shape[1]} columns, expected {dim}")
        if data.max() >= num_categories:
            raise ValueError(
                f"{name} file {spec!r} holds state {data.max()} >= num_categories = {num_categories}"
            )
        return EmpiricalDistribution(data, num_categories, name=f"file({spec})")
    if spec not in NAMED_DATASETS:
        choices = ", ".join(NAMED_DATASETS) + (f" (a target may also be {', '.join(HIGHDIM_TARGETS)})")
        raise ValueError(f"{name} must be one of {choices} or a .npy/.csv file, got {spec!r}")
    fixed = NAMED_DATASETS[spec]
    if fixed is not None and fixed != dim:
        raise ValueError(f"{name} {spec!r} is a {fixed}D data set, but D = {dim}")
    if spec == "uniform":
        return UniformGrid(num_categories, dim)
    if spec == "gaussian":
        return DiscretisedGaussian1D(num_categories)
    if spec == "moons":
        return moons(num_categories)
    if spec == "circles":
        return circles(num_categories)
    if spec == "checkerboard":
        return Checkerboard(num_categories)
    return swiss_roll(num_categories)


def is_highdim(config: ExperimentConfig) -> bool:
    """Whether ``config`` has a high-dimensional target (a Hamming-circuit run)."""
    return config.target in HIGHDIM_TARGETS


def _resolve_highdim(config: ExperimentConfig) -> tuple[ExperimentConfig, UniformGrid, HighDimTarget]:
    """:func:`resolve_datasets` for a high-dimensional target (module docstring)."""
    spec = HIGHDIM_TARGETS[config.target]
    target = repr(config.target)
    if config.source != "uniform":
        raise ValueError(
            f"source must be 'uniform' for the high-dimensional target {target}: its Hamming model "
            f"learns from uniform noise (--source uniform), got {config.source!r}"
        )
    if config.train.model not in CIRCUIT_MODELS[HammingCircuit]:
        raise ValueError(
            f"model must be 'hamming' or 'hamming-mixer' for the high-dimensional target {target} "
            f"(--model hamming), got {config.train.model!r}"
        )
    K = spec.num_categories
    if config.num_categories is not None and config.num_categories != K:
        raise ValueError(
            f"num_categories must be {K} for the target {target} (--num-categories), got {config.num_categories}"
        )
    dim = config.dim if config.dim is not None else spec.default_dim
    if spec.dim is not None and dim != spec.dim:
        raise ValueError(f"dim must be {spec.dim} for the target {target} (--dim), got {dim}")
    config = config.replace(num_categories=K, dim=dim)
    return config, UniformGrid(K, dim), HighDimTarget.make(config.target, dim)


def resolve_datasets(
    config: ExperimentConfig,
) -> tuple[ExperimentConfig, GridDistribution, GridDistribution | HighDimTarget]:
    """Build the source and target distributions of ``config``, filling in ``K`` and ``D``.

    Returns:
        ``(config with num_categories and dim set, source, target)``; the target of a
        high-dimensional run is a :class:`~ecd2g_fast.experiments.highdim.HighDimTarget` (no pmf).

    Raises:
        ValueError: specs that disagree on ``D``, a missing ``K`` with no file to infer it from,
            unknown specs; for a high-dimensional target, a source other than ``uniform``, a model
            other than ``hamming`` or ``hamming-mixer``, or a ``K``/``D`` its data do not have; for
            a grid target, those models or ``R`` None. (The message names the option.)
    """
    if is_highdim(config):
        return _resolve_highdim(config)
    if config.source in HIGHDIM_TARGETS:
        raise ValueError(
            f"source {config.source!r} is a high-dimensional target: give it as --target, with --source uniform"
        )
    if config.train.model in CIRCUIT_MODELS[HammingCircuit]:
        raise ValueError(
            f"model {config.train.model!r} needs a high-dimensional target (--target "
            f"{', '.join(HIGHDIM_TARGETS)}); got target {config.target!r}"
        )
    if config.R is None:
        raise ValueError("R none (the Hamming circuit's default) needs a high-dimensional target; give --R")
    loaded: dict[str, np.ndarray] = {}
    dims = []
    for role in ("source", "target"):
        spec = getattr(config, role)
        if _is_file_spec(spec):
            loaded[role] = load_states(spec, name=role)
            dims.append(loaded[role].shape[1])
        elif spec in NAMED_DATASETS and NAMED_DATASETS[spec] is not None:
            dims.append(NAMED_DATASETS[spec])
    dim = config.dim if config.dim is not None else (dims[0] if dims else 1)
    for d in dims:
        if d != dim:
            raise ValueError(f"source and target must have the same dimension D; got {dims} (dim={dim})")
    num_categories = config.num_categories
    if num_categories is None:
        if not loaded:
            raise ValueError("num_categories is required unless a data file gives it (--num-categories)")
        num_categories = max(2, max(int(a.max()) + 1 for a in loaded.values()))
    # the experiments tabulate pmfs over all M = K**D states: bound M before anything is allocated
    if num_categories**dim > MAX_ENUMERABLE_STATES:
        given = (
            "given"
            if config.num_categories is not None
            else "inferred from the largest state in the data files"
        )
        raise ValueError(
            f"num_categories = {num_categories} ({given}) and D = {dim} make K**D states, more than the "
            f"{MAX_ENUMERABLE_STATES} (2**24) an experiment can tabulate"
        )
    config = config.replace(num_categories=num_categories, dim=dim)
    source = make_distribution(config.source, num_categories, dim, name="source", states=loaded.get("source"))
    target = make_distribution(config.target, num_categories, dim, name="target", states=loaded.get("target"))
    return config, source, target
