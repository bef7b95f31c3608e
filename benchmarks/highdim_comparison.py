"""ECD2G's Hamming-circuit model next to discrete flow matching (Gat et al. 2024) on two 64-dimensional tasks.

Both methods learn to generate ``D = 64`` coordinates in ``[0, K)`` with the same number of gradient
steps (``--steps``), the same network body (``--width``, ``--depth``) and the same batch, and are
evaluated with the same sample metrics (:func:`ecd2g_fast.experiments.highdim.sample_metrics`) on
the same machine. Tasks (``--tasks``):

* ``bernoulli-mixture-64``: ``K = 2``, a mixture of ten product-Bernoulli distributions
  (:meth:`~ecd2g_fast.experiments.highdim.BernoulliMixture.make`, seed 0; ``--dim`` changes ``D``).
  Training data: fresh exact draws every step, one seeded stream for both methods. Metrics against
  20,000 fresh exact draws; the floor is as many further exact draws as there are samples.
  Metrics: ``loglik_gap`` (nats), ``coverage_tv``, ``marginal_tv``, ``correlation_error``.
* ``digits-64``: scikit-learn's 8 x 8 digits at their 17 grey levels (``K = 17``; ``--binary``:
  thresholded, ``K = 2``), split 75 / 25 (:func:`~ecd2g_fast.experiments.highdim.split`, seed 0).
  Training draws rows of the training split (with replacement); the reference is the held-out
  split; the floor is as many training images (without replacement) as there are samples. Metrics:
  ``marginal_tv``, ``correlation_error``, ``label_tv`` of a
  :class:`~ecd2g_fast.experiments.highdim.DigitClassifier` trained on the training split (its
  held-out accuracy is recorded), ``label_tv_crossfit`` against the out-of-fold labels of all the
  images (:class:`~ecd2g_fast.experiments.highdim.CrossFittedLabels`, simulated floor), and the
  nearest-training-image distances of
  :func:`~ecd2g_fast.experiments.highdim.memorisation` and the class margins of
  :func:`~ecd2g_fast.experiments.highdim.class_margin` (samples vs held-out images).

The methods:

* **ECD2G**: ``E.train(HammingCircuit(K, D, --layers), noise, data)`` with the Hamming model's
  default recipe (``TrainConfig.recipe("default", model="hamming")``: Adam, warm-up and cosine
  schedule, clipped gradients, kernel queries with the denoising ratio term, smooth layer
  features, EMA 0.999; ``--batch-size`` data samples and queries per step;
  :class:`~ecd2g_fast.hamming.HammingNet` of ``--width`` / ``--depth``; the
  recipe's learning rate unless ``--ecd2g-lr`` sweeps others), uniform noise as the source. Then
  ``--num-samples`` bidirectional walks of the EMA field from uniform noise, capped at
  ``--max-moves`` moves; walkers still moving then are *unfinished*: their fraction is reported
  and only finished walkers are scored (``field.bridged`` counts bridged dead ends).
* **DFM** through the ``flow_matching`` package, set up as in :mod:`benchmarks.dfm_comparison`
  (which follows the package's 2D discrete example): :class:`~flow_matching.path.MixtureDiscreteProbPath`
  with ``PolynomialConvexScheduler(n=2)``, the ``MixturePathGeneralizedKL`` loss, ``t ~ U[0, 1 - 1e-3)``,
  Adam with a cosine schedule, the learning rate swept over ``--dfm-lr`` (1e-3, 3e-3), ``--batch-size``
  independent ``(x_0, x_1)`` pairs per step, no EMA; sampling by :func:`benchmarks.dfm_comparison.sample_dfm`
  (``MixtureDiscreteEulerSolver``, float64 categorical draws) at ``--nfe`` solver steps (16, 64, 256)
  on ``[0, 1 - 1e-3]``. Sources (``--dfm-source``): ``mask`` (``x_0`` = a ``(K+1)``-th mask token
  everywhere) and ``uniform`` (``x_0`` uniform in ``[0, K)``, the source ECD2G uses; the walks and
  the uniform-source DFM runs start from the same noise). Samples still holding a mask token are
  reported (``masked_fraction``) and not scored. The network (:class:`DFMHammingNet`) has
  :class:`~ecd2g_fast.hamming.HammingNet`'s body: a sum of per-coordinate token embeddings plus a
  time embedding (sinusoidal features of ``t`` -> Linear) in place of the layer embedding, the
  same residual blocks (:class:`~ecd2g_fast.hamming.model.ResidualBlock`) and final LayerNorm,
  and a head of ``D V`` logits (``V = K``, or ``K + 1`` with the mask token) in place of
  HammingNet's one output: the head makes DFM's network larger (both parameter counts are
  recorded; ``--dfm-width`` can shrink it).

Cost reported for every row: training wall time; sampling wall time and finished (scored)
samples per second; network calls per sample and rows per sample, both *counted* by a hook on the
network body during sampling: ECD2G evaluates the body once per move per walker, on the walker
and its ``2N`` neighbours (``N = 1 + D (K-1)``), i.e. ``2N + 1`` rows per call, or, with the ratio
head (:data:`~ecd2g_fast.hamming.model.HEADS`), on the walker alone (one row per call; its heads
give every outlet); one more call than moves: the walker's last evaluation leaves through the
sink. DFM evaluates once per solver step on one row per sample. Calls and rows are averaged over all walkers, finished or not. Forward
FLOPs per sample are estimated as ``2 x (weights of the Linear layers evaluated per row) x rows``
(embeddings are table look-ups and sums and are not counted; ECD2G's neighbour inputs cost
``O(width)`` each on top).

Each finished unit (one ECD2G lr, or one DFM source and lr with all its solver steps, on one task)
is appended to ``benchmarks/results/highdim_comparison_runs.jsonl`` under a key of its settings; a
rerun of the same command skips the units already there (``--fresh`` starts over). An ECD2G run
whose training loss becomes non-finite (:class:`~ecd2g_fast.training.NonFiniteLossError`) is
reported as a row with its error and not journaled, so a rerun tries it again.

Usage::

    python -m benchmarks.highdim_comparison                 # the full configuration (long on a CPU)
    python -m benchmarks.highdim_comparison --quick                       # smoke run (~1 minute on a CPU)
    python -m benchmarks.highdim_comparison --tasks digits --binary --out-stem highdim_comparison_binary

Writes ``benchmarks/results/highdim_comparison.md`` and ``.json`` (``--out-stem``), a table per task,
with the run's metadata (:func:`benchmarks.harness.run_metadata`). Times are single runs
(:func:`benchmarks.harness.timed`) on a shared machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

import ecd2g_fast as E
from ecd2g_fast.experiments.highdim import (
    BernoulliMixture,
    DigitClassifier,
    HighDimTarget,
    class_margin,
    memorisation,
    sample_metrics,
)
from ecd2g_fast.hamming.model import ResidualBlock
from ecd2g_fast.training import NonFiniteLossError

from . import harness
from .dfm_comparison import fit_dfm, sample_dfm

TASKS = ("bernoulli-mixture", "digits")
DFM_SOURCES = ("mask", "uniform")
#: Exact draws of the mixture the samples are compared with.
MIXTURE_REFERENCE_SIZE = 20_000
#: Metrics shown in the tables, per task kind (all of sample_metrics' output is in the JSON).
TABLE_METRICS = {
    "bernoulli-mixture": ("loglik_gap", "coverage_tv", "marginal_tv", "correlation_error"),
    "digits": ("marginal_tv", "correlation_error", "label_tv", "label_tv_crossfit"),
}


# ---------------------------------------------------------------------------- tasks
@dataclass
class Task:
    """One generation task: the data stream both methods train on and the evaluation of samples.

    Attributes:
        name: e.g. ``"bernoulli-mixture-64"``, ``"digits-64"``.
        kind: ``"bernoulli-mixture"`` or ``"digits"`` (:data:`TABLE_METRICS`).
        num_categories: ``K``.
        dim: ``D``.
        data_stream: ``seed -> draw``, ``draw(n)`` giving ``(n, D)`` int64 CPU training states;
            the same seed gives the same stream (both methods use one).
        evaluate: ``(n, D)`` int64 samples -> the metrics dict (``{"samples": ..., "floor": ...}``
            and, for digits, ``"memorisation"``).
        info: JSON-friendly facts about the task (sizes, the classifier's held-out accuracy).
    """

    name: str
    kind: str
    num_categories: int
    dim: int
    data_stream: Callable[[int], Callable[[int], torch.Tensor]]
    evaluate: Callable[[torch.Tensor], dict]
    info: dict = field(default_factory=dict)


def mixture_task(dim: int, seed: int) -> Task:
    """``bernoulli-mixture-<dim>``: exact draws for training, 20,000 exact draws as reference."""
    mixture = BernoulliMixture.make(dim, 10, seed=0)
    reference = mixture.sample(MIXTURE_REFERENCE_SIZE, torch.Generator().manual_seed(seed + 1000))[0]

    def data_stream(stream_seed: int) -> Callable[[int], torch.Tensor]:
        generator = torch.Generator().manual_seed(stream_seed)
        return lambda n: mixture.sample(n, generator)[0]

    def evaluate(samples: torch.Tensor) -> dict:
        # the same floor draws for every row with the same number of samples
        floor = mixture.sample(samples.shape[0], torch.Generator().manual_seed(seed + 2000))[0]
        return sample_metrics(samples.cpu(), reference, floor, 2, mixture=mixture)

    info = {"components": 10, "reference_draws": MIXTURE_REFERENCE_SIZE, "floor": "fresh exact draws"}
    return Task(f"bernoulli-mixture-{dim}", "bernoulli-mixture", 2, dim, data_stream, evaluate, info)


def digits_task(binary: bool, seed: int) -> Task:
    """``digits-64`` (17 grey levels) or ``digits-64-binary``: training split for training,
    held-out split as reference, training images as floor, a classifier for ``label_tv`` and
    cross-fitted ones for ``label_tv_crossfit``."""
    target = HighDimTarget.make("digits-binary" if binary else "digits", 64)
    K, train_states, held_states = target.num_categories, target.train_states, target.held_out_states
    classifier = DigitClassifier(train_states, target.train_labels, K, seed=seed)
    cross_fitted = target.cross_fitted_labels()

    def data_stream(stream_seed: int) -> Callable[[int], torch.Tensor]:
        generator = torch.Generator().manual_seed(stream_seed)
        return lambda n: train_states[torch.randint(train_states.shape[0], (n,), generator=generator)]

    def evaluate(samples: torch.Tensor) -> dict:
        n = samples.shape[0]
        generator = torch.Generator().manual_seed(seed + 2000)
        if n <= train_states.shape[0]:
            floor = train_states[torch.randperm(train_states.shape[0], generator=generator)[:n]]
        else:  # more samples than training images: the floor repeats some
            floor = train_states[torch.randint(train_states.shape[0], (n,), generator=generator)]
        samples = samples.cpu()
        out = sample_metrics(samples, held_states, floor, K, classifier=classifier, cross_fitted=cross_fitted)
        out["memorisation"] = memorisation(samples, train_states, held_states)
        out["class_margin"] = class_margin(samples, train_states, target.train_labels, held_states)
        return out

    info = {
        "train_images": int(train_states.shape[0]),
        "held_out_images": int(held_states.shape[0]),
        "classifier_held_out_accuracy": classifier.accuracy(held_states, target.held_out_labels),
        "crossfit_accuracy": cross_fitted.accuracy,
        "floor": "training images, as many as samples",
    }
    name = "digits-64-binary" if binary else "digits-64"
    return Task(name, "digits", K, target.dim, data_stream, evaluate, info)


# ---------------------------------------------------------------------------- networks and counting
def linear_weights(module: nn.Module) -> int:
    """Number of weights of the ``nn.Linear`` layers in ``module`` (the matmul work per row)."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def sinusoidal_features(t: torch.Tensor, frequencies: torch.Tensor) -> torch.Tensor:
    """``(B, 2F)`` float32 ``[sin, cos]`` of ``1000 t`` at ``F`` frequencies (as :class:`benchmarks.dfm_comparison.DFMNet`)."""
    angles = 1000.0 * t.float().reshape(-1, 1) * frequencies
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class DFMHammingNet(nn.Module):
    """The DFM posterior network with :class:`~ecd2g_fast.hamming.HammingNet`'s body.

    ``x_t`` ``(B, D)`` int64 tokens in ``[0, V)`` and ``t`` ``(B,)`` float -> ``(B, D, V)`` float32
    logits of ``x_1``. Input: ``sum_d E[d, x_d]`` (one ``width``-vector per coordinate and token,
    initialised like HammingNet's, entries of size ``1/sqrt(D)``) plus ``Linear(time_features ->
    width)`` of sinusoidal features of ``t``; then ``depth`` residual blocks (LayerNorm, Linear,
    SiLU, Linear, expansion 2), LayerNorm, ``Linear(width -> D V)``.

    Args:
        vocab: ``V``, tokens per coordinate (``K``, or ``K + 1`` with the mask token).
        dim: ``D``.
        width, depth: as HammingNet's.
        time_features: sinusoidal features of ``t`` (even).

    Raises:
        ValueError: a size below 1, or an odd ``time_features``.
    """

    def __init__(self, vocab: int, dim: int, width: int, depth: int, time_features: int = 64) -> None:
        super().__init__()
        if min(vocab, dim, width, depth) < 1:
            raise ValueError(
                f"sizes must be >= 1, got vocab {vocab}, dim {dim}, width {width}, depth {depth}"
            )
        if time_features < 2 or time_features % 2:
            raise ValueError(f"time_features must be even and >= 2, got {time_features}")
        self.V, self.D = vocab, dim
        self.token_embedding = nn.Parameter(torch.randn(dim * vocab, width) / math.sqrt(dim))
        half = time_features // 2
        self.register_buffer("frequencies", torch.exp(-math.log(10_000.0) * torch.arange(half) / half))
        self.time_embedding = nn.Linear(time_features, width)
        self.blocks = nn.ModuleList(ResidualBlock(width) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, dim * vocab)
        self.register_buffer("offsets", torch.arange(dim) * vocab, persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = nn.functional.embedding_bag(x + self.offsets, self.token_embedding, mode="sum")
        h = h + self.time_embedding(sinusoidal_features(t, self.frequencies))
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h)).reshape(-1, self.D, self.V)


