"""Evaluation of a grid run: metrics of the generated samples and of the exact output law, figures.

(High-dimensional runs: :mod:`.highdim_stages`; :func:`ecd2g_fast.experiments.runner.evaluate_stage`
picks the one a run needs.)

The figures need matplotlib (an optional dependency): without it they are skipped with one line
on the log, and the metrics are still written.
"""

from __future__ import annotations

import math
import sys
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import metrics as M
from .._validation import MAX_DENSE_CURRENT_ENTRIES
from ..fields import ExactField, Field
from ..models import PotentialNetField
from ..sampling import FieldError, exact_output_distribution
from .configs import ExperimentConfig
from .folder import SAMPLES, RunFolderError

if TYPE_CHECKING:
    from .runner import Run

__all__ = ["density_projection_info", "evaluate_stage", "exact_feasible", "figures_stage", "load_samples"]

Log = Callable[[str], None]


def stderr_log(message: str) -> None:
    print(message, file=sys.stderr)


#: the log callables already told that matplotlib is missing (once each)
_TOLD_NO_MATPLOTLIB: weakref.WeakSet = weakref.WeakSet()


def load_plots(log: Log) -> ModuleType | None:
    """The plotting module, or None when matplotlib is not installed (said once per ``log``)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if log not in _TOLD_NO_MATPLOTLIB:
            _TOLD_NO_MATPLOTLIB.add(log)
            log("[ecd2g] matplotlib is not installed: figures skipped (pip install matplotlib)")
        return None
    from . import plots

    return plots


def density_projection_info(field: Field) -> dict:
    """What a learned potential field clipped when projecting its densities onto pmfs.

    A :class:`~ecd2g_fast.models.PotentialNetField` samples the exact field of its density
    estimates clipped at 0 and renormalised (see its docstring); this records how much was
    clipped, for ``metrics.json``.

    Returns:
        ``density_projection`` (whether anything was clipped), ``negative_source_mass`` and
        ``negative_target_mass``; empty for fields that are not potential networks.
    """
    if not isinstance(field, PotentialNetField):
        return {}
    negative_source, negative_target = field.clipped_mass()
    return {
        "negative_source_mass": negative_source,
        "negative_target_mass": negative_target,
        "density_projection": negative_source > 0 or negative_target > 0,
    }


def exact_feasible(config: ExperimentConfig) -> bool:
    """Whether ``tv_exact`` is computed: ``M <= exact_max_states`` and ``2 L M^2 <= 2**28``."""
    m = config.num_categories**config.dim
    return m <= config.exact_max_states and 2 * config.num_layers * m * m <= MAX_DENSE_CURRENT_ENTRIES


def load_samples(run: Run) -> np.ndarray:
    """The run's ``samples.npy`` (checked against the manifest): ``(N, D)`` int64 states in ``[0, K)``.

    Raises:
        FileNotFoundError: no samples yet.
        RunFolderError: samples of another run, changed since written, or of the wrong shape,
            dtype or range.
    """
    if not (run.out / SAMPLES).is_file():
        raise FileNotFoundError(f"no {SAMPLES} in {str(run.out)!r}: run `ecd2g sample` first")
    samples = np.load(run.folder.check(SAMPLES, run.run_id), allow_pickle=False)
    expected = f"(N, {run.config.dim}) int64 states in [0, {run.config.num_categories})"
    if samples.ndim != 2 or samples.shape[1] != run.config.dim or samples.dtype != np.int64:
        raise RunFolderError(f"{SAMPLES} must hold {expected}, got {samples.dtype} {samples.shape}")
    if samples.size and (samples.min() < 0 or samples.max() >= run.config.num_categories):
        raise RunFolderError(f"{SAMPLES} must hold {expected}")
    return samples


def _sample_metrics(run: Run, counts: np.ndarray) -> dict:
    p, q = run.source.pmf(), run.target.pmf()
    n = int(counts.sum())
    occupied = M.occupied_cells(q)
    return dict(
        tv=M.total_variation(counts, q),
        kl=M.smoothed_kl(q, counts, M.DEFAULT_KL_ALPHA),
        js=M.js_divergence(q, counts),
        kl_alpha=M.DEFAULT_KL_ALPHA,
        kl_units="nats, KL(target || smoothed generated)",
        js_units="bits",
        num_samples=n,
        occupied_cells=occupied,
        occupied_mass=M.DEFAULT_OCCUPIED_MASS,
        samples_per_occupied_cell=n / occupied,
        tv_source_target=M.total_variation(p, q),
        target_pmf="exact" if run.target.pmf_is_exact else "empirical law of the target file",
    )


def _floor_metrics(run: Run, n: int) -> dict:
    q, rng = run.target.pmf(), np.random.default_rng(run.seeds.floor)
    return dict(
        tv_floor_vs_pmf=M.tv_floor(q, n, rng),
        tv_floor=M.tv_floor_two_sample(q, n, rng),
        kl_floor=M.smoothed_kl_floor(q, n, rng),
        js_floor=M.js_floor(q, n, rng),
    )


def _exact_metrics(run: Run, field: Field, log: Log) -> tuple[dict, np.ndarray | None]:
    """Metrics of the exact output law of ``field`` (no sampling noise), and that law."""
    q = run.target.pmf()
    values = density_projection_info(field)
    start = time.perf_counter()
    try:
        law = exact_output_distribution(
            field, torch.from_numpy(run.source.pmf()).to(field.device), run.config.mode
        )
    except (FieldError, RuntimeError) as error:
        log(f"[ecd2g] exact output law not available: {error}")
        values.update(tv_exact=None, js_exact=None, kl_exact=None, exact_error=str(error))
        exact_pmf = None
    else:
        exact_pmf = law.pmf.cpu().numpy()
        kl = M.kl_divergence(q, exact_pmf)
        values.update(
            tv_exact=M.total_variation(exact_pmf, q),
            js_exact=M.js_divergence(q, exact_pmf),
            kl_exact=float(kl) if math.isfinite(kl) else None,
            exact_expected_moves=law.expected_moves,
            exact_error=None,
        )
    values["exact_seconds"] = time.perf_counter() - start
    return values, exact_pmf


def evaluate_stage(
    run: Run,
    field: Field | None = None,
    samples: np.ndarray | None = None,
    *,
    progress: bool = True,
    log: Log = stderr_log,
) -> dict:
    """Metrics of the generated samples against the target; writes ``metrics.json`` and figures.

    Metrics (:mod:`ecd2g_fast.metrics`), all against the target pmf (exact for the named data
    sets, the file's empirical law for file data):

    * ``tv``, ``kl`` (``KL(target || generated)``, nats, generated histogram smoothed with
      ``kl_alpha`` = 0.5 pseudo-counts per cell), ``js`` (bits) of the generated histogram;
    * ``tv_floor``: TV between two independent target samples of ``num_samples`` each (mean of
      10 draws); ``tv_floor_vs_pmf``, ``kl_floor``, ``js_floor``: the statistics of a perfect
      generator (``num_samples`` draws from the target pmf) against the pmf, the floor that
      ``tv``, ``kl``, ``js`` themselves are compared with (about ``tv_floor / sqrt(2)``);
    * ``tv_exact``, ``js_exact``, ``kl_exact`` (unsmoothed; None when infinite): the exact output
      law of the learned field started from the source pmf (no sampling noise), when
      :func:`exact_feasible`; ``exact_expected_moves``; ``exact_error`` if the field traps mass;
    * ``tv_source_target``: TV between source and target (what doing nothing scores);
    * ``occupied_cells`` (cells holding 99 % of the target mass) and
      ``samples_per_occupied_cell``.

    Args:
        run: the run.
        field: the learned field (None: loaded from the run's checkpoint when needed).
        samples: ``(N, D)`` generated states (None: ``samples.npy`` of the run).
        progress: progress bar over the evaluation steps.
        log: status messages.

    Returns:
        The full ``metrics.json`` content.
    """
    if samples is None:
        samples = load_samples(run)
    counts = M.histogram(samples, run.config.num_categories)
    values: dict = {}
    exact_pmf = None

    def exact() -> None:
        nonlocal field, exact_pmf
        field = field if field is not None else run.load_field()
        exact_values, exact_pmf = _exact_metrics(run, field, log)
        values.update(exact_values)

    steps: list[tuple[str, Callable[[], object]]] = [
        ("metrics", lambda: values.update(_sample_metrics(run, counts))),
        ("noise floors", lambda: values.update(_floor_metrics(run, int(counts.sum())))),
    ]
    if exact_feasible(run.config):
        steps.append(("exact output law", exact))
    steps.append(("figures", lambda: figures_stage(run, field, samples, exact_pmf, log=log)))
    bar = tqdm(steps, desc="evaluate", disable=not progress, dynamic_ncols=True)
    for label, step in bar:
        bar.set_postfix_str(label)
        step()
    merged = run.write_metrics(values)
    summary = f"[ecd2g] TV {values['tv']:.4f} (perfect-sampler floor {values['tv_floor_vs_pmf']:.4f})"
    if values.get("tv_exact") is not None:
        summary += f", TV exact {values['tv_exact']:.4f}"
    summary += f", KL {values['kl']:.4f} nats (floor {values['kl_floor']:.4f}), JS {values['js']:.4f} bits"
    log(summary)
    return merged


def figures_stage(
    run: Run,
    field: Field | None,
    samples: np.ndarray,
    exact_pmf: np.ndarray | None = None,
    *,
    log: Log = stderr_log,
) -> list[Path]:
    """Write the PNG figures of a run (module docstring); returns their paths (none without matplotlib)."""
    plots = load_plots(log)
    if plots is None:
        return []
    config, out = run.config, run.out
    K, D = config.num_categories, config.dim
    p, q = run.source.pmf(), run.target.pmf()
    counts = M.histogram(samples, K)
    title = f"{config.experiment}: {config.train.model} network, {config.mode} walk, {len(samples)} samples"
    overlay = None
    if D == 1:
        overlay = {"target pmf": q}
        if exact_pmf is not None:
            overlay["exact output law (learned field)"] = exact_pmf
    panels = {"source": p, "target": q, f"generated ({len(samples)} samples)": counts}
    written = [plots.plot_histograms(out / "histograms.png", K, D, panels, overlay=overlay, title=title)]
    if D == 2 and exact_pmf is not None:
        panels = {"target": q, "exact output law of the learned field": exact_pmf}
        title = f"{config.experiment}: no sampling noise"
        written.append(plots.plot_histograms(out / "exact_output.png", K, D, panels, title=title))
    m = K**D
    if D == 1 and config.num_layers * m * m <= 2**24:
        field = field if field is not None else run.load_field()
        exact_field = ExactField(
            run.circuit, torch.from_numpy(p).to(field.device), torch.from_numpy(q).to(field.device)
        )
        written.append(
            plots.plot_current_flow(
                out / "current_flow.png",
                plots.layer_currents(exact_field),
                plots.layer_currents(field),
                p,
                title=f"{config.experiment}: current flow, exact vs learned ({config.train.model} network)",
            )
        )
    return written
