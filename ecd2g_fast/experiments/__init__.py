"""The paper's experiments end to end: data sets, presets, runs and figures.

* :mod:`.datasets`: distributions on ``{0..K-1}^D`` with samplers and exact pmfs (uniform,
  discretised Gaussian, two moons, swiss roll) and file data (``.npy``/``.csv``);
* :mod:`.configs`: :class:`ExperimentConfig` and the shipped presets :data:`EXPERIMENTS`;
* :mod:`.runner`: :class:`Run` (a configuration resolved once), :func:`run` and the train and
  sample stages;
* :mod:`.evaluation`: the evaluate and figures stages of grid runs (metrics, exact output law);
* :mod:`.highdim`: high-dimensional data sets (Bernoulli mixture, digits) and their sample metrics;
* :mod:`.highdim_stages`: the sample, evaluate and figures stages of high-dimensional runs
  (Hamming circuits; :func:`.runner.pipeline` picks the stages of a run);
* :mod:`.plots`: the figures (matplotlib, imported lazily, Agg backend).

The command line front end is :mod:`ecd2g_fast.cli` (``ecd2g run moons-to-swissroll-2d``).
"""

from .configs import EXPERIMENTS, ExperimentConfig, make_distribution, resolve_datasets
from .runner import Run, evaluate_stage, figures_stage, run, sample_stage, train_stage

__all__ = [
    "EXPERIMENTS",
    "ExperimentConfig",
    "Run",
    "evaluate_stage",
    "figures_stage",
    "make_distribution",
    "resolve_datasets",
    "run",
    "sample_stage",
    "train_stage",
]
