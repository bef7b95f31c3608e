"""Training: one optimiser step, and the paper's 2D training run.

Groups:

* **train-step**: one :meth:`ecd2g_fast.training.Trainer.step`, both models, batch
  ``Limits.train_batches`` = {256, 65536}, ``num_queries = batch_size``, uniform queries, on the
  2D experiment's circuit (K = 64, D = 2, M = 4096, L = 10) with uniform source samples and a
  2D Gaussian target (100k samples each). A step is everything training does per step: drawing
  the data and queries, the target pass, normalisation, forward/backward of the MLP (bf16
  autocast on CUDA), the SGD update and the weight average. The target pass ``"auto"`` against
  ``"reference"`` (the plain-torch pairwise pass, run only where ``Q B D`` is within
  ``Limits.max_reference_target_work``). Check: the first step's loss is finite and, from the
  same seed, equal to the reference's (rtol 1e-3). ``"compiled"``: the ``"auto"`` step with its
  loss (the target pass with ``normalize=True``, the network's forward and the squared error;
  backward through the compiled graph) under ``torch.compile(fullgraph=True, dynamic=False)``,
  compiled while preparing; check: its first-step loss equals the eager ``"auto"`` one (rtol 1e-5).
* **train-2d** (paper §5.2, Appendix B): moons -> swiss roll on the ``K x K`` grid of the
  package's preset ``moons-to-swissroll-2d`` (``K = 32``, ``L = 10``; the paper's ``K`` and ``L``
  were lost from its text), the paper's network (:class:`~ecd2g_fast.CurrentNet`, 128-128-128)
  and budget: ``Limits.train_steps`` (5000) SGD steps of batch 256, uniform queries;
  :func:`ecd2g_fast.training.train` with ``targets_backend="auto"`` against ``"reference"``, the
  whole call timed. The data are ``2**20`` samples of each distribution drawn beforehand and
  held on the device. Paper: 2 minutes on one A100. Check: 20 steps with ``"auto"`` and with
  ``"reference"`` from the same seed give the same losses (rtol 1e-3). The group also profiles
  30 steps with torch.profiler (the report's "where a step's time goes").

Run: ``python -m benchmarks.bench_training [--device cuda] [--cases train-step]`` (a table, rows
appended to ``benchmarks/results/training.jsonl``), ``python -m benchmarks.report --cases
train-step train-2d``, or under pytest-benchmark with ``make bench`` (``ECD2G_BENCH_TRAIN_STEPS``
sets the steps of train-2d).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

import ecd2g_fast as E
from ecd2g_fast import backends
from ecd2g_fast.experiments import EXPERIMENTS
from ecd2g_fast.experiments.datasets import moons, swiss_roll
from ecd2g_fast.training import MODELS, TrainConfig, Trainer, TrainResult, train

from . import cases, harness, runner
from .cases import Attachment, Case, Limits, Prepared

# train-step workload
K, D, L = 64, 2, 10
BACKENDS = ("reference", "auto")
#: The train-step rows: the target-pass backends, then the "auto" step with a compiled loss.
STEP_VARIANTS = (*BACKENDS, "compiled")
# train-2d workload
PRESET = EXPERIMENTS["moons-to-swissroll-2d"]
K2, L2 = PRESET.num_categories, PRESET.num_layers
TRAIN_STEPS, TRAIN_BATCH = Limits.train_steps, 256
#: The paper's time for training the 2D experiment (one A100).
PAPER_TRAIN_SECONDS = 120.0
DATA_SAMPLES = 2**20
#: How the FLOPs of the rows are counted (the reports print it).
NOTES = {
    "flops": "MLP FLOPs, 2 per multiply-accumulate of every nn.Linear: training 3x forward (forward + "
    "backward) per query, bf16 tensor-core peak (autocast); CurrentNet sampling the MLP body "
    "(the first layer is shared per walker and state) for every (walker, neighbour) pair, fp32 "
    "non-tensor peak",
}


def _flops_dtype(device: torch.device) -> str:
    return "bf16" if device.type == "cuda" else "fp32"


def _resolved(model: str, device: torch.device) -> str:
    op = "current_targets" if model == "current" else "potential_targets"
    return backends.select(op, "auto", device).name


# ----------------------------------------------------------------------------- one step
def make_trainer(
    model: str, batch: int, device: str = "cpu", targets_backend: str = "auto", seed: int = 0
) -> Trainer:
    """A ready :class:`~ecd2g_fast.training.Trainer` of one train-step case."""
    g = torch.Generator().manual_seed(seed)
    circuit = E.Circuit(K, D, L)
    source = torch.randint(K, (100_000, D), generator=g)
    target = (torch.randn(100_000, D, generator=g) * K / 10 + (K - 1) / 2).round().clamp(0, K - 1).long()
    # the paper's recipe (SGD, scaled coordinates): the networks whose steps the paper timed
    config = TrainConfig.recipe(
        "paper",
        model=model,
        steps=10**9,
        batch_size=batch,
        num_queries=batch,
        seed=seed,
        targets_backend=targets_backend,
    )
    return Trainer(circuit, source, target, config, device=device, progress=False)


def checked_step(trainer: Trainer) -> float:
    """One step, read back: its loss (raises ``NonFiniteLossError`` for nan/inf)."""
    loss = trainer.step()
    trainer.check()
    return float(loss)


def compile_loss(trainer: Trainer) -> Trainer:
    """``trainer`` with its loss under ``torch.compile`` (fullgraph, static shapes; Dynamo's caches
    reset first, so each case compiles its own graph): the rest of the step stays eager."""
    torch._dynamo.reset()
    trainer.loss = torch.compile(trainer.loss.__call__, fullgraph=True, dynamic=False)
    return trainer


@functools.lru_cache(maxsize=3)
def stepped_trainer(model: str, batch: int, device: str, variant: str) -> tuple[Trainer, float]:
    """A :func:`make_trainer` after its first step, and that step's loss (the check's oracle).

    ``variant``: a target-pass backend of :data:`BACKENDS`, or ``"compiled"`` (``"auto"`` with
    :func:`compile_loss`; the first step compiles)."""
    if variant == "compiled":
        trainer = compile_loss(make_trainer(model, batch, device, "auto"))
    else:
        trainer = make_trainer(model, batch, device, variant)
    return trainer, checked_step(trainer)


def _prepare_step(model: str, batch: int, name: str, device: str, reference: bool) -> Prepared:
    trainer, loss = stepped_trainer(model, batch, device, name)
    if name == "reference":
        verdict = "is the reference (first-step loss finite)"
    elif name == "compiled":
        eager = stepped_trainer(model, batch, device, "auto")[1]
        if not math.isclose(loss, eager, rel_tol=1e-5):
            raise AssertionError(
                f"train step {model} B={batch} compiled: first-step loss {loss} != eager {eager}"
            )
        verdict = "first-step loss equal to the eager 'auto' step's (rtol 1e-5)"
    elif reference:
        expected = stepped_trainer(model, batch, device, "reference")[1]
        if not math.isclose(loss, expected, rel_tol=1e-3, abs_tol=1e-6):
            raise AssertionError(
                f"train step {model} B={batch} {name}: first-step loss {loss} != reference {expected}"
            )
        verdict = "first-step loss equal to the reference's (rtol 1e-3)"
    else:
        verdict = "first-step loss finite (reference skipped)"
    dev = torch.device(device)
    return Prepared(
        trainer.step,
        verdict,
        flops=6.0 * cases.mlp_macs(MODELS[model](E.Circuit(K, D, L))) * batch,
        flops_dtype=_flops_dtype(dev),
        resolved={"reference": "reference", "compiled": "torch"}.get(name) or _resolved(model, dev),
    )


def step_cases(device: torch.device, limits: Limits) -> Iterator[Case]:
    """Both target-pass backends and the compiled step for each model and batch size."""
    for model in MODELS:
        for batch in limits.train_batches:
            work = batch * batch * D
            reference_skip = None
            if work > limits.max_reference_target_work:
                reference_skip = (
                    f"pairwise reference target pass is O(Q B D): "
                    f"{work:.1e} > cap {limits.max_reference_target_work:.1e}"
                )
            for name in STEP_VARIANTS:
                yield Case(
                    "train-step",
                    f"train step {model} B={batch}",
                    name,
                    functools.partial(_prepare_step, model, batch, name, str(device), reference_skip is None),
                    reference="reference",
                    unit="steps/s",
                    params={"model": model, "batch": batch, "queries": batch, "K": K, "D": D, "L": L},
                    skip=reference_skip if name == "reference" else None,
                    warmup=1,
                )


# ----------------------------------------------------------------------------- the 2D run
@dataclass
class Paper2D:
    """The 2D experiment on one device.

    Attributes:
        circuit: ``Circuit(32, 2, 10)`` with the preset's resistances.
        source, target: ``(2**20, 2)`` int64 samples of moons and swiss roll on the device.
        p, q: ``(M,)`` float64 exact pmfs of both, on the device.
    """

    circuit: E.Circuit
    source: torch.Tensor
    target: torch.Tensor
    p: torch.Tensor
    q: torch.Tensor

    @property
    def device(self) -> torch.device:
        return self.p.device


@functools.lru_cache(maxsize=2)
def paper_2d_data(device: str = "cpu", seed: int = 0) -> Paper2D:
    """The circuit, training samples and exact pmfs of the 2D experiment (cached per device)."""
    src, tgt = moons(K2), swiss_roll(K2)
    rng = np.random.default_rng(seed)
    source = torch.from_numpy(src.sample(DATA_SAMPLES, rng)).to(device)
    target = torch.from_numpy(tgt.sample(DATA_SAMPLES, rng)).to(device)
    p = torch.from_numpy(src.pmf()).to(device)
    q = torch.from_numpy(tgt.pmf()).to(device)
    return Paper2D(E.Circuit(K2, 2, L2, PRESET.r, PRESET.R), source, target, p, q)


def train_2d(data: Paper2D, steps: int, targets_backend: str = "auto", seed: int = 0) -> TrainResult:
    """The paper's 2D training run (module docstring) with the target pass ``targets_backend``."""
    config = TrainConfig.recipe(
        "paper", steps=steps, batch_size=TRAIN_BATCH, seed=seed, targets_backend=targets_backend
    )
    return train(data.circuit, data.source, data.target, config, device=data.device, progress=False)


