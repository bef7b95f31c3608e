"""Run an experiment end to end: a configuration is resolved once into a :class:`Run`, then the
stages (train, sample, evaluate, figures) pass their results forward.

Output folder (``Run.folder``; :mod:`.folder` for the lock, the atomic writes and the manifest):

=====================  =====================================================================
``config.json``        the :class:`~ecd2g_fast.experiments.configs.ExperimentConfig` and run id
``checkpoint.pt``      the trainer's checkpoint (:mod:`ecd2g_fast.training.checkpoint`)
``source_samples.npy`` ``(N, D)`` int64 start states of the walkers
``samples.npy``        ``(N, D)`` int64 generated states
``metrics.json``       timings and metrics (every stage adds its keys), with the run id
``run.json``           the manifest: run id and SHA-256 of every file above but config.json
``histograms.png``     source / target / generated side by side (paper Figures 5 and 7)
``current_flow.png``   1D: exact vs learned current flow (paper Figure 6)
``exact_output.png``   2D: target next to the exact output law of the learned field, when computed
``samples.png``        high-dimensional runs: generated states as images next to real ones
``marginals.png``      high-dimensional runs: per-coordinate means, generated vs data
``loss.png``           the training loss
=====================  =====================================================================

**Two pipelines.** A run with a grid target (``K**D`` states tabulated: exact pmfs, TV, the exact
output law) learns a :class:`~ecd2g_fast.circuit.Circuit`'s field; a run with a high-dimensional
target (:data:`~ecd2g_fast.experiments.highdim.HIGHDIM_TARGETS`) learns a
:class:`~ecd2g_fast.hamming.HammingCircuit`'s log-field from uniform noise. They share
:class:`Run` and :func:`train_stage`; :func:`pipeline` is the one place that picks the sample,
evaluate and figures stages (:mod:`.evaluation` or :mod:`.highdim_stages`), and
:func:`sample_stage`, :func:`evaluate_stage` and :func:`figures_stage` dispatch through it.

**Training never destroys the previous model.** A training writes ``config.json.partial`` and
checkpoints to ``checkpoint.pt.partial`` (every ``checkpoint_every`` steps); only when it has
finished are they renamed over ``config.json`` and ``checkpoint.pt``, and the previous run's
samples, metrics and figures removed. An interrupted or failed training leaves the previous run
intact beside the partial files, and :func:`train_stage` with ``resume=True`` (``ecd2g train
--resume``) continues it from its last checkpoint, bit-identical to an uninterrupted run.

The figures need matplotlib (an optional dependency): without it they are skipped with one line
on the log, and everything else is written.

Seeds: the master seed ``config.train.seed`` is split with
``numpy.random.SeedSequence(seed).spawn(4)`` into the training data stream, the walkers' start
states, the walk (a ``torch.Generator``) and the noise floors; the trainer gets the master seed
itself (initialisation and queries). ``config.sample_seed``, when set, replaces the master seed
for the start states and the walk.
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import backends
from .. import metrics as M
from ..circuit import Circuit
from ..distributed import resolve_device
from ..fields import Field
from ..hamming import HammingCircuit
from ..sampling import check_no_dead_ends, sample
from ..training import Trainer, TrainResult, load_field
from . import evaluation, highdim_stages
from .configs import ExperimentConfig, resolve_datasets
from .datasets import GridDistribution
from .evaluation import Log, density_projection_info, load_plots, stderr_log
from .folder import (
    CHECKPOINT,
    CONFIG,
    FIGURES,
    PARTIAL,
    SAMPLES,
    SOURCE_SAMPLES,
    TRAIN_METRICS,
    RunFolder,
    RunFolderError,
    atomic_write,
)
from .highdim import HighDimTarget

__all__ = [
    "Pipeline",
    "Run",
    "dead_end_stage",
    "evaluate_stage",
    "figures_stage",
    "grid_sample_stage",
    "pipeline",
    "run",
    "sample_stage",
    "train_stage",
]

#: Walkers per call of :func:`ecd2g_fast.sample` (one progress-bar tick each).
SAMPLE_CHUNK = 2**15


@dataclass(frozen=True)
class Seeds:
    """The independent seed streams of a run (module docstring)."""

    data: np.random.SeedSequence
    start: np.random.SeedSequence
    walk: np.random.SeedSequence
    floor: np.random.SeedSequence

    @classmethod
    def of(cls, config: ExperimentConfig) -> Seeds:
        data, start, walk, floor = np.random.SeedSequence(config.train.seed).spawn(4)
        if config.sample_seed is not None:
            _, start, walk, _ = np.random.SeedSequence(config.sample_seed).spawn(4)
        return cls(data, start, walk, floor)

    def walk_generator(self, device: torch.device) -> torch.Generator:
        """The walk's ``torch.Generator`` on ``device``, seeded from :attr:`walk`."""
        generator = torch.Generator(device=device)
        generator.manual_seed(int(self.walk.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))
        return generator


