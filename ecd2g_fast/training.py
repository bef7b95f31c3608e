"""Training a learned field (Algorithm 1): :func:`train`.

One step (every process draws the same *global* batch from the same generator):

1. ``x``, ``y``: ``batch_size`` source and target samples, drawn with replacement;
2. ``num_queries`` queries (``l``, ``z``[, ``w``]), uniform (the paper) or around the data;
3. Monte-Carlo targets of eq. (13) from the whole ``(x, y)`` batch
   (:func:`ecd2g_fast.targets.current_targets` / ``potential_targets``, ``backend="auto"``),
   normalised by the model's closed-form scales (:mod:`ecd2g_fast.models`);
4. MSE between the network and the normalised targets, one SGD step.

With tensor sources a step never makes the host wait for the device (no loss read-back, no value
checks of the trainer's own tensors), so on a GPU the CPU queues steps ahead. The losses stay on the device
until a *check point* (every ``_CHECK_EVERY`` steps, before every checkpoint, at the end), where
they are read back at once and a nan/inf raises :class:`NonFiniteLossError`.

With ``torchrun --nproc_per_node=N`` each process computes the targets and the loss of its slice
of the queries only, and DistributedDataParallel sums the slices' gradients: the step is the
single-process step with the same seed, up to floating-point summation order.

**Query distributions.** The MSE minimiser at each query is the exact current (or potential)
whatever distribution the queries come from, as long as it covers every query and is independent
of the batch the targets are counted on. ``"uniform"`` is the paper's: ``l ~ U{0..L-1}`` (``U{0..L}``
for potentials), ``z, w ~ U(S)``. ``"data"`` (THEORY §5) draws each query state from a mixture:
with probability 1/2 a data state, 1/4 a neighbour of a data state (one coordinate moved by +-1,
reflected at the boundary), 1/4 uniform; the data states are a *separate* draw from the source
(half) and target (half) samples, never the batch ``(x, y)`` itself (a query chosen because it
occurs in ``x`` would see ``#{x_i == z} >= 1``: a biased target). For the current model ``w = z``
(the forward edge, which carries most of the current) with probability 1/4, else ``w`` is drawn from
the mixture independently.

**Optimiser.** SGD with momentum, no schedule, and an exponential moving average (EMA) of the
weights (Appendix B: SGD, 5000 steps, batch 256; the paper's lr and weight decay were lost in its
text). Defaults ``lr = 0.01``, ``momentum = 0.9``, ``weight_decay = 0``, ``ema_decay = 0.999``:
the MC targets are very noisy (one batch of 256 samples per step), so the last SGD iterate carries
a noise floor set by the step size; averaging the iterates removes most of it at no cost in
gradient evaluations (on THEORY §4's K=50 task, 5000 steps of batch 256, over 7 seeds/data
streams it cut the CurrentNet's current error from 0.12-0.32 to 0.05-0.08 relative L2 and its
output TV from 0.03-0.16 to 0.01-0.03; the PotentialNet's TV from 0.016-0.022 to 0.004-0.006).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from dataclasses import field as dataclass_field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from . import distributed
from ._validation import check_choice, check_int, check_states
from .circuit import Circuit
from .fields import Field
from .models import CurrentNet, PotentialNet
from .targets import current_targets, potential_targets

__all__ = ["train", "TrainResult", "NonFiniteLossError", "MODELS", "QUERIES", "load_checkpoint"]

MODELS = ("current", "potential")
QUERIES = ("uniform", "data")
#: SGD step on the normalised (order-one) targets; with momentum 0.9 the effective step is
#: ``lr / (1 - momentum) = 0.1``. Measured on THEORY §4's K=50 Gaussian task at the paper's budget
#: (lr 0.001-0.1, momentum 0 and 0.9: 0.003-0.03 with momentum 0.9 and plain SGD at 0.1 all
#: converge; 0.001 is too slow for 5000 steps).
DEFAULT_LR = 0.01
DEFAULT_MOMENTUM = 0.9
#: No weight decay: the targets are unbiased and the network is small; nothing to regularise.
DEFAULT_WEIGHT_DECAY = 0.0
#: EMA of the weights over roughly the last 1000 steps.
DEFAULT_EMA_DECAY = 0.999
#: Checkpoint format version.
CHECKPOINT_FORMAT = 1
#: Steps between check points (losses read back to the host, checked, shown in the progress bar).
#: A read-back drains the CUDA queue, which holds only a few steps' kernels anyway: once every 50
#: steps costs well under 1% of the step time, and a diverged run wastes at most 50 steps.
_CHECK_EVERY = 50
#: Config entries that must agree between a checkpoint and a resumed run.
_RESUME_KEYS = (
    "circuit",
    "model",
    "model_kwargs",
    "batch_size",
    "num_queries",
    "queries",
    "lr",
    "momentum",
    "weight_decay",
    "ema_decay",
    "seed",
)

Source = torch.Tensor | Callable[[int], torch.Tensor]


class NonFiniteLossError(RuntimeError):
    """The training loss became nan or inf; the message names the step and the kept checkpoint."""


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        field: the trained model's :class:`~ecd2g_fast.fields.Field` (``CurrentNetField`` or
            ``PotentialNetField``), ready for :func:`ecd2g_fast.sample`.
        model: the trained ``nn.Module`` (:class:`CurrentNet` or :class:`PotentialNet`), eval mode:
            the weight average when ``ema_decay`` is set, else the last iterate.
        losses: ``(steps,)`` float64 CPU tensor, the global mean normalised MSE of every step
            (including the steps before a resume).
        config: the JSON-friendly run configuration stored in checkpoints.
        start_step: 0, or the step a resumed run continued from.
        last_iterate: the last SGD iterate (the same object as ``model`` without EMA).
    """

    field: Field
    model: torch.nn.Module
    losses: torch.Tensor
    config: dict = dataclass_field(default_factory=dict)
    start_step: int = 0
    last_iterate: torch.nn.Module | None = None


