"""The sample, evaluate and figures stages of a high-dimensional run (a Hamming circuit).

A run whose target is one of :data:`~ecd2g_fast.experiments.highdim.HIGHDIM_TARGETS` trains a
Hamming log-field from uniform noise with the shared training stage
(:func:`~ecd2g_fast.experiments.runner.train_stage`); these stages follow it.
:func:`ecd2g_fast.experiments.runner.pipeline` picks them for such a run.

**Sampling** (:func:`sample_stage`): ``num_samples`` walkers start from uniform noise and walk the
learned field on ``(B, D)`` state vectors, at most ``max_moves`` moves each (default
``100 L + 1000``). A learned log-field can make a walker cycle across a bridged dead end
(:class:`~ecd2g_fast.hamming.HammingNetField`): walkers still moving at ``max_moves`` are kept out of
``samples.npy`` and counted (``finished_fraction``), so the metrics judge the finished walkers only.
``metrics.json`` also gets the bridges taken, the mean moves, the time per walker move and the
peak memory (``peak_memory_bytes``: on the CPU the process's maximum resident set size, the
high-water mark of the whole process, training included when it ran in the same process; on CUDA
``torch.cuda.max_memory_allocated`` during the walk).

**Metrics** (:func:`evaluate_stage`, :func:`~ecd2g_fast.experiments.highdim.sample_metrics`): for
every metric ``m``, ``m`` of the samples and ``m_floor`` of a perfect sampler of the same size:

* ``bernoulli-mixture``: against 20,000 exact draws (the reference); the floor is as many other
  exact draws as there are samples: ``marginal_tv``, ``correlation_error``, ``loglik`` (mean exact
  log-likelihood, nats), ``loglik_gap`` (the reference's mean minus it), ``coverage_tv``;
* digits: against the held-out images; the floor is a same-size subsample of the training images
  (at most all of them): ``marginal_tv``, ``correlation_error``, ``label_tv`` (labels given by a
  :class:`~ecd2g_fast.experiments.highdim.DigitClassifier` trained on the training split; its
  held-out accuracy is ``classifier_accuracy``), ``label_tv_crossfit`` (against the out-of-fold
  labels of all the images, :class:`~ecd2g_fast.experiments.highdim.CrossFittedLabels`; a
  simulated floor; their accuracy is ``crossfit_accuracy``), the nearest-training-image distances of
  :func:`~ecd2g_fast.experiments.highdim.memorisation` (``memorisation_*``) and the class margins
  of :func:`~ecd2g_fast.experiments.highdim.class_margin` (``class_margin_*``).

**Figures**: ``samples.png`` (64 generated states drawn as images next to 64 real ones),
``marginals.png`` (per-coordinate means of the samples against the data's), and the training
stage's ``loss.png``.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import backends
from ..fields import Field
from .configs import HIGHDIM_DEFAULT_WALKERS
from .evaluation import Log, load_plots, load_samples, stderr_log
from .folder import SAMPLES, SOURCE_SAMPLES, TRAIN_METRICS, atomic_write
from .highdim import class_margin, memorisation, sample_metrics

if TYPE_CHECKING:
    from .runner import Run

__all__ = ["HIGHDIM_SAMPLE_CHUNK", "evaluate_stage", "figures_stage", "sample_stage"]

#: Walkers per call of :func:`ecd2g_fast.sample` (one progress-bar tick each).
HIGHDIM_SAMPLE_CHUNK = 256
#: Images per panel of ``samples.png`` (an 8 x 8 mosaic).
FIGURE_IMAGES = 64


def default_max_moves(run: Run) -> int:
    """``config.max_moves``, or the sampler's default for learned fields, ``100 L + 1000``."""
    max_moves = run.config.max_moves
    return max_moves if max_moves is not None else 100 * run.circuit.num_layers + 1000


