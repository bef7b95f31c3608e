"""The paper's experiments end to end (issue 5): data sets, presets, runner and figures.

* :mod:`.datasets`: distributions on ``{0..K-1}^D`` with samplers and exact pmfs (uniform,
  discretised Gaussian, two moons, swiss roll) and file data (``.npy``/``.csv``);
* :mod:`.configs`: :class:`ExperimentConfig` and the shipped presets :data:`EXPERIMENTS`;
* :mod:`.runner`: :func:`run` and its stages (train, sample, evaluate, figures);
* :mod:`.plots`: the figures (matplotlib, imported lazily, Agg backend).

The command line front end is :mod:`ecd2g_fast.cli` (``ecd2g run moons-to-swissroll-2d``).
"""

from .configs import EXPERIMENTS, ExperimentConfig, make_distribution, resolve_datasets
from .runner import evaluate_stage, load_field, run, sample_stage, train_stage

__all__ = [
    "EXPERIMENTS",
    "ExperimentConfig",
    "evaluate_stage",
    "load_field",
    "make_distribution",
    "resolve_datasets",
    "run",
    "sample_stage",
    "train_stage",
]