@functools.lru_cache(maxsize=2)
def trained_currentnet(device: str, steps: int, seed: int = 0) -> TrainResult:
    """A CurrentNet trained by :func:`train_2d` (``"auto"``), cached per device and steps."""
    return train_2d(paper_2d_data(device), steps, "auto", seed)


@functools.lru_cache(maxsize=4)
def short_run_losses(device: str, targets_backend: str, steps: int = 20) -> torch.Tensor:
    """``(steps,)`` float64 losses of a short :func:`train_2d` run (the check; also a warm-up)."""
    losses = train_2d(paper_2d_data(device), steps, targets_backend).losses
    if not bool(torch.isfinite(losses).all()):
        raise AssertionError(f"train-2d {targets_backend}: non-finite loss; not timed")
    return losses


def _prepare_2d(name: str, steps: int, device: str) -> Prepared:
    data = paper_2d_data(device)
    reference = short_run_losses(device, "reference")
    if name == "reference":
        verdict = "is the reference"
    else:
        losses = short_run_losses(device, name)
        if not torch.allclose(losses, reference, rtol=1e-3, atol=1e-6):
            worst = float(((losses - reference).abs() / reference.abs().clamp_min(1e-6)).max())
            raise AssertionError(
                f"train-2d {name}: losses differ from the reference run (max rel {worst:.2e}); not timed"
            )
        verdict = f"{losses.numel()} steps: losses equal to the reference run's (rtol 1e-3)"
    dev = torch.device(device)
    return Prepared(
        functools.partial(train_2d, data, steps, name),
        verdict,
        flops=6.0 * cases.mlp_macs(E.CurrentNet(data.circuit)) * TRAIN_BATCH * steps,
        flops_dtype=_flops_dtype(dev),
        resolved=_resolved("current", dev) if name == "auto" else "reference",
    )