class RowCounter:
    """Counts the rows a module is called on (a forward pre-hook; rows = all leading dims of its
    first input). Use as a context manager; :attr:`rows` and :attr:`calls` after it."""

    def __init__(self, module: nn.Module) -> None:
        self.module, self.rows, self.calls = module, 0, 0

    def _hook(self, module, inputs) -> None:
        self.rows += inputs[0].shape[:-1].numel()
        self.calls += 1

    def __enter__(self) -> RowCounter:
        self.handle = self.module.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def _final_loss(losses: list | torch.Tensor) -> float:
    """Mean of the last tenth of the per-step losses."""
    tail = losses[-max(1, len(losses) // 10) :]
    return float(torch.stack(list(tail)).mean() if isinstance(tail, list) else tail.double().mean())


def _score(task: Task, samples: torch.Tensor, usable: torch.Tensor) -> dict | None:
    """Metrics of ``samples[usable]``, or None when none are usable."""
    return task.evaluate(samples[usable]) if bool(usable.any()) else None


# ---------------------------------------------------------------------------- ECD2G
def _ecd2g_description() -> str:
    """One line on the ECD2G settings: the Hamming model's default recipe, as it is now."""
    c = E.TrainConfig.recipe("default", model="hamming")
    return (
        f"Hamming model, default recipe ({c.optimizer} {c.lr_schedule}, {c.warmup_steps} warm-up steps, "
        f"gradient norm clipped at {c.grad_clip}, {c.queries} queries, ratio weight {c.ratio_weight}, "
        f"model {c.model_kwargs}, EMA {c.ema_decay}), uniform noise source"
    )


def ecd2g_unit(args, key: str, task: Task, lr: float | None, ctx: dict) -> list[dict]:
    """Train the Hamming model on ``task`` and walk ``--num-samples`` walkers; one row."""
    K, D, device = task.num_categories, task.dim, ctx["device"]
    noise_generator = torch.Generator().manual_seed(args.seed + 1)

    def noise(n: int) -> torch.Tensor:
        return torch.randint(0, K, (n, D), generator=noise_generator)

    circuit = E.HammingCircuit(K, D, args.layers)
    overrides = {} if lr is None else {"lr": lr}
    run = functools.partial(
        E.train,
        circuit,
        noise,
        task.data_stream(args.seed),
        steps=args.steps,
        batch_size=args.batch_size,
        num_queries=args.batch_size,
        seed=args.seed,
        # the recipe's model settings (layer encoding, ...) with this comparison's size
        model_kwargs={
            **E.TrainConfig.recipe("default", model="hamming").model_kwargs,
            "width": args.width,
            "depth": args.depth,
        },
        device=device,
        progress=args.progress,
        **overrides,
    )
    start = time.perf_counter()
    try:
        result, train_seconds = harness.timed(run, device)
    except NonFiniteLossError as error:  # a result about this configuration: reported, not journaled
        ctx["log"](f"{task.name} ECD2G: {error}")
        return [
            {
                "key": key,
                "task": task.name,
                "method": "ECD2G",
                "setting": f"bidirectional walk, max {args.max_moves} moves",
                "lr": lr,
                "error": f"{type(error).__name__}: {error}",
                "train_seconds": time.perf_counter() - start,
            }
        ]
    field_ = result.field
    net = field_.net  # the (EMA) network the walk evaluates
    config = result.config
    ctx["log"](f"{task.name} ECD2G lr {config.lr:g}: trained in {train_seconds:.1f} s")
    x0 = ctx["start_states"](task).to(device)
    generator = torch.Generator(device=device).manual_seed(args.seed + 3)
    sample = functools.partial(
        E.sample,
        field_,
        x0,
        "bidirectional",
        generator=generator,
        max_moves=args.max_moves,
        unfinished="keep",
        return_moves=True,
    )
    with torch.no_grad(), RowCounter(net.blocks[0]) as counter:
        (samples, moves), sample_seconds = harness.timed(sample, device)
    finished = moves >= 0
    n, n_finished = x0.shape[0], int(finished.sum())
    rows_per_call, flops_per_row = (
        2 * circuit.num_neighbours + 1,
        2 * linear_weights(net.blocks) + 2 * linear_weights(net.head),
    )
    if getattr(net, "head_kind", "scalar") == "ratios":  # one row per walker: its heads give every outlet
        rows_per_call = 1
        flops_per_row += sum(
            2 * linear_weights(getattr(net, name))
            for name in ("ratio_head", "sink_head")
            if hasattr(net, name)
        )
    rows_per_sample = counter.rows / n
    row = {
        "key": key,
        "task": task.name,
        "method": "ECD2G",
        "setting": f"bidirectional walk, max {args.max_moves} moves",
        "lr": config.lr,
        "num_samples": n,
        "num_scored": n_finished,
        "unfinished_fraction": 1 - n_finished / n,
        "bridged_dead_ends": int(field_.bridged),
        "mean_moves": float(moves[finished].double().mean()) if n_finished else None,
        "metrics": _score(task, samples, finished),
        "train_seconds": train_seconds,
        "final_loss": _final_loss(result.losses),
        "sample_seconds": sample_seconds,
        "samples_per_second": n_finished / sample_seconds,
        "calls_per_sample": rows_per_sample / rows_per_call,
        "rows_per_call": rows_per_call,
        "rows_per_sample": rows_per_sample,
        "flops_per_row": flops_per_row,
        "flops_per_sample": flops_per_row * rows_per_sample,
        "parameters": sum(p.numel() for p in net.parameters()),
        "config": config.to_json(),
    }
    ctx["log"](
        f"  {n_finished}/{n} finished, {row['calls_per_sample']:.1f} calls/sample, {sample_seconds:.1f} s"
    )
    return [row]


# ---------------------------------------------------------------------------- DFM
def dfm_unit(args, key: str, task: Task, source_kind: str, lr: float, ctx: dict) -> list[dict]:
    """Train one DFM network on ``task`` and sample it at every ``--nfe``; one row per NFE."""
    from flow_matching.path import MixtureDiscreteProbPath
    from flow_matching.path.scheduler import PolynomialConvexScheduler

    K, D, device = task.num_categories, task.dim, ctx["device"]
    V = K + 1 if source_kind == "mask" else K
    torch.manual_seed(args.seed)
    net = DFMHammingNet(V, D, args.dfm_width or args.width, args.depth).to(device)
    path = MixtureDiscreteProbPath(scheduler=PolynomialConvexScheduler(n=2.0))
    source_generator = torch.Generator().manual_seed(args.seed + 1)
    if source_kind == "mask":

        def draw_x0(n: int) -> torch.Tensor:
            return torch.full((n, D), K, dtype=torch.int64)
    else:

        def draw_x0(n: int) -> torch.Tensor:
            return torch.randint(0, K, (n, D), generator=source_generator)

    run = functools.partial(
        fit_dfm,
        net,
        path,
        draw_x0,
        task.data_stream(args.seed),
        args.steps,
        args.batch_size,
        lr,
        device,
        args.progress,
        f"{task.name} dfm ({source_kind}, lr {lr:g})",
    )
    losses, train_seconds = harness.timed(run, device)
    net.eval()
    ctx["log"](f"{task.name} DFM {source_kind} lr {lr:g}: trained in {train_seconds:.1f} s")
    if source_kind == "mask":
        x0 = torch.full((args.num_samples, D), K, dtype=torch.int64, device=device)
    else:
        x0 = ctx["start_states"](task).to(device)
    flops_per_row = 2 * (
        linear_weights(net.blocks) + linear_weights(net.head) + linear_weights(net.time_embedding)
    )
    rows = []
    for nfe in args.nfe:
        with RowCounter(net) as counter:
            samples, sample_seconds, _ = sample_dfm(net, path, x0, nfe, device, args.seed + 3)
        usable = (samples < K).all(dim=1)  # no mask token left
        n, n_scored = x0.shape[0], int(usable.sum())
        rows_per_sample = counter.rows / n
        rows.append(
            {
                "key": key,
                "task": task.name,
                "method": f"DFM, {source_kind} source",
                "source": source_kind,
                "setting": f"Euler, {nfe} steps",
                "nfe": nfe,
                "lr": lr,
                "num_samples": n,
                "num_scored": n_scored,
                "masked_fraction": 1 - n_scored / n,
                "metrics": _score(task, samples, usable),
                "train_seconds": train_seconds,
                "final_loss": _final_loss(losses),
                "sample_seconds": sample_seconds,
                "samples_per_second": n_scored / sample_seconds,
                "calls_per_sample": rows_per_sample,
                "rows_per_call": 1,
                "rows_per_sample": rows_per_sample,
                "flops_per_row": flops_per_row,
                "flops_per_sample": flops_per_row * rows_per_sample,
                "parameters": sum(p.numel() for p in net.parameters()),
            }
        )
        ctx["log"](f"  {nfe} steps: {sample_seconds:.2f} s, {n_scored}/{n} scored")
    return rows


# ---------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--dim", type=int, default=64, help="D of the Bernoulli mixture (digits: 64)")
    parser.add_argument(
        "--binary", action="store_true", help="digits thresholded to K = 2 (default 17 levels)"
    )
    parser.add_argument("--steps", type=int, default=3000, help="gradient steps of every method")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1024,
        help="ECD2G: data samples and queries per step; DFM: (x0, x1) pairs per step",
    )
    parser.add_argument("--width", type=int, default=256, help="network width (both methods)")
    parser.add_argument("--depth", type=int, default=3, help="residual blocks (both methods)")
    parser.add_argument("--dfm-width", type=int, default=None, help="DFM width if not --width")
    parser.add_argument("--layers", type=int, default=64, help="ECD2G circuit layers L")
    parser.add_argument(
        "--ecd2g-lr", type=float, nargs="+", default=None, help="ECD2G Adam peak lrs (default: its recipe's)"
    )
    parser.add_argument("--dfm-lr", type=float, nargs="+", default=[1e-3, 3e-3], help="DFM Adam peak lrs")
    parser.add_argument("--dfm-source", nargs="+", default=list(DFM_SOURCES), choices=DFM_SOURCES)
    parser.add_argument("--nfe", type=int, nargs="+", default=[16, 64, 256], help="DFM solver steps")
    parser.add_argument("--num-samples", type=int, default=1000, help="samples (walkers) of every method")
    parser.add_argument("--max-moves", type=int, default=1000, help="ECD2G walk cap (unfinished beyond)")
    parser.add_argument("--methods", nargs="+", default=["ecd2g", "dfm"], choices=["ecd2g", "dfm"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 100 steps, 100 samples, width 64, DFM lr 3e-3, NFE 16 and 64 (explicit flags win)",
    )
    parser.add_argument(
        "--out-stem", default="highdim_comparison", help="results/<stem>.md, .json, _runs.jsonl"
    )
    parser.add_argument("--fresh", action="store_true", help="ignore the finished units of an earlier run")
    parser.add_argument("--quiet", action="store_true")
    given = set()
    for item in argv if argv is not None else sys.argv[1:]:
        if item.startswith("--"):
            given.add(item[2:].split("=")[0].replace("-", "_"))
    args = parser.parse_args(argv)
    if args.quick:
        quick = {"steps": 100, "num_samples": 100, "width": 64, "dfm_lr": [3e-3], "nfe": [16, 64]}
        for name, value in quick.items():
            if name not in given:
                setattr(args, name, value)
    for name in ("dim", "steps", "batch_size", "width", "depth", "layers", "num_samples", "max_moves"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.out_stem or "/" in args.out_stem or "\\" in args.out_stem:
        parser.error(
            f"--out-stem must be a file-name stem (written under benchmarks/results), got {args.out_stem!r}"
        )
    if min(args.nfe) < 1:
        parser.error(f"--nfe values must be >= 1, got {args.nfe}")
    args.progress = not args.quiet and sys.stderr.isatty()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    def log(text: str) -> None:
        if not args.quiet:
            print(text, file=sys.stderr, flush=True)

    tasks = []
    for kind in args.tasks:
        tasks.append(
            mixture_task(args.dim, args.seed)
            if kind == "bernoulli-mixture"
            else digits_task(args.binary, args.seed)
        )

    def start_states(task: Task) -> torch.Tensor:
        """The uniform-noise start states of the walks and of uniform-source DFM (one pool per task)."""
        generator = torch.Generator().manual_seed(args.seed + 4)
        return torch.randint(0, task.num_categories, (args.num_samples, task.dim), generator=generator)

    ctx = {"device": device, "log": log, "start_states": start_states}
    common = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "width": args.width,
        "depth": args.depth,
        "num_samples": args.num_samples,
        "seed": args.seed,
        "device": device.type,
    }

    def units():
        for task in tasks:
            if "ecd2g" in args.methods:
                for lr in args.ecd2g_lr or [None]:
                    settings = {"task": task.name, "method": "ecd2g", **common, "lr": lr}
                    settings.update(layers=args.layers, max_moves=args.max_moves)
                    key = json.dumps(settings, sort_keys=True)
                    yield key, functools.partial(ecd2g_unit, args, key, task, lr, ctx)
            if "dfm" in args.methods:
                for source_kind in args.dfm_source:
                    for lr in args.dfm_lr:
                        settings = {
                            "task": task.name,
                            "method": "dfm",
                            **common,
                            "source": source_kind,
                            "lr": lr,
                        }
                        settings.update(dfm_width=args.dfm_width or args.width, nfe=args.nfe)
                        key = json.dumps(settings, sort_keys=True)
                        yield key, functools.partial(dfm_unit, args, key, task, source_kind, lr, ctx)

    try:
        import flow_matching

        flow_matching_version = getattr(flow_matching, "__version__", "unknown")
    except ImportError:
        if "dfm" in args.methods:
            raise ImportError(
                "the DFM runs need the flow_matching package (pip install flow_matching; CC BY-NC), "
                "or run with --methods ecd2g"
            ) from None
        flow_matching_version = None
    meta = {
        "tasks": {t.name: {"K": t.num_categories, "D": t.dim, **t.info} for t in tasks},
        "settings": {
            **common,
            "layers": args.layers,
            "max_moves": args.max_moves,
            "ecd2g_lr": args.ecd2g_lr,
            "dfm_lr": args.dfm_lr,
            "dfm_sources": args.dfm_source,
            "dfm_width": args.dfm_width or args.width,
            "nfe": args.nfe,
            "quick": args.quick,
        },
        "ecd2g": _ecd2g_description(),
        "dfm": (
            "MixtureDiscreteProbPath, PolynomialConvexScheduler(n=2), MixturePathGeneralizedKL, Adam cosine, "
            "no EMA, t ~ U[0, 1-1e-3); MixtureDiscreteEulerSolver with float64 categorical draws; network: "
            "HammingNet's body (token embeddings summed + sinusoidal time embedding, residual blocks) and a "
            "D V logit head"
        ),
        "flow_matching": flow_matching_version,
        **harness.run_metadata(
            device, None if argv is None else ["-m", "benchmarks.highdim_comparison", *argv]
        ),
    }
    rows = harness.run_units(
        units(), args.out_stem, fresh=args.fresh, meta=meta, render=render_markdown, log=log
    )
    if not args.quiet:
        print(render_markdown(meta, rows))
    return 0


# ---------------------------------------------------------------------------- report
def _metric_cell(row: dict, name: str) -> str:
    metrics = row.get("metrics")
    if not metrics or name not in metrics["samples"]:
        return "n/a"
    return f"{metrics['samples'][name]:.4f} ({metrics['floor'][name]:.4f})"


def render_markdown(meta: dict, rows: list[dict]) -> str:
    """The report: a header with the settings and machine, then one table per task."""
    s = meta["settings"]
    lines = [
        "# ECD2G (Hamming model) vs discrete flow matching at D = 64",
        "",
        (
            f"{s['steps']} gradient steps of batch {s['batch_size']} for every method; width {s['width']}, "
            f"depth {s['depth']} (DFM width {s['dfm_width']}); ECD2G L = {s['layers']}, max {s['max_moves']} "
            f"moves; {s['num_samples']} samples per row; device {meta['device_name']} "
            f"({meta['cpu']['torch_threads']} thread(s)), torch {meta['versions']['torch']}, flow_matching "
            f"{meta['flow_matching']}, commit {(meta['git']['commit'] or 'unknown')[:7]}"
            f"{' (with uncommitted changes)' if meta['git']['dirty'] else ''}, {meta['timestamp']}."
        ),
        f"Command: `{meta['command']}`"
        + ("" if meta.get("complete", True) else " (**incomplete**: still running)"),
        "",
        f"ECD2G: {meta['ecd2g']}. DFM: {meta['dfm']}.",
        "",
        (
            "Metric cells: value on the scored samples (floor: as many exact draws / training images; "
            "label_tv_crossfit: simulated, CrossFittedLabels.floor). "
            "Unscored: unfinished ECD2G walkers or DFM samples holding a mask token. Samples/s counts scored "
            "samples. Calls and rows per sample are counted during sampling (ECD2G: one body call per move "
            "on the walker and its 2N neighbours, 2N+1 rows, or with the ratio head on the walker alone, "
            "1 row; DFM: one row per solver step). GFLOP/sample: "
            "2 x Linear weights x rows (forward)."
        ),
    ]
    for task_name, info in meta["tasks"].items():
        kind = "digits" if task_name.startswith("digits") else "bernoulli-mixture"
        metrics = TABLE_METRICS[kind]
        lines += ["", f"## {task_name} (K = {info['K']}, D = {info['D']})", ""]
        if "classifier_held_out_accuracy" in info:
            lines += [
                f"Classifier held-out accuracy {info['classifier_held_out_accuracy']:.3f}"
                + (
                    f" (cross-fitted, all images: {info['crossfit_accuracy']:.3f}); "
                    if "crossfit_accuracy" in info
                    else "; "
                )
                + f"{info['train_images']} training / {info['held_out_images']} held-out images. "
                "NN distance: mean Hamming distance to the nearest training image, samples (held-out images); "
                "class margin: mean distance to the nearest training image of a second class beyond that, "
                "samples (held-out images).",
                "",
            ]
        headers = ["method", "setting", "lr", "unscored", *metrics]
        if kind == "digits":
            headers += ["NN distance", "class margin"]
        headers += [
            "train s",
            "sample s",
            "samples/s",
            "calls/sample",
            "rows/sample",
            "GFLOP/sample",
            "params",
        ]
        table = []
        for r in (r for r in rows if r["task"] == task_name):
            if "error" in r:
                lr = "recipe" if r["lr"] is None else f"{r['lr']:g}"
                cells = [r["method"], r["setting"], lr, f"not trained: {r['error']}"]
                cells += [""] * (len(headers) - 11) + [f"{r['train_seconds']:.1f}"] + [""] * 6
                table.append(cells)
                continue
            unscored = 1 - r["num_scored"] / r["num_samples"]
            cells = [r["method"], r["setting"], f"{r['lr']:g}", f"{unscored:.1%}"]
            cells += [_metric_cell(r, m) for m in metrics]
            if kind == "digits":
                mem = (r.get("metrics") or {}).get("memorisation")
                cells.append(f"{mem['samples_mean']:.2f} ({mem['held_out_mean']:.2f})" if mem else "n/a")
                margin = (r.get("metrics") or {}).get("class_margin")  # rows before the metric lack it
                cells.append(
                    f"{margin['samples_mean']:.2f} ({margin['held_out_mean']:.2f})" if margin else "n/a"
                )
            cells += [
                f"{r['train_seconds']:.1f}",
                f"{r['sample_seconds']:.2f}",
                harness.format_number(r["samples_per_second"]),
                harness.format_number(r["calls_per_sample"]),
                harness.format_number(r["rows_per_sample"]),
                harness.format_number(r["flops_per_sample"] / 1e9),
                str(r["parameters"]),
            ]
            table.append(cells)
        lines.append(harness.markdown_table(headers, table).rstrip("\n"))
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
