"""Run an experiment end to end: train, sample, evaluate, draw. One function per stage.

Output folder (``out``):

=====================  =====================================================================
``config.json``        the :class:`~ecd2g_fast.experiments.configs.ExperimentConfig` used
``checkpoint.pt``      the trainer's checkpoint (:func:`ecd2g_fast.training.load_checkpoint`)
``source_samples.npy`` ``(N, D)`` int64 start states of the walkers
``samples.npy``        ``(N, D)`` int64 generated states
``metrics.json``       timings and metrics (:func:`evaluate`; every stage adds its keys)
``histograms.png``     source / target / generated side by side (paper Figures 5 and 7)
``current_flow.png``   1D: exact vs learned current flow (paper Figure 6)
``exact_output.png``   2D: target next to the exact output law of the learned field, when computed
``loss.png``           the training loss
=====================  =====================================================================

Seeds: the master ``seed`` is split with ``numpy.random.SeedSequence(seed).spawn(4)`` into the
training data stream, the walkers' start states, the walk (a ``torch.Generator``) and the noise
floors; ``train`` gets ``seed`` itself (initialisation and queries).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import metrics as M
from .._validation import MAX_DENSE_CURRENT_ENTRIES
from ..circuit import Circuit
from ..fields import ExactField, Field
from ..sampling import FieldError, exact_output_distribution, sample
from .configs import MODELS, MODES, QUERIES, ExperimentConfig, resolve_datasets

__all__ = [
    "CHECKPOINT",
    "evaluate_stage",
    "figures_stage",
    "load_field",
    "resolve_device",
    "run",
    "sample_stage",
    "train_stage",
]

CHECKPOINT = "checkpoint.pt"
#: Walkers per call of :func:`ecd2g_fast.sample` (one progress-bar tick each).
SAMPLE_CHUNK = 2**15


def resolve_device(device: str | None) -> torch.device:
    """``None`` -> ``cuda`` when available, else ``cpu``; otherwise ``torch.device(device)``.

    Raises:
        ValueError: CUDA requested but not available, or an unparsable device string.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as error:
        raise ValueError(
            f"device must be a torch device string such as 'cpu' or 'cuda', got {device!r}"
        ) from error
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


def _seeds(seed: int) -> list[np.random.SeedSequence]:
    return np.random.SeedSequence(seed).spawn(4)


