"""Run an experiment end to end: a configuration is resolved once into a :class:`Run`, then the
stages (train, sample, evaluate, figures) pass their results forward.

Output folder (``Run.out``):

=====================  =====================================================================
``config.json``        the :class:`~ecd2g_fast.experiments.configs.ExperimentConfig` used
``checkpoint.pt``      the trainer's checkpoint (:mod:`ecd2g_fast.training.checkpoint`)
``source_samples.npy`` ``(N, D)`` int64 start states of the walkers
``samples.npy``        ``(N, D)`` int64 generated states
``metrics.json``       timings and metrics (:func:`evaluate_stage`; every stage adds its keys)
``histograms.png``     source / target / generated side by side (paper Figures 5 and 7)
``current_flow.png``   1D: exact vs learned current flow (paper Figure 6)
``exact_output.png``   2D: target next to the exact output law of the learned field, when computed
``loss.png``           the training loss
=====================  =====================================================================

The figures need matplotlib (an optional dependency): without it they are skipped with one line
on the log, and everything else is written.

Seeds: the master seed ``config.train.seed`` is split with
``numpy.random.SeedSequence(seed).spawn(4)`` into the training data stream, the walkers' start
states, the walk (a ``torch.Generator``) and the noise floors; the trainer gets the master seed
itself (initialisation and queries). ``config.sample_seed``, when set, replaces the master seed
for the start states and the walk.
"""

from __future__ import annotations

import json
import time
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
from ..sampling import sample
from ..training import Trainer, TrainResult, load_field
from .configs import ExperimentConfig, resolve_datasets
from .datasets import GridDistribution
from .evaluation import Log, density_projection_info, evaluate_stage, figures_stage, load_plots, stderr_log

__all__ = [
    "CHECKPOINT",
    "Run",
    "evaluate_stage",
    "figures_stage",
    "run",
    "sample_stage",
    "train_stage",
]

CHECKPOINT = "checkpoint.pt"
#: Walkers per call of :func:`ecd2g_fast.sample` (one progress-bar tick each).
SAMPLE_CHUNK = 2**15
#: metrics.json keys written by the training stage (kept when new samples are drawn).
_TRAIN_KEYS = frozenset(
    {"train_seconds", "train_steps", "final_loss", "num_parameters", "device", "model", "threads"}
)


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