def _device_time(event) -> float:
    for attr in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(event, attr):
            return float(getattr(event, attr))
    return 0.0


def _is_device_event(event) -> bool:
    """Kernels and copies (events that ran on the GPU), as opposed to host-side operators."""
    return "CUDA" in str(getattr(event, "device_type", ""))


def profile_training(data: Paper2D, steps: int = 30, top: int = 12) -> dict:
    """torch.profiler over a short :func:`train_2d` run: per step, the host operators with the
    largest self CPU time and (CUDA) the kernels with the largest GPU time, and their totals
    (milliseconds per step)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = data.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    train_2d(data, 5)  # warm-up outside the profile
    with profile(activities=activities) as prof:
        _, wall = harness.timed(functools.partial(train_2d, data, steps), data.device)
    events = list(prof.key_averages())
    host = [ev for ev in events if not _is_device_event(ev)]
    device = [ev for ev in events if _is_device_event(ev)]

    def entry(ev) -> dict:
        return {
            "op": ev.key,
            "calls_per_step": ev.count / steps,
            "self_cpu_ms_per_step": ev.self_cpu_time_total / 1e3 / steps,
            "self_device_ms_per_step": _device_time(ev) / 1e3 / steps,
        }

    return {
        "steps": steps,
        "wall_ms_per_step_profiled": wall / steps * 1e3,
        "self_cpu_ms_per_step_total": sum(ev.self_cpu_time_total for ev in host) / 1e3 / steps,
        "device_ms_per_step_total": sum(_device_time(ev) for ev in device) / 1e3 / steps if cuda else None,
        "device_events_per_step": sum(ev.count for ev in device) / steps if cuda else None,
        "top_ops": [
            entry(ev) for ev in sorted(host, key=lambda ev: ev.self_cpu_time_total, reverse=True)[:top]
        ],
        "top_kernels": [entry(ev) for ev in sorted(device, key=_device_time, reverse=True)[:top]]
        if cuda
        else None,
    }


def figure_2d(steps: int) -> str:
    return f"train-2d CurrentNet {steps} steps B={TRAIN_BATCH}"


def train_2d_cases(device: torch.device, limits: Limits) -> Iterator[Case | Attachment]:
    """The 2D run with both target passes, a note when it is shortened, and its profile."""
    steps = limits.train_steps
    for name in BACKENDS:
        yield Case(
            "train-2d",
            figure_2d(steps),
            name,
            functools.partial(_prepare_2d, name, steps, str(device)),
            reference="reference",
            unit="steps/s",
            work=steps,
            params={
                "model": "current",
                "steps": steps,
                "batch": TRAIN_BATCH,
                "queries": "uniform",
                "K": K2,
                "D": 2,
                "L": L2,
                "data": "moons -> swissroll",
            },
            paper_seconds=PAPER_TRAIN_SECONDS if steps == TRAIN_STEPS else None,
            long=True,
        )
    if steps != TRAIN_STEPS:
        why = f"shortened to {steps} steps (quick run); the {TRAIN_STEPS}-step figure is not extrapolated"
        yield Case("train-2d", figure_2d(TRAIN_STEPS), "all", skip=why)
    data = functools.partial(paper_2d_data, str(device))
    yield Attachment(
        "profile", "profiling 30 training steps (torch.profiler)", lambda: profile_training(data())
    )


GROUPS = {"train-step": step_cases, "train-2d": train_2d_cases}

#: pytest-benchmark (``make bench``): every case of GROUPS, parametrized by benchmarks/conftest.py.
test_bench = runner.run_benchmark


if __name__ == "__main__":
    runner.main(GROUPS, __doc__.split("\n\n")[0], "training")