def _check_config(config: ExperimentConfig) -> None:
    for name, choices in (("model", MODELS), ("mode", MODES), ("queries", QUERIES)):
        value = getattr(config, name)
        if value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    for name in ("steps", "batch_size", "num_layers"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if config.num_samples is not None and (not isinstance(config.num_samples, int) or config.num_samples < 1):
        raise ValueError(f"num_samples must be an int >= 1, got {config.num_samples!r}")
    if isinstance(config.seed, bool) or not isinstance(config.seed, int) or config.seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {config.seed!r}")


def _read_metrics(out: Path) -> dict:
    path = out / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_metrics(out: Path, values: dict) -> dict:
    merged = {**_read_metrics(out), **values}
    (out / "metrics.json").write_text(json.dumps(merged, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return merged


#: metrics.json keys written by the training stage (kept when new samples are drawn).
_TRAIN_KEYS = frozenset(
    {"train_seconds", "train_steps", "final_loss", "num_parameters", "device", "model", "threads"}
)


def _drop_metrics(out: Path, keep: frozenset) -> None:
    kept = {k: v for k, v in _read_metrics(out).items() if k in keep}
    (out / "metrics.json").write_text(json.dumps(kept, indent=2, sort_keys=True, allow_nan=False) + "\n")


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _default_log(message: str) -> None:
    print(message, file=sys.stderr)


# ---------------------------------------------------------------------------- train
def train_stage(
    config: ExperimentConfig,
    out: str | Path,
    *,
    progress: bool = True,
    log: Callable[[str], None] = _default_log,
):
    """Train the configured model and write ``config.json``, ``checkpoint.pt``, ``loss.png``.

    Args:
        config: the run; ``num_categories``/``dim`` are filled in when None.
        out: output folder (created).
        progress: show the trainer's progress bar.
        log: where one-line status messages go.

    Returns:
        :class:`ecd2g_fast.training.TrainResult`.
    """
    from ..training import train

    _check_config(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    source, target = resolve_datasets(config)
    device = resolve_device(config.device)
    circuit = Circuit(config.num_categories, config.dim, config.num_layers, config.r, config.R)
    config.save(out / "config.json")
    data_seed = _seeds(config.seed)[0]
    src_rng, tgt_rng = (np.random.default_rng(s) for s in data_seed.spawn(2))
    kwargs = {} if config.lr is None else {"lr": config.lr}
    log(
        f"[ecd2g] {config.experiment}: {circuit}, {source.name} -> {target.name}, model={config.model}, device={device}"
    )
    checkpoint = out / CHECKPOINT
    # a fresh model: earlier checkpoints and metrics in this folder are stale (the trainer's
    # resume is not what `ecd2g train` means)
    checkpoint.unlink(missing_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)
    start = time.perf_counter()
    result = train(
        circuit,
        source.sampler(src_rng),
        target.sampler(tgt_rng),
        model=config.model,
        steps=config.steps,
        batch_size=config.batch_size,
        num_queries=config.num_queries,
        queries=config.queries,
        device=device,
        seed=config.seed,
        checkpoint_path=checkpoint,
        checkpoint_every=max(config.steps, 1),
        progress=progress,
        **kwargs,
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    losses = result.losses.numpy()
    tail = losses[-max(1, len(losses) // 10) :]
    _write_metrics(
        out,
        {
            "train_seconds": seconds,
            "train_steps": config.steps,
            "final_loss": float(tail.mean()),
            "num_parameters": int(sum(p.numel() for p in result.model.parameters())),
            "device": str(device),
            "model": config.model,
            "threads": torch.get_num_threads(),
        },
    )
    from .plots import plot_loss

    plot_loss(out / "loss.png", losses, title=f"{config.experiment}: {config.model} network")
    log(f"[ecd2g] trained {config.steps} steps in {seconds:.1f} s, final loss {tail.mean():.4g}")
    return result


def load_field(out: str | Path, device: str | torch.device | None = None) -> Field:
    """The learned field stored in ``out/checkpoint.pt``, on ``device``.

    The field of the model :func:`ecd2g_fast.training.train` returned: the exponential moving
    average of the weights when the checkpoint holds one (``ema_model``), else the last iterate.

    Raises:
        FileNotFoundError: no checkpoint.
        ValueError: not a checkpoint of :func:`ecd2g_fast.training.train`.
    """
    from ..models import CurrentNet, PotentialNet
    from ..training import load_checkpoint

    path = Path(out) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}: run `ecd2g train` first")
    ckpt = load_checkpoint(path)
    cfg = ckpt["config"]
    circuit = Circuit(**cfg["circuit"])
    cls = CurrentNet if cfg["model"] == "current" else PotentialNet
    net = cls(circuit, **cfg["model_kwargs"])
    # the trainer returns the weight average (EMA) when it kept one, and so does this
    net.load_state_dict(ckpt["ema_model"] if ckpt.get("ema_model") is not None else ckpt["model"])
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    return net.to(dev).eval().field()


def density_projection_info(field: Field) -> dict:
    """What a learned potential field clipped when projecting its densities onto pmfs.

    A :class:`~ecd2g_fast.models.PotentialNetField` samples the exact field of its density
    estimates clipped at 0 and renormalised (see its docstring); this records how much was
    clipped, for ``metrics.json``.

    Returns:
        ``density_projection`` (whether anything was clipped), ``negative_source_mass`` and
        ``negative_target_mass``; empty for fields that are not potential networks.
    """
    from ..models import PotentialNetField

    if not isinstance(field, PotentialNetField):
        return {}
    negative_source, negative_target = field.clipped_mass()
    return {
        "negative_source_mass": negative_source,
        "negative_target_mass": negative_target,
        "density_projection": negative_source > 0 or negative_target > 0,
    }


# ---------------------------------------------------------------------------- sample
def default_num_samples(target_pmf: np.ndarray) -> int:
    """``max(10 x occupied target cells, 10_000)``: the rule for runs without a preset value."""
    return max(10 * M.occupied_cells(target_pmf), 10_000)


def sample_stage(
    config: ExperimentConfig,
    out: str | Path,
    field: Field | None = None,
    *,
    progress: bool = True,
    log: Callable[[str], None] = _default_log,
) -> np.ndarray:
    """Draw ``num_samples`` walkers from the source, walk them; write the ``.npy`` files.

    Args:
        config: the run.
        out: output folder holding ``config.json`` (and ``checkpoint.pt`` if ``field`` is None).
        field: the learned field; None loads it from ``out``.
        progress: progress bar over chunks of :data:`SAMPLE_CHUNK` walkers.
        log: status messages.

    Returns:
        ``(N, D)`` int64 generated states.

    Raises:
        ecd2g_fast.FieldError: the learned field traps a walker (no positive outflow at a vertex).
    """
    _check_config(config)
    out = Path(out)
    source, target = resolve_datasets(config)
    device = resolve_device(config.device)
    if field is None:
        field = load_field(out, device)
    projection = density_projection_info(field)
    n = config.num_samples if config.num_samples is not None else default_num_samples(target.pmf())
    occupied = M.occupied_cells(target.pmf())
    if n < 10 * occupied:
        log(
            f"[ecd2g] warning: {n} samples are fewer than 10 per occupied target cell ({occupied} cells "
            f"hold 99% of the mass): the sampled metrics will be dominated by sampling noise"
        )
    _, start_seed, walk_seed, _ = _seeds(config.seed)
    x0 = source.sample(n, np.random.default_rng(start_seed))
    np.save(out / "source_samples.npy", x0)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(walk_seed.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))
    selected = _backend_that_runs(field, config.backend, device)
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
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    samples = torch.cat(chunks).numpy().astype(np.int64)
    np.save(out / "samples.npy", samples)
    _drop_metrics(out, keep=_TRAIN_KEYS)  # earlier evaluations describe other samples
    mean_moves = float(torch.cat(moves).double().mean())
    _write_metrics(
        out,
        {
            "num_samples": n,
            "sample_seconds": seconds,
            "samples_per_second": n / seconds if seconds > 0 else None,
            "mean_moves": mean_moves,
            "mode": config.mode,
            "backend": config.backend,
            "backend_selected": selected,
            "device": str(device),
            **projection,
        },
    )
    log(
        f"[ecd2g] sampled {n} walkers ({config.mode}) in {seconds:.2f} s ({n / max(seconds, 1e-9):.0f}/s), "
        f"{mean_moves:.2f} moves each"
    )
    return samples


def _backend_that_runs(field: Field, backend: str, device: torch.device) -> str:
    """The sampler backend that ``sample(field, ..., backend=backend)`` uses (for metrics.json)."""
    from .. import backends

    return backends.select("sample", backend, device, subject=field).name


# ---------------------------------------------------------------------------- evaluate
def exact_feasible(config: ExperimentConfig) -> bool:
    """Whether ``tv_exact`` is computed: ``M <= exact_max_states`` and ``2 L M^2 <= 2**28``."""
    m = config.num_categories**config.dim
    return m <= config.exact_max_states and 2 * config.num_layers * m * m <= MAX_DENSE_CURRENT_ENTRIES


def evaluate_stage(
    config: ExperimentConfig,
    out: str | Path,
    field: Field | None = None,
    samples: np.ndarray | None = None,
    *,
    progress: bool = True,
    log: Callable[[str], None] = _default_log,
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
        config: the run.
        out: output folder.
        field: the learned field (None: loaded from ``out`` when needed).
        samples: ``(N, D)`` generated states (None: ``out/samples.npy``).
        progress: progress bar over the evaluation steps.
        log: status messages.

    Returns:
        The full ``metrics.json`` content.
    """
    out = Path(out)
    source, target = resolve_datasets(config)
    device = resolve_device(config.device)
    if samples is None:
        path = out / "samples.npy"
        if not path.is_file():
            raise FileNotFoundError(f"no samples at {str(path)!r}: run `ecd2g sample` first")
        samples = np.load(path)
    K = config.num_categories
    p, q = source.pmf(), target.pmf()
    counts = M.histogram(samples, K)
    n = int(counts.sum())
    floor_rng = np.random.default_rng(_seeds(config.seed)[3])
    occupied = M.occupied_cells(q)
    do_exact = exact_feasible(config)
    steps = ["metrics", "noise floors"] + (["exact output law"] if do_exact else []) + ["figures"]
    bar = tqdm(steps, desc="evaluate", disable=not progress, dynamic_ncols=True)
    values: dict = {}
    exact_pmf = None
    for step in bar:
        bar.set_postfix_str(step)
        if step == "metrics":
            values.update(
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
                target_pmf="exact" if target.pmf_is_exact else "empirical law of the target file",
            )
        elif step == "noise floors":
            values.update(
                tv_floor_vs_pmf=M.tv_floor(q, n, floor_rng),
                tv_floor=M.tv_floor_two_sample(q, n, floor_rng),
                kl_floor=M.smoothed_kl_floor(q, n, floor_rng),
                js_floor=M.js_floor(q, n, floor_rng),
            )
        elif step == "exact output law":
            if field is None:
                field = load_field(out, device)
            projection = density_projection_info(field)
            values.update(projection)
            start = time.perf_counter()
            try:
                law = exact_output_distribution(field, torch.from_numpy(p).to(field.device), config.mode)
            except (FieldError, RuntimeError) as error:
                values.update(tv_exact=None, js_exact=None, kl_exact=None, exact_error=str(error))
                log(f"[ecd2g] exact output law not available: {error}")
            else:
                exact_pmf = law.pmf.cpu().numpy()
                values.update(
                    tv_exact=M.total_variation(exact_pmf, q),
                    js_exact=M.js_divergence(q, exact_pmf),
                    kl_exact=_finite_or_none(M.kl_divergence(q, exact_pmf)),
                    exact_expected_moves=law.expected_moves,
                    exact_error=None,
                )
            values["exact_seconds"] = time.perf_counter() - start
        else:
            figures_stage(
                config, out, field, samples=samples, exact_pmf=exact_pmf, source=source, target=target
            )
    merged = _write_metrics(out, values)
    summary = f"[ecd2g] TV {values['tv']:.4f} (perfect-sampler floor {values['tv_floor_vs_pmf']:.4f})"
    if values.get("tv_exact") is not None:
        summary += f", TV exact {values['tv_exact']:.4f}"
    summary += f", KL {values['kl']:.4f} nats (floor {values['kl_floor']:.4f}), JS {values['js']:.4f} bits"
    log(summary)
    return merged


def figures_stage(config, out, field, *, samples, exact_pmf=None, source=None, target=None) -> list[Path]:
    """Write the PNG figures of a run (module docstring); returns their paths."""
    from . import plots

    out = Path(out)
    if source is None or target is None:
        source, target = resolve_datasets(config)
    K, D = config.num_categories, config.dim
    p, q = source.pmf(), target.pmf()
    counts = M.histogram(samples, K)
    title = f"{config.experiment}: {config.model} network, {config.mode} walk, {len(samples)} samples"
    overlay = None
    if D == 1:
        overlay = {"target pmf": q}
        if exact_pmf is not None:
            overlay["exact output law (learned field)"] = exact_pmf
    written = [
        plots.plot_histograms(
            out / "histograms.png",
            K,
            D,
            {"source": p, "target": q, f"generated ({len(samples)} samples)": counts},
            overlay=overlay,
            title=title,
        )
    ]
    if D == 2 and exact_pmf is not None:
        written.append(
            plots.plot_histograms(
                out / "exact_output.png",
                K,
                D,
                {"target": q, "exact output law of the learned field": exact_pmf},
                title=f"{config.experiment}: no sampling noise",
            )
        )
    m = K**D
    if D == 1 and config.num_layers * m * m <= 2**24:
        device = resolve_device(config.device)
        if field is None:
            field = load_field(out, device)
        circuit = field.circuit
        exact_field = ExactField(
            circuit, torch.from_numpy(p).to(field.device), torch.from_numpy(q).to(field.device)
        )
        written.append(
            plots.plot_current_flow(
                out / "current_flow.png",
                plots.layer_currents(exact_field),
                plots.layer_currents(field),
                p,
                title=f"{config.experiment}: current flow, exact vs learned ({config.model} network)",
            )
        )
    return written


# ---------------------------------------------------------------------------- all stages
def run(
    config: ExperimentConfig,
    out: str | Path,
    *,
    progress: bool = True,
    log: Callable[[str], None] = _default_log,
) -> dict:
    """Train, sample, evaluate and draw; returns the metrics (also in ``out/metrics.json``).

    Args:
        config: the run (see :class:`~ecd2g_fast.experiments.configs.ExperimentConfig`).
        out: output folder; files from an earlier run there are overwritten.
        progress: tqdm progress bars.
        log: status messages (default: standard error).

    Raises:
        TypeError, ValueError: a bad configuration (the message names the field).
        ecd2g_fast.FieldError: the learned field traps a walker while sampling.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter()
    result = train_stage(config, out, progress=progress, log=log)
    samples = sample_stage(config, out, result.field, progress=progress, log=log)
    metrics = evaluate_stage(config, out, result.field, samples, progress=progress, log=log)
    metrics = _write_metrics(out, {"wall_seconds": time.perf_counter() - wall})
    config.save(out / "config.json")
    return metrics