def _peak_memory(device: torch.device) -> tuple[int, str]:
    """``(bytes, what they measure)``: see the module docstring."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "torch.cuda.max_memory_allocated during the walk"
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # Linux reports KiB, macOS bytes
    return int(kib * scale), "max resident set size of the process (whole lifetime)"


def sample_stage(run: Run, field: Field, *, progress: bool = True, log: Log = stderr_log) -> np.ndarray:
    """Walk ``num_samples`` walkers from uniform noise; write ``samples.npy`` (finished walkers).

    Args:
        run: a high-dimensional run.
        field: its learned :class:`~ecd2g_fast.hamming.HammingNetField` (:meth:`Run.load_field`).
        progress: progress bar over chunks of :data:`HIGHDIM_SAMPLE_CHUNK` walkers.
        log: status messages.

    Returns:
        ``(N, D)`` int64 terminal states of the walkers that finished within ``max_moves``.
    """
    config, device = run.config, run.device
    n = config.num_samples if config.num_samples is not None else HIGHDIM_DEFAULT_WALKERS
    max_moves = default_max_moves(run)
    x0 = run.source.sample(n, np.random.default_rng(run.seeds.start))
    generator = run.seeds.walk_generator(device)
    selected = backends.select("sample", config.backend, device, subject=field).name
    bridged_before = int(field.bridged)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    from .runner import walk_in_chunks  # runner imports this module

    states, moves_all, seconds = walk_in_chunks(
        run, field, x0, generator, HIGHDIM_SAMPLE_CHUNK, max_moves, "keep", progress
    )
    peak_bytes, peak_kind = _peak_memory(device)
    finished = moves_all >= 0
    samples = states[finished].numpy().astype(np.int64)
    num_finished = int(finished.sum())
    walker_moves = int(moves_all[finished].sum()) + max_moves * (n - num_finished)
    for name, array in ((SOURCE_SAMPLES, x0), (SAMPLES, samples)):
        atomic_write(run.folder / name, lambda handle, a=array: np.save(handle, a))
    run.folder.record(run.run_id, [SOURCE_SAMPLES, SAMPLES])
    run.folder.write_config(config, run.run_id)
    mean_moves = float(moves_all[finished].double().mean()) if num_finished else None
    run.write_metrics(  # earlier evaluations describe other samples: only the training keys stay
        {
            "num_walkers": n,
            "num_samples": num_finished,
            "finished_fraction": num_finished / n,
            "max_moves": max_moves,
            "mean_moves": mean_moves,
            "bridged_dead_ends": int(field.bridged) - bridged_before,
            "walker_moves": walker_moves,
            "sample_seconds": seconds,
            "samples_per_second": num_finished / seconds if seconds > 0 else None,
            "moves_per_second": walker_moves / seconds if seconds > 0 else None,
            "seconds_per_walker_move": seconds / walker_moves if walker_moves else None,
            "peak_memory_bytes": peak_bytes,
            "peak_memory": peak_kind,
            "mode": config.mode,
            "backend": config.backend,
            "backend_selected": selected,
            "device": str(device),
        },
        keep=TRAIN_METRICS,
    )
    log(
        f"[ecd2g] walked {n} walkers ({config.mode}) in {seconds:.1f} s "
        f"({1e3 * seconds / max(walker_moves, 1):.2f} ms per walker move): {num_finished} finished "
        f"within {max_moves} moves"
        + (f", {mean_moves:.1f} moves each" if mean_moves is not None else "")
        + f"; {int(field.bridged) - bridged_before} bridged dead ends; peak memory {peak_bytes / 2**20:.0f} MiB"
    )
    return samples


def _floor_generator(run: Run) -> torch.Generator:
    """The CPU generator of the reference draws, the floor and the figures' real examples."""
    seed = int(run.seeds.floor.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
    return torch.Generator().manual_seed(seed)


def evaluate_stage(
    run: Run,
    field: Field | None = None,
    samples: np.ndarray | None = None,
    *,
    progress: bool = True,
    log: Log = stderr_log,
) -> dict:
    """The metrics of the module docstring; writes ``metrics.json`` and the figures.

    Args:
        run: a high-dimensional run.
        field: unused (the metrics need the samples only); accepted for the grid stage's signature.
        samples: ``(N, D)`` int64 generated states (None: the run's ``samples.npy``).
        progress: progress bar over the evaluation steps.
        log: status messages.

    Returns:
        The full ``metrics.json`` content.
    """
    del field
    if samples is None:
        samples = load_samples(run)
    target, K = run.target, run.config.num_categories
    states = torch.from_numpy(samples)
    n = states.shape[0]
    values: dict = {"num_samples": n, "metric_reference": _reference_description(run)}

    def metrics() -> None:
        if n < 2:
            log(f"[ecd2g] only {n} walkers finished: no sample metrics (more --num-samples or --max-moves)")
            return
        reference, floor = target.reference_and_floor(n, _floor_generator(run))
        classifier, cross_fitted = target.classifier(), target.cross_fitted_labels()
        result = sample_metrics(states, reference, floor, K, target.mixture, classifier, cross_fitted)
        for name, value in result["samples"].items():
            values[name] = value
            values[f"{name}_floor"] = result["floor"][name]
        values.update(reference_size=int(reference.shape[0]), floor_size=int(floor.shape[0]))
        if target.mixture is not None:
            values["reference_loglik"] = float(target.mixture.log_likelihood(reference).mean())
        if classifier is not None:
            values["classifier_accuracy"] = classifier.accuracy(
                target.held_out_states, target.held_out_labels
            )
            values["crossfit_accuracy"] = cross_fitted.accuracy
            copies = memorisation(states, target.train_states, target.held_out_states)
            values.update({f"memorisation_{k}": v for k, v in copies.items()})
            margins = class_margin(states, target.train_states, target.train_labels, target.held_out_states)
            values.update({f"class_margin_{k}": v for k, v in margins.items()})

    steps = [("metrics", metrics), ("figures", lambda: figures_stage(run, None, samples, log=log))]
    bar = tqdm(steps, desc="evaluate", disable=not progress, dynamic_ncols=True)
    for label, step in bar:
        bar.set_postfix_str(label)
        step()
    merged = run.write_metrics(values)
    if "marginal_tv" in values:
        summary = (
            f"[ecd2g] {n} samples: marginal TV {values['marginal_tv']:.4f} (perfect-sampler floor "
            f"{values['marginal_tv_floor']:.4f}), correlation error {values['correlation_error']:.4f} "
            f"(floor {values['correlation_error_floor']:.4f})"
        )
        if "loglik_gap" in values:
            summary += (
                f", loglik gap {values['loglik_gap']:.2f} nats (floor {values['loglik_gap_floor']:.2f})"
            )
        for key, name in (("label_tv", "label TV"), ("label_tv_crossfit", "label TV against all images")):
            if key in values:
                summary += f", {name} {values[key]:.4f} (floor {values[f'{key}_floor']:.4f})"
        log(summary)
    return merged


def _reference_description(run: Run) -> str:
    if run.target.mixture is not None:
        return "exact draws of the mixture; floor: as many other exact draws as samples"
    return "held-out images; floor: as many training images as samples (at most all of them)"


def figures_stage(
    run: Run,
    field: Field | None,
    samples: np.ndarray,
    exact_pmf: np.ndarray | None = None,
    *,
    log: Log = stderr_log,
) -> list[Path]:
    """Write ``samples.png`` and ``marginals.png`` (module docstring); returns their paths (none
    without matplotlib). ``field`` and ``exact_pmf`` are unused (the grid stage's signature)."""
    del field, exact_pmf
    plots = load_plots(log)
    if plots is None:
        return []
    config, out, target = run.config, run.out, run.target
    title = f"{config.experiment}: {config.train.model} network, {config.mode} walk"
    real = target.real_examples(FIGURE_IMAGES, _floor_generator(run)).numpy()
    real_label = "exact draws" if target.mixture is not None else "training images"
    written = [
        plots.plot_sample_grid(
            out / "samples.png",
            {"generated": samples, real_label: real},
            config.num_categories,
            title=title,
        )
    ]
    if len(samples):
        data_means, data_label = target.data_means()
        written.append(
            plots.plot_marginals(
                out / "marginals.png",
                data_means.numpy(),
                samples.astype(np.float64).mean(0),
                data_label=data_label,
                ylabel=f"generated ({len(samples)} samples)",
                title=title,
            )
        )
    else:
        run.folder.remove(["marginals.png"])
        log("[ecd2g] no finished walkers: marginals.png not drawn")
    return written