@dataclass(frozen=True)
class Run:
    """A configuration resolved once: what every stage works with.

    Attributes:
        config: the configuration, with ``num_categories`` and ``dim`` filled in.
        out: the output folder.
        circuit: the circuit of ``config``: a :class:`~ecd2g_fast.hamming.HammingCircuit` for a
            high-dimensional target (:attr:`hamming`), else a :class:`~ecd2g_fast.circuit.Circuit`.
        source, target: the data sets (samplers and pmfs; a high-dimensional target is a
            :class:`~ecd2g_fast.experiments.highdim.HighDimTarget`, without pmf).
        device: where training and sampling run.
        seeds: the run's seed streams.
    """

    config: ExperimentConfig
    folder: RunFolder
    run_id: str
    circuit: Circuit | HammingCircuit
    source: GridDistribution
    target: GridDistribution | HighDimTarget
    device: torch.device
    seeds: Seeds

    @classmethod
    def resolve(cls, config: ExperimentConfig, out: str | Path | RunFolder, run_id: str | None = None) -> Run:
        """Resolve data sets, circuit, device and seeds of ``config``.

        Args:
            config: the configuration.
            out: the output folder.
            run_id: the training run the folder's files belong to; None: a new one.

        Raises:
            TypeError, ValueError: a bad configuration (the message names the setting).
            FileNotFoundError: a data file that does not exist.
        """
        if not isinstance(config, ExperimentConfig):
            raise TypeError(f"config must be an ExperimentConfig, got {type(config).__name__}")
        config, source, target = resolve_datasets(config)
        family = HammingCircuit if isinstance(target, HighDimTarget) else Circuit
        circuit = family(config.num_categories, config.dim, config.num_layers, config.r, config.R)
        folder = out if isinstance(out, RunFolder) else RunFolder(out)
        run_id = uuid.uuid4().hex[:16] if run_id is None else run_id
        return cls(
            config, folder, run_id, circuit, source, target, resolve_device(config.device), Seeds.of(config)
        )

    @classmethod
    def of_folder(cls, out: str | Path | RunFolder, **changes) -> Run:
        """The run a trained folder holds (its ``config.json``), with ``changes`` to the config."""
        folder = out if isinstance(out, RunFolder) else RunFolder(out)
        config, run_id = folder.read_config()
        return cls.resolve(config.replace(**changes), folder, run_id)

    @property
    def out(self) -> Path:
        return self.folder.path

    @property
    def hamming(self) -> bool:
        """Whether this is a high-dimensional run (a Hamming circuit; :func:`pipeline`)."""
        return isinstance(self.circuit, HammingCircuit)

    def load_field(self) -> Field:
        """The learned field of the run's checkpoint (checked against the manifest), on the run's device.

        Raises:
            FileNotFoundError: no checkpoint.
            RunFolderError: a checkpoint of another run, or changed since it was written.
            ValueError: not a valid training checkpoint.
        """
        return load_field(self.folder.check(CHECKPOINT, self.run_id), self.device)

    def write_metrics(self, values: dict, *, keep: Iterable[str] | None = None) -> dict:
        """Merge ``values`` (and the run id) into ``metrics.json`` (:meth:`RunFolder.write_metrics`)."""
        return self.folder.write_metrics({**values, "run_id": self.run_id}, keep=keep)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------- train
def _resume_point(run: Run, log: Log) -> str | None:
    """The run id of an unfinished training of ``run.config`` in the folder, or None."""
    folder = run.folder
    if not (folder / (CHECKPOINT + PARTIAL)).is_file() or not (folder / (CONFIG + PARTIAL)).is_file():
        log(f"[ecd2g] nothing to resume in {str(run.out)!r}: training from the start")
        return None
    config, run_id = folder.read_config(partial=True)
    same = lambda c: c.replace(train=c.train.replace(steps=1), device=None).to_json()  # noqa: E731
    if same(config) != same(run.config):
        raise RunFolderError(
            f"the unfinished training in {str(run.out)!r} has another configuration; "
            "train without --resume to replace it"
        )
    log(f"[ecd2g] resuming run {run_id} from {CHECKPOINT + PARTIAL}")
    return run_id