# ---------------------------------------------------------------------------- data and queries
class _DataSource:
    """Draws ``(n, D)`` int64 states from a sample tensor (with replacement) or a callable."""

    def __init__(self, name: str, source: object, circuit: Circuit, device: torch.device) -> None:
        self.name, self.circuit, self.device = name, circuit, device
        if isinstance(source, torch.Tensor):
            check_states(name, source, circuit.num_categories, circuit.dim)
            if source.shape[0] < 1:
                raise ValueError(f"{name} must hold at least one sample, got shape {tuple(source.shape)}")
            self.data: torch.Tensor | None = source.to(device)
            self.fn = None
        elif callable(source):
            self.data, self.fn = None, source
        else:
            raise TypeError(f"{name} must be an int64 tensor (N, D) or a callable n -> (n, D), got {type(source).__name__}")

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        if self.data is not None:
            idx = torch.randint(self.data.shape[0], (n,), generator=generator, device=self.device)
            return self.data[idx]
        out = self.fn(n)
        what = f"{self.name}({n}) output"
        check_states(what, out, self.circuit.num_categories, self.circuit.dim)
        if out.shape[0] != n:
            raise ValueError(f"{what} must have {n} rows, got {out.shape[0]}")
        return out.to(self.device)


def _uniform_states(n: int, circuit: Circuit, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randint(circuit.num_categories, (n, circuit.dim), generator=gen, device=device)


def _neighbours(states: torch.Tensor, circuit: Circuit, gen: torch.Generator) -> torch.Tensor:
    """Move one random coordinate of each state by +-1, reflecting at 0 and K-1."""
    n, K = states.shape[0], circuit.num_categories
    dev = states.device
    coord = torch.randint(circuit.dim, (n,), generator=gen, device=dev)
    step = torch.randint(2, (n,), generator=gen, device=dev) * 2 - 1
    rows = torch.arange(n, device=dev)
    moved = states[rows, coord] + step
    moved = torch.where(moved < 0, 1, moved)
    moved = torch.where(moved >= K, K - 2, moved)
    out = states.clone()
    out[rows, coord] = moved
    return out


class _QuerySampler:
    def __init__(self, kind: str, model: str, circuit: Circuit, sources: tuple[_DataSource, _DataSource]):
        self.kind, self.model, self.circuit, self.sources = kind, model, circuit, sources
        self.num_layers = circuit.num_layers if model == "current" else circuit.num_layers + 1

    def _mixture(self, n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
        c = self.circuit
        xs, ys = self.sources[0].draw(n, gen), self.sources[1].draw(n, gen)
        pick = torch.randint(2, (n, 1), generator=gen, device=device).bool()
        anchors = torch.where(pick, xs, ys)
        near = _neighbours(anchors, c, gen)
        uniform = _uniform_states(n, c, gen, device)
        u = torch.rand((n, 1), generator=gen, device=device)
        return torch.where(u < 0.5, anchors, torch.where(u < 0.75, near, uniform))

    def draw(self, n: int, gen: torch.Generator, device: torch.device) -> tuple[torch.Tensor, ...]:
        layer = torch.randint(self.num_layers, (n,), generator=gen, device=device)
        if self.kind == "uniform":
            z = _uniform_states(n, self.circuit, gen, device)
            if self.model == "potential":
                return layer, z
            return layer, z, _uniform_states(n, self.circuit, gen, device)
        z = self._mixture(n, gen, device)
        if self.model == "potential":
            return layer, z
        w = self._mixture(n, gen, device)
        diagonal = torch.rand((n, 1), generator=gen, device=device) < 0.25
        return layer, z, torch.where(diagonal, z, w)


# ---------------------------------------------------------------------------- checkpoints
def _atomic_save(obj: dict, path: Path) -> None:
    """``torch.save`` to a temporary file in ``path``'s directory, fsync, ``os.replace``."""
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename durable (POSIX; not on every platform)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`train` (tensors on the CPU).

    Returns:
        dict with ``format``, ``config``, ``step`` (completed steps), ``model`` and ``optimizer``
        state dicts, ``generator`` / ``torch_rng`` / ``cuda_rng`` states and ``losses`` ``(step,)``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a readable checkpoint of this format.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # truncated or foreign file: torch raises several types
        raise ValueError(f"{os.fspath(path)!r} is not a readable training checkpoint: {err}") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{os.fspath(path)!r} is not an ecd2g_fast training checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


# ---------------------------------------------------------------------------- validation
def _check_real(name: str, value: object, *, low: float, low_inclusive: bool, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    ok_low = value >= low if low_inclusive else value > low
    if not (math.isfinite(value) and ok_low and value < high):
        bound = f"{'>=' if low_inclusive else '>'} {low}" + (f" and < {high}" if high < math.inf else "")
        raise ValueError(f"{name} must be finite and {bound}, got {value}")
    return value


def _make_model(model: str, circuit: Circuit, model_kwargs: dict, seed: int) -> torch.nn.Module:
    cls = CurrentNet if model == "current" else PotentialNet
    # deterministic initialisation that leaves the caller's global RNG untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(circuit, **model_kwargs)


# ---------------------------------------------------------------------------- the trainer
def train(
    circuit: Circuit,
    source: Source,
    target: Source,
    model: str = "current",
    steps: int = 5000,
    batch_size: int = 256,
    *,
    num_queries: int | None = None,
    queries: str = "uniform",
    lr: float = DEFAULT_LR,
    momentum: float = DEFAULT_MOMENTUM,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    ema_decay: float | None = DEFAULT_EMA_DECAY,
    model_kwargs: dict | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    amp: bool | None = None,
    backend: str = "auto",
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every: int = 1000,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train a :class:`~ecd2g_fast.models.CurrentNet` or :class:`~ecd2g_fast.models.PotentialNet`.

    Under ``torchrun`` (``WORLD_SIZE > 1`` in the environment) every process runs this same call:
    the process group is initialised from the environment (NCCL on CUDA, gloo on the CPU), the model
    is wrapped in DistributedDataParallel and the global batch is split by queries (module
    docstring), so the result matches a single process with the same arguments to float tolerance.

    Args:
        circuit: the circuit (``K``, ``D``, ``L``, ``r``, ``R``).
        source: ``(N, D)`` int64 source samples in ``[0, K)`` (drawn with replacement by the
            trainer's generator), or a callable ``n -> (n, D)`` int64 tensor of fresh samples
            (under torchrun it must return the same samples on every process, e.g. seeded alike).
        target: likewise for the target distribution.
        model: ``"current"`` (the paper's network) or ``"potential"`` (THEORY §6).
        steps: total number of optimiser steps (a resumed run continues up to ``steps``).
        batch_size: ``B >= 2`` data samples ``(x_i, y_i)`` per step (the MC targets' batch).
        num_queries: queries ``(l, z[, w])`` per step; default ``batch_size``.
        queries: ``"uniform"`` (the paper's) or ``"data"`` (module docstring).
        lr: SGD learning rate (> 0), constant.
        momentum: SGD momentum in ``[0, 1)``.
        weight_decay: SGD weight decay (>= 0).
        ema_decay: decay of the exponential moving average of the weights that the result
            holds (in ``[0, 1)``; warmed up as ``min(ema_decay, (1 + t) / (10 + t))``), or None
            for the last SGD iterate, as in the paper.
        model_kwargs: extra constructor arguments of the model (``hidden``, ``encoding``, ...).
        device: training device; default CUDA (``cuda:LOCAL_RANK``) when available, else CPU.
        seed: seeds the model initialisation and the trainer's generator (data and queries).
        amp: bf16 autocast of the MLP's hidden layers (the first layer, the loss and the
            targets stay in float32 / float64); default on for CUDA, never on the CPU. Targets are
            always computed in float64, normalised, then cast to float32.
        backend: backend of the target pass (``"auto"`` picks the fastest available).
        checkpoint_path: where to write checkpoints (atomically: temporary file in the same
            directory, fsync, ``os.replace``); None for no checkpoints.
        checkpoint_every: write a checkpoint after every this many steps (and after the last).
        resume: continue from ``checkpoint_path`` if that file exists (else start afresh). A
            resumed run ends bit-identical to an uninterrupted one with the same arguments (on a
            deterministic device, with tensor sources, or callables that draw from torch's global
            CPU RNG, whose state is checkpointed too).
        progress: show a tqdm progress bar with the loss at the last check point (rank 0 only).

    Returns:
        :class:`TrainResult` (``.field`` for sampling, ``.model``, ``.losses``).

    Raises:
        TypeError: an argument of the wrong type (``circuit``, ``source``, ``target``, sizes,
            reals, ``model_kwargs``); float state tensors.
        ValueError: unknown ``model`` / ``queries`` / ``backend``; ``batch_size < 2``;
            ``num_queries`` smaller than the number of processes; states with the wrong ``D`` or
            outside ``[0, K)``; ``resume`` without ``checkpoint_path``; a checkpoint from a
            different configuration, or with more steps than ``steps``.
        NonFiniteLossError: the loss became nan/inf. Detected at the next check point (at most
            ``_CHECK_EVERY`` steps later, or before the next checkpoint); the message names the
            first non-finite step. No checkpoint holding a non-finite step is written: the one on
            disk is the last good one; the in-memory model, updated by the bad steps, is discarded.
    """
    if not isinstance(circuit, Circuit):
        raise TypeError(f"circuit must be an ecd2g_fast.Circuit, got {type(circuit).__name__}")
    check_choice("model", model, MODELS)
    check_choice("queries", queries, QUERIES)
    check_int("steps", steps, 1)
    check_int("batch_size", batch_size, 2)
    num_queries = batch_size if num_queries is None else check_int("num_queries", num_queries, 1)
    lr = _check_real("lr", lr, low=0.0, low_inclusive=False)
    momentum = _check_real("momentum", momentum, low=0.0, low_inclusive=True, high=1.0)
    weight_decay = _check_real("weight_decay", weight_decay, low=0.0, low_inclusive=True)
    if ema_decay is not None:
        ema_decay = _check_real("ema_decay", ema_decay, low=0.0, low_inclusive=True, high=1.0)
    check_int("seed", seed, 0)
    check_int("checkpoint_every", checkpoint_every, 1)
    if model_kwargs is None:
        model_kwargs = {}
    if not isinstance(model_kwargs, dict):
        raise TypeError(f"model_kwargs must be a dict or None, got {type(model_kwargs).__name__}")
    if amp is not None and not isinstance(amp, bool):
        raise TypeError(f"amp must be a bool or None, got {type(amp).__name__}")
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    if checkpoint_path is not None and not isinstance(checkpoint_path, (str, os.PathLike)):
        raise TypeError(f"checkpoint_path must be a str, os.PathLike or None, got {type(checkpoint_path).__name__}")
    if resume and checkpoint_path is None:
        raise ValueError("resume=True needs a checkpoint_path")

    ctx = distributed.setup(device)
    if num_queries < ctx.world_size:
        raise ValueError(f"num_queries must be >= the number of processes {ctx.world_size}, got {num_queries}")
    options = _Options(
        model=model, steps=steps, batch_size=batch_size, num_queries=num_queries, queries=queries,
        lr=lr, momentum=momentum, weight_decay=weight_decay, ema_decay=ema_decay or None,
        model_kwargs=model_kwargs, seed=seed, amp=amp, backend=backend,
        checkpoint_path=None if checkpoint_path is None else Path(checkpoint_path),
        checkpoint_every=checkpoint_every, resume=resume, progress=progress,
    )  # fmt: skip
    return _Trainer(ctx, circuit, source, target, options).run()


@dataclass
class _Options:
    model: str
    steps: int
    batch_size: int
    num_queries: int
    queries: str
    lr: float
    momentum: float
    weight_decay: float
    ema_decay: float | None
    model_kwargs: dict
    seed: int
    amp: bool | None
    backend: str
    checkpoint_path: Path | None
    checkpoint_every: int
    resume: bool
    progress: bool


class _Trainer:
    """State of one training run (one process of it)."""

    def __init__(self, ctx: distributed.DistContext, circuit: Circuit, source, target, opt: _Options) -> None:
        self.ctx, self.circuit, self.opt = ctx, circuit, opt
        dev = self.device = ctx.device
        self.sources = (_DataSource("source", source, circuit, dev), _DataSource("target", target, circuit, dev))
        self.queries = _QuerySampler(opt.queries, opt.model, circuit, self.sources)
        self.use_amp = dev.type == "cuda" and opt.amp is not False
        self.net = _make_model(opt.model, circuit, opt.model_kwargs, opt.seed).to(dev)
        self.ema_net = None
        if opt.ema_decay is not None:
            self.ema_net = _make_model(opt.model, circuit, opt.model_kwargs, opt.seed).to(dev)
            self.ema_net.requires_grad_(False)
        self.optimizer = torch.optim.SGD(
            self.net.parameters(),
            lr=opt.lr,
            momentum=opt.momentum,
            weight_decay=opt.weight_decay,
            foreach=True,  # one code path on the CPU and CUDA, and fewer kernel launches
        )
        self.gen = torch.Generator(device=dev)
        self.gen.manual_seed(opt.seed)
        self.config = {
            "circuit": asdict(circuit.config),
            "model": opt.model,
            "model_kwargs": self.net.config(),
            "batch_size": opt.batch_size,
            "num_queries": opt.num_queries,
            "queries": opt.queries,
            "lr": opt.lr,
            "momentum": opt.momentum,
            "weight_decay": opt.weight_decay,
            "ema_decay": opt.ema_decay,
            "seed": opt.seed,
            "steps": opt.steps,
            "amp": self.use_amp,
            "backend": opt.backend,
            "world_size": ctx.world_size,
        }
        self.losses: list[float] = []  # of the checked steps
        self.pending: list[torch.Tensor] = []  # 0-d float64 device losses since the last check
        self.step = 0  # completed steps
        self.last_saved: int | None = None
        # this process's slice of the global queries
        self.lo = ctx.rank * opt.num_queries // ctx.world_size
        self.hi = (ctx.rank + 1) * opt.num_queries // ctx.world_size

    # -------------------------------------------------------------- checkpoints
    def _state(self) -> dict:
        dev = self.device
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config,
            "step": self.step,
            "model": self.net.state_dict(),
            "ema_model": None if self.ema_net is None else self.ema_net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None,
            "losses": torch.tensor(self.losses, dtype=torch.float64),
        }

    def save(self) -> None:
        """Check the pending losses (:meth:`check`), then write a checkpoint (rank 0)."""
        self.check()
        if self.ctx.rank == 0:
            _atomic_save(self._state(), self.opt.checkpoint_path)
        self.last_saved = self.step

    def restore(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        diff = [k for k in _RESUME_KEYS if ckpt["config"].get(k) != self.config[k]]
        if diff:
            details = ", ".join(f"{k}: {ckpt['config'].get(k)!r} != {self.config[k]!r}" for k in diff)
            raise ValueError(f"checkpoint_path {os.fspath(path)!r} holds a different run ({details})")
        if int(ckpt["step"]) > self.opt.steps:
            raise ValueError(f"steps={self.opt.steps} is smaller than the checkpoint's step {int(ckpt['step'])}")
        self.step = self.last_saved = int(ckpt["step"])
        self.net.load_state_dict(ckpt["model"])
        if self.ema_net is not None:
            self.ema_net.load_state_dict(ckpt["ema_model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        for group in self.optimizer.param_groups:  # checkpoints before foreach=True hold None
            group["foreach"] = True
        self.gen.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        if self.device.type == "cuda" and ckpt.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ckpt["cuda_rng"], self.device)
        self.losses = ckpt["losses"].tolist()

    # -------------------------------------------------------------- one step
    def loss_terms(self, step_model) -> torch.Tensor:
        """Draw the global batch, return this process's sum of squared normalised errors."""
        opt, c = self.opt, self.circuit
        x = self.sources[0].draw(opt.batch_size, self.gen)
        y = self.sources[1].draw(opt.batch_size, self.gen)
        batch = self.queries.draw(opt.num_queries, self.gen, self.device)
        local = tuple(t[self.lo : self.hi] for t in batch)
        # in range by construction (sources checked on entry, queries drawn in range): no value scan
        if opt.model == "current":
            physical = current_targets(c, *local, x, y, backend=opt.backend, check_values=False)
        else:
            physical = potential_targets(c, *local, x, y, backend=opt.backend, check_values=False)
        normalised = self.net.normalise_targets(*local, physical)
        with torch.autocast("cuda", dtype=torch.bfloat16) if self.use_amp else contextlib.nullcontext():
            out = step_model(*local)
        return (out.float() - normalised).square().sum()

    def update_ema(self) -> None:
        t = self.step  # completed steps before this update
        decay = min(self.opt.ema_decay, (1 + t) / (10 + t))
        with torch.no_grad():
            torch._foreach_lerp_(list(self.ema_net.parameters()), list(self.net.parameters()), 1.0 - decay)

    def wrap(self) -> torch.nn.Module:
        """The module the steps call: the network, or its DistributedDataParallel wrapper."""
        if not self.ctx.distributed:
            return self.net
        ids = [self.device.index] if self.device.type == "cuda" else None
        # the buffers (encoding table, closed-form scales) are identical on every rank: no per-step sync
        ddp = torch.nn.parallel.DistributedDataParallel
        if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters:  # torch >= 2.13
            return ddp(self.net, device_ids=ids, forward_sync_buffers=False)
        return ddp(self.net, device_ids=ids, broadcast_buffers=False)

    def train_step(self, step_model: torch.nn.Module) -> torch.Tensor:
        """One optimiser step; with tensor sources, without any device-to-host synchronisation.

        Returns:
            0-d float64 tensor on the training device: the global mean normalised MSE, also
            appended to ``pending``. It is not checked here: a nan/inf step is applied like any
            other, and found by the next :meth:`check`.
        """
        ctx, opt = self.ctx, self.opt
        sq = self.loss_terms(step_model)
        # this process's share of the global mean; DDP averages gradients over processes
        (sq * (ctx.world_size / opt.num_queries)).backward()
        total = sq.detach().to(torch.float64)
        if ctx.distributed:
            dist.all_reduce(total)
        loss = total / opt.num_queries
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema_net is not None:
            self.update_ema()
        self.step += 1
        self.pending.append(loss)
        return loss

    def check(self) -> None:
        """Move the pending losses to ``losses`` (one device-to-host copy: a sync on CUDA).

        Raises:
            NonFiniteLossError: one of them is nan/inf; the message names the first such step.
        """
        if not self.pending:
            return
        values = torch.stack(self.pending).cpu().tolist()
        first = self.step - len(values) + 1
        self.pending = []
        for i, value in enumerate(values):
            if not math.isfinite(value):
                self._raise_non_finite(value, first + i)
        self.losses.extend(values)

    def run(self) -> TrainResult:
        opt, ctx = self.opt, self.ctx
        if opt.resume and opt.checkpoint_path.exists():
            self.restore(opt.checkpoint_path)
        start = self.step
        step_model = self.wrap()
        self.net.train()
        bar = tqdm(
            total=opt.steps,
            initial=start,
            disable=not opt.progress or ctx.rank != 0,
            desc=f"train {opt.model}",
            dynamic_ncols=True,
        )
        try:
            while self.step < opt.steps:
                self.train_step(step_model)
                if opt.checkpoint_path is not None and (
                    self.step % opt.checkpoint_every == 0 or self.step == opt.steps
                ):
                    self.save()
                elif self.step % _CHECK_EVERY == 0 or self.step == opt.steps:
                    self.check()
                if not self.pending:  # a check point
                    bar.set_postfix(loss=f"{self.losses[-1]:.4g}", refresh=False)
                bar.update(1)
        finally:
            bar.close()
        self.net.eval()
        final = self.net if self.ema_net is None else self.ema_net
        final.eval()
        return TrainResult(
            field=final.field(),
            model=final,
            losses=torch.tensor(self.losses, dtype=torch.float64),
            config=self.config,
            start_step=start,
            last_iterate=self.net,
        )

    def _raise_non_finite(self, value: float, step: int) -> None:
        if self.last_saved is not None:
            kept = f"the last good checkpoint (step {self.last_saved}) is kept at {os.fspath(self.opt.checkpoint_path)!r}"
        else:
            kept = "no checkpoint was written"
        raise NonFiniteLossError(
            f"non-finite training loss {value} at step {step} of {self.opt.steps} (detected after step "
            f"{self.step}); {kept}. A smaller lr (lr={self.opt.lr}) usually helps."
        )