@dataclass(frozen=True)
class Run:
    """A configuration resolved once: what every stage works with.

    Attributes:
        config: the configuration, with ``num_categories`` and ``dim`` filled in.
        out: the output folder.
        circuit: the circuit of ``config``.
        source, target: the data sets (samplers and pmfs).
        device: where training and sampling run.
        seeds: the run's seed streams.
    """

    config: ExperimentConfig
    out: Path
    circuit: Circuit
    source: GridDistribution
    target: GridDistribution
    device: torch.device
    seeds: Seeds

    @classmethod
    def resolve(cls, config: ExperimentConfig, out: str | Path) -> Run:
        """Resolve data sets, circuit, device and seeds of ``config``; creates ``out``.

        Raises:
            TypeError, ValueError: a bad configuration (the message names the setting).
            FileNotFoundError: a data file that does not exist.
        """
        if not isinstance(config, ExperimentConfig):
            raise TypeError(f"config must be an ExperimentConfig, got {type(config).__name__}")
        config, source, target = resolve_datasets(config)
        circuit = Circuit(config.num_categories, config.dim, config.num_layers, config.r, config.R)
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        return cls(config, out, circuit, source, target, resolve_device(config.device), Seeds.of(config))

    @property
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT

    def load_field(self) -> Field:
        """The learned field stored in the run's checkpoint, on the run's device.

        Raises:
            FileNotFoundError: no checkpoint.
            ValueError: not a training checkpoint.
        """
        if not self.checkpoint_path.is_file():
            raise FileNotFoundError(
                f"no checkpoint at {str(self.checkpoint_path)!r}: run `ecd2g train` first"
            )
        return load_field(self.checkpoint_path, self.device)

    # -------------------------------------------------------------- metrics.json
    def read_metrics(self) -> dict:
        path = self.out / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def write_metrics(self, values: dict, *, keep: frozenset | None = None) -> dict:
        """Merge ``values`` into ``metrics.json`` (first dropping all keys not in ``keep``, if given)."""
        old = self.read_metrics()
        if keep is not None:
            old = {k: v for k, v in old.items() if k in keep}
        merged = {**old, **values}
        text = json.dumps(merged, indent=2, sort_keys=True, allow_nan=False) + "\n"
        (self.out / "metrics.json").write_text(text)
        return merged


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------- train
def train_stage(run: Run, *, progress: bool = True, log: Log = stderr_log) -> TrainResult:
    """Train the configured model; writes ``config.json``, ``checkpoint.pt``, ``loss.png``.

    Returns:
        :class:`ecd2g_fast.training.TrainResult`.
    """
    config, out = run.config, run.out
    config.save(out / "config.json")
    src_rng, tgt_rng = (np.random.default_rng(s) for s in run.seeds.data.spawn(2))
    log(
        f"[ecd2g] {config.experiment}: {run.circuit}, {run.source.name} -> {run.target.name}, "
        f"model={config.train.model}, device={run.device}"
    )
    # a fresh model: earlier checkpoints and metrics in this folder are stale
    run.checkpoint_path.unlink(missing_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)
    start = time.perf_counter()
    trainer = Trainer(
        run.circuit,
        run.source.sampler(src_rng),
        run.target.sampler(tgt_rng),
        config.train,
        device=run.device,
        checkpoint_path=run.checkpoint_path,
        progress=progress,
    )
    result = trainer.run()
    _synchronize(run.device)
    seconds = time.perf_counter() - start
    losses = result.losses.numpy()
    tail = losses[-max(1, len(losses) // 10) :]
    run.write_metrics(
        {
            "train_seconds": seconds,
            "train_steps": config.train.steps,
            "final_loss": float(tail.mean()),
            "num_parameters": int(sum(p.numel() for p in result.model.parameters())),
            "device": str(run.device),
            "model": config.train.model,
            "threads": torch.get_num_threads(),
        }
    )
    plots = load_plots(log)
    if plots is not None:
        plots.plot_loss(out / "loss.png", losses, title=f"{config.experiment}: {config.train.model} network")
    log(f"[ecd2g] trained {config.train.steps} steps in {seconds:.1f} s, final loss {tail.mean():.4g}")
    return result


# ---------------------------------------------------------------------------- sample
def default_num_samples(target_pmf: np.ndarray) -> int:
    """``max(10 x occupied target cells, 10_000)``: the rule for runs without a preset value."""
    return max(10 * M.occupied_cells(target_pmf), 10_000)


def sample_stage(run: Run, field: Field, *, progress: bool = True, log: Log = stderr_log) -> np.ndarray:
    """Draw ``num_samples`` walkers from the source, walk them; write the ``.npy`` files.

    Args:
        run: the run.
        field: the learned field (:meth:`Run.load_field` for a trained folder).
        progress: progress bar over chunks of :data:`SAMPLE_CHUNK` walkers.
        log: status messages.

    Returns:
        ``(N, D)`` int64 generated states.

    Raises:
        ecd2g_fast.FieldError: the learned field traps a walker (no positive outflow at a vertex).
    """
    config, out, device = run.config, run.out, run.device
    target_pmf = run.target.pmf()
    n = config.num_samples if config.num_samples is not None else default_num_samples(target_pmf)
    occupied = M.occupied_cells(target_pmf)
    if n < 10 * occupied:
        log(
            f"[ecd2g] warning: {n} samples are fewer than 10 per occupied target cell ({occupied} cells "
            f"hold 99% of the mass): the sampled metrics will be dominated by sampling noise"
        )
    x0 = run.source.sample(n, np.random.default_rng(run.seeds.start))
    np.save(out / "source_samples.npy", x0)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(run.seeds.walk.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))
    selected = backends.select("sample", config.backend, device, subject=field).name
    chunks, moves = [], []
    start = time.perf_counter()
    bar = tqdm(
        total=n, desc=f"sample ({config.mode})", unit="walker", disable=not progress, dynamic_ncols=True
    )
    try:
        for lo in range(0, n, SAMPLE_CHUNK):
            start_states = torch.from_numpy(x0[lo : lo + SAMPLE_CHUNK]).to(device)
            states, steps = sample(
                field,
                start_states,
                config.mode,
                backend=config.backend,
                generator=generator,
                return_moves=True,
            )
            chunks.append(states.cpu())
            moves.append(steps.cpu())
            bar.update(start_states.shape[0])
    finally:
        bar.close()
    _synchronize(device)
    seconds = time.perf_counter() - start
    samples = torch.cat(chunks).numpy().astype(np.int64)
    np.save(out / "samples.npy", samples)
    mean_moves = float(torch.cat(moves).double().mean())
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
        },
        keep=_TRAIN_KEYS,
    )
    log(
        f"[ecd2g] sampled {n} walkers ({config.mode}) in {seconds:.2f} s ({n / max(seconds, 1e-9):.0f}/s), "
        f"{mean_moves:.2f} moves each"
    )
    return samples


# ---------------------------------------------------------------------------- all stages
def run(config: ExperimentConfig, out: str | Path, *, progress: bool = True, log: Log = stderr_log) -> dict:
    """Train, sample, evaluate and draw; returns the metrics (also in ``out/metrics.json``).

    Args:
        config: the run (see :class:`~ecd2g_fast.experiments.configs.ExperimentConfig`).
        out: output folder; files from an earlier run there are overwritten.
        progress: tqdm progress bars.
        log: status messages (default: standard error).

    Raises:
        TypeError, ValueError: a bad configuration (the message names the setting).
        ecd2g_fast.FieldError: the learned field traps a walker while sampling.
    """
    wall = time.perf_counter()
    resolved = Run.resolve(config, out)
    result = train_stage(resolved, progress=progress, log=log)
    samples = sample_stage(resolved, result.field, progress=progress, log=log)
    evaluate_stage(resolved, result.field, samples, progress=progress, log=log)
    return resolved.write_metrics({"wall_seconds": time.perf_counter() - wall})