def train_stage(
    run: Run, *, resume: bool = False, progress: bool = True, log: Log = stderr_log
) -> TrainResult:
    """Train the configured model; writes ``config.json``, ``checkpoint.pt``, ``loss.png``.

    The previous model stays in place until the new one is complete (module docstring).

    Args:
        run: the run; its ``run_id`` becomes the folder's.
        resume: continue the unfinished training of the same configuration in the folder (its
            run id replaces ``run.run_id``), or start afresh if there is none.
        progress: the trainer's progress bar.
        log: status messages.

    Returns:
        :class:`ecd2g_fast.training.TrainResult`.

    Raises:
        RunFolderError: ``resume`` with an unfinished training of another configuration.
        ecd2g_fast.training.NonFiniteLossError: the loss diverged (the partial files are kept).
    """
    if resume and (run_id := _resume_point(run, log)) is not None:
        run = dataclasses.replace(run, run_id=run_id)
    else:
        resume = False
    config, folder = run.config, run.folder
    folder.write_config(config, run.run_id, partial=True)
    src_rng, tgt_rng = (np.random.default_rng(s) for s in run.seeds.data.spawn(2))
    log(
        f"[ecd2g] {config.experiment}: {run.circuit}, {run.source.name} -> {run.target.name}, "
        f"model={config.train.model}, device={run.device}"
    )
    start = time.perf_counter()
    trainer = Trainer(
        run.circuit,
        run.source.sampler(src_rng),
        run.target.sampler(tgt_rng),
        config.train,
        device=run.device,
        checkpoint_path=folder / (CHECKPOINT + PARTIAL),
        progress=progress,
        metadata={"run_id": run.run_id},
    )
    result = trainer.run(resume=resume)
    _synchronize(run.device)
    seconds = time.perf_counter() - start
    losses = result.losses.numpy()
    tail = losses[-max(1, len(losses) // 10) :]
    # commit: the new config, then the new checkpoint; then the old run's outputs go
    os.replace(folder / (CONFIG + PARTIAL), folder / CONFIG)
    os.replace(folder / (CHECKPOINT + PARTIAL), folder / CHECKPOINT)
    stale = [SAMPLES, SOURCE_SAMPLES, *FIGURES]
    folder.record(run.run_id, [CHECKPOINT], drop=stale)
    folder.remove(stale)
    run.write_metrics(
        {
            "train_seconds": seconds,
            "train_steps": config.train.steps,
            "final_loss": float(tail.mean()),
            "num_parameters": int(sum(p.numel() for p in result.model.parameters())),
            "device": str(run.device),
            "model": config.train.model,
            "threads": torch.get_num_threads(),
        },
        keep=(),
    )
    plots = load_plots(log)
    if plots is not None:
        plots.plot_loss(
            folder / "loss.png",
            losses,
            title=f"{config.experiment}: {config.train.model} network",
            ylabel="Bregman log loss" if run.hamming else "normalised MSE",
        )
    log(f"[ecd2g] trained {config.train.steps} steps in {seconds:.1f} s, final loss {tail.mean():.4g}")
    return result


# ---------------------------------------------------------------------------- the stages after training
@dataclass(frozen=True)
class Pipeline:
    """The stages after training of one kind of run (their signatures: :func:`sample_stage`,
    :func:`evaluate_stage`, :func:`figures_stage`)."""

    sample_stage: Callable[..., np.ndarray]
    evaluate_stage: Callable[..., dict]
    figures_stage: Callable[..., list[Path]]


def pipeline(run: Run) -> Pipeline:
    """The stages that serve ``run``: :mod:`.highdim_stages` for a high-dimensional run, else
    :func:`grid_sample_stage` with :mod:`.evaluation` (the one place where the two pipelines part;
    module docstring)."""
    if run.hamming:
        return Pipeline(
            highdim_stages.sample_stage, highdim_stages.evaluate_stage, highdim_stages.figures_stage
        )
    return Pipeline(grid_sample_stage, evaluation.evaluate_stage, evaluation.figures_stage)


def sample_stage(run: Run, field: Field, *, progress: bool = True, log: Log = stderr_log) -> np.ndarray:
    """Draw the run's samples (:func:`grid_sample_stage` or
    :func:`.highdim_stages.sample_stage`, by :func:`pipeline`); writes ``samples.npy``.

    Returns:
        ``(N, D)`` int64 generated states.
    """
    return pipeline(run).sample_stage(run, field, progress=progress, log=log)


def evaluate_stage(
    run: Run,
    field: Field | None = None,
    samples: np.ndarray | None = None,
    *,
    progress: bool = True,
    log: Log = stderr_log,
) -> dict:
    """Metrics and figures of the run's samples (:func:`.evaluation.evaluate_stage` or
    :func:`.highdim_stages.evaluate_stage`, by :func:`pipeline`); returns ``metrics.json``'s content."""
    return pipeline(run).evaluate_stage(run, field, samples, progress=progress, log=log)


def figures_stage(
    run: Run,
    field: Field | None,
    samples: np.ndarray,
    exact_pmf: np.ndarray | None = None,
    *,
    log: Log = stderr_log,
) -> list[Path]:
    """The run's PNG figures (by :func:`pipeline`); returns their paths (none without matplotlib)."""
    return pipeline(run).figures_stage(run, field, samples, exact_pmf, log=log)


# ---------------------------------------------------------------------------- sample (grid runs)
def default_num_samples(target_pmf: np.ndarray) -> int:
    """``max(10 x occupied target cells, 10_000)``: the rule for runs without a preset value."""
    return max(10 * M.occupied_cells(target_pmf), 10_000)


def dead_end_stage(run: Run, field: Field, num_samples: int, *, log: Log = stderr_log) -> dict:
    """Check, before any walk, that no vertex a walker can reach lacks a positive outflow.

    A learned current field (not :attr:`~ecd2g_fast.fields.Field.acyclic`) may have such dead
    ends; a walker that reaches one cannot move (:mod:`ecd2g_fast.sampling.outflow`). The check
    (:func:`~ecd2g_fast.sampling.check_no_dead_ends`, from the support of the source pmf, in the
    configured walk mode) evaluates each reachable vertex once, about the cost of walking ``M``
    walkers, so it runs when ``M <= num_samples`` (it then costs at most as much as the walk
    itself); potential fields need none (every walk ends).

    Args:
        run: the run.
        field: the field about to be sampled.
        num_samples: walkers the sample stage will walk.
        log: status messages.

    Returns:
        ``dead_end_check`` (``"passed"``, or why it was skipped) and ``dead_end_check_seconds``
        (None when skipped), for ``metrics.json``.

    Raises:
        ecd2g_fast.FieldError: reachable dead ends, listed with their layers and states (the
            first few and their number).
    """
    if field.acyclic:
        return {
            "dead_end_check": "skipped: potential field (every walk ends)",
            "dead_end_check_seconds": None,
        }
    M = run.circuit.num_states
    if M > num_samples:
        log(
            f"[ecd2g] dead-end check skipped: it costs about as much as walking M = {M} walkers, more "
            f"than the {num_samples} to sample; a walker may still meet a vertex without outflow"
        )
        return {"dead_end_check": "skipped: M > num_samples", "dead_end_check_seconds": None}
    start = time.perf_counter()
    support = torch.from_numpy(run.source.pmf() > 0).to(field.device)
    found = check_no_dead_ends(field, run.config.mode, support)
    seconds = time.perf_counter() - start
    log(
        f"[ecd2g] dead-end check: all {found.num_reachable} reachable vertices have an outlet "
        f"({run.config.mode} walk, {seconds:.1f} s)"
    )
    return {"dead_end_check": "passed", "dead_end_check_seconds": seconds}


def walk_in_chunks(
    run: Run,
    field: Field,
    x0: np.ndarray,
    generator: torch.Generator,
    chunk: int,
    max_moves: int | None,
    unfinished: str,
    progress: bool,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Walk the ``(n, D)`` start states ``x0`` in calls of ``chunk`` walkers (one progress-bar tick
    each) with the run's mode and backend.

    Returns:
        ``(n, D)`` terminal states and ``(n,)`` move counts (-1: still moving, ``unfinished="keep"``)
        on the CPU, and the wall time in seconds (device work included).
    """
    config, device = run.config, run.device
    chunks, moves = [], []
    start = time.perf_counter()
    bar = tqdm(
        total=len(x0), desc=f"walk ({config.mode})", unit="walker", disable=not progress, dynamic_ncols=True
    )
    try:
        for lo in range(0, len(x0), chunk):
            start_states = torch.from_numpy(x0[lo : lo + chunk]).to(device)
            states, steps = sample(
                field,
                start_states,
                config.mode,
                backend=config.backend,
                generator=generator,
                max_moves=max_moves,
                unfinished=unfinished,
                return_moves=True,
            )
            chunks.append(states.cpu())
            moves.append(steps.cpu())
            bar.update(start_states.shape[0])
    finally:
        bar.close()
    _synchronize(device)
    return torch.cat(chunks), torch.cat(moves), time.perf_counter() - start


def grid_sample_stage(run: Run, field: Field, *, progress: bool = True, log: Log = stderr_log) -> np.ndarray:
    """Draw ``num_samples`` walkers from the source, walk them; write the ``.npy`` files (grid runs).

    A learned current field is first checked for dead ends (:func:`dead_end_stage`), so that a
    walker is never stranded midway.

    Args:
        run: the run.
        field: the learned field (:meth:`Run.load_field` for a trained folder).
        progress: progress bar over chunks of :data:`SAMPLE_CHUNK` walkers.
        log: status messages.

    Returns:
        ``(N, D)`` int64 generated states.

    Raises:
        ecd2g_fast.FieldError: the learned field has a reachable vertex with no positive outflow
            (reported by :func:`dead_end_stage` before any walk; where that check is skipped, by
            the walk when a walker reaches it).
    """
    config, device = run.config, run.device
    target_pmf = run.target.pmf()
    n = config.num_samples if config.num_samples is not None else default_num_samples(target_pmf)
    occupied = M.occupied_cells(target_pmf)
    if n < 10 * occupied:
        log(
            f"[ecd2g] warning: {n} samples are fewer than 10 per occupied target cell ({occupied} cells "
            f"hold 99% of the mass): the sampled metrics will be dominated by sampling noise"
        )
    dead_ends = dead_end_stage(run, field, n, log=log)
    x0 = run.source.sample(n, np.random.default_rng(run.seeds.start))
    generator = run.seeds.walk_generator(device)
    selected = backends.select("sample", config.backend, device, subject=field).name
    states, moves_all, seconds = walk_in_chunks(
        run, field, x0, generator, SAMPLE_CHUNK, config.max_moves, "raise", progress
    )
    samples = states.numpy().astype(np.int64)
    # the files appear after the walk, with the sampling settings that made them: an interrupted
    # sample stage changes nothing
    for name, array in ((SOURCE_SAMPLES, x0), (SAMPLES, samples)):
        atomic_write(run.folder / name, lambda handle, a=array: np.save(handle, a))
    run.folder.record(run.run_id, [SOURCE_SAMPLES, SAMPLES])
    run.folder.write_config(config, run.run_id)
    mean_moves = float(moves_all.double().mean())
    run.write_metrics(  # earlier evaluations describe other samples: only the training keys stay
        {
            "num_samples": n,
            "sample_seconds": seconds,
            "samples_per_second": n / seconds if seconds > 0 else None,
            "mean_moves": mean_moves,
            "mode": config.mode,
            "backend": config.backend,
            "backend_selected": selected,
            "device": str(device),
            **density_projection_info(field),
            **dead_ends,
        },
        keep=TRAIN_METRICS,
    )
    log(
        f"[ecd2g] sampled {n} walkers ({config.mode}) in {seconds:.2f} s ({n / max(seconds, 1e-9):.0f}/s), "
        f"{mean_moves:.2f} moves each"
    )
    return samples


# ---------------------------------------------------------------------------- all stages
def run(
    config: ExperimentConfig,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Log = stderr_log,
) -> dict:
    """Train, sample, evaluate and draw; returns the metrics (also in ``out/metrics.json``).

    Args:
        config: the run (see :class:`~ecd2g_fast.experiments.configs.ExperimentConfig`).
        out: output folder; a previous run there is replaced once the new training has finished.
        resume: continue an unfinished training of the same configuration (:func:`train_stage`).
        progress: tqdm progress bars.
        log: status messages (default: standard error).

    Raises:
        TypeError, ValueError: a bad configuration (the message names the setting).
        FolderBusyError: another process is writing ``out``.
        ecd2g_fast.FieldError: the learned field has a reachable vertex with no positive outflow
            (:func:`dead_end_stage`, before sampling).
    """
    wall = time.perf_counter()
    with RunFolder(out).locked() as folder:
        resolved = Run.resolve(config, folder)
        result = train_stage(resolved, resume=resume, progress=progress, log=log)
        resolved = dataclasses.replace(resolved, run_id=folder.read_config()[1])
        samples = sample_stage(resolved, result.field, progress=progress, log=log)
        evaluate_stage(resolved, result.field, samples, progress=progress, log=log)
        return resolved.write_metrics({"wall_seconds": time.perf_counter() - wall})
