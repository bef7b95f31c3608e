"""The trainer of Algorithm 1: :class:`Trainer` (``step()``, ``run()``) and its results.

One step (every process draws the same *global* batch from the same generator):

1. ``x``, ``y``: ``batch_size`` source and target samples, drawn with replacement;
2. ``num_queries`` queries (``l``, ``z``[, ``w``]) (:class:`~ecd2g_fast.training.data.QuerySampler`);
3. the loss (:class:`~ecd2g_fast.training.loss.TargetRegressionLoss`) on this process's slice of
   the queries, one optimiser step, one update of the weights' moving average.

With tensor sources a step never makes the host wait for the device (no loss read-back, no value
checks of the trainer's own tensors), so on a GPU the CPU queues steps ahead. The losses stay on
the device until a *check point* (every :data:`CHECK_EVERY` steps, before every checkpoint, at the
end), where they are read back at once and a nan/inf raises :class:`NonFiniteLossError`.

With ``torchrun --nproc_per_node=N`` each process computes the targets and the loss of its slice
of the queries only, and DistributedDataParallel sums the slices' gradients: the step is the
single-process step with the same seed, up to floating-point summation order.
"""

from __future__ import annotations

import inspect
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .. import distributed
from ..circuit import Circuit
from ..fields import Field
from ..hamming import HammingCircuit
from . import checkpoint
from .config import TrainConfig, check_model_for_circuit
from .data import DataSource, QuerySampler, Source
from .loss import make_loss

__all__ = ["CHECK_EVERY", "NonFiniteLossError", "TrainResult", "Trainer"]

#: Steps between check points (losses read back to the host, checked, shown in the progress bar).
#: A read-back drains the CUDA queue, which holds only a few steps' kernels anyway: once every 50
#: steps costs well under 1% of the step time, and a diverged run wastes at most 50 steps.
CHECK_EVERY = 50


class NonFiniteLossError(RuntimeError):
    """The training loss became nan or inf; the message names the step and the kept checkpoint."""


@dataclass
class TrainResult:
    """What :meth:`Trainer.run` and :func:`ecd2g_fast.train` return.

    Attributes:
        field: the trained model's :class:`~ecd2g_fast.fields.Field` (``CurrentNetField`` or
            ``PotentialNetField``), ready for :func:`ecd2g_fast.sample`.
        model: the trained ``nn.Module`` (:class:`~ecd2g_fast.CurrentNet` or
            :class:`~ecd2g_fast.PotentialNet`), eval mode: the weight average when ``ema_decay``
            is set, else the last iterate.
        losses: ``(steps,)`` float64 CPU tensor, the global mean normalised squared error of every
            step (including the steps before a resume).
        config: the :class:`TrainConfig` of the run.
        world_size: number of processes that trained it.
        start_step: 0, or the step a resumed run continued from.
        last_iterate: the last optimiser iterate (the same object as ``model`` without EMA).
    """

    field: Field
    model: torch.nn.Module
    losses: torch.Tensor
    config: TrainConfig
    world_size: int = 1
    start_step: int = 0
    last_iterate: torch.nn.Module | None = None


class Trainer:
    """One training run (one process of it).

    Args:
        circuit: the circuit whose field is learned.
        source, target: ``(N, D)`` int64 samples of ``p`` and ``q`` (drawn with replacement), or
            callables ``n -> (n, D)`` int64 (checked on every call).
        config: the settings.
        device: ``"cpu"``, ``"cuda"``, ...; None: CUDA when available (``cuda:LOCAL_RANK`` under
            torchrun), else the CPU. Under ``torchrun`` the process group is joined here.
        checkpoint_path: where :meth:`run` writes checkpoints (atomically); None for none.
        progress: show a tqdm progress bar in :meth:`run` (rank 0 only).
        metadata: JSON-friendly values stored in every checkpoint under ``"metadata"``.

    Raises:
        TypeError, ValueError: bad ``circuit``, sources, ``device``, ``checkpoint_path``, a model
            that does not fit the circuit (``"hamming"`` on a HammingCircuit, the others on a
            Circuit), or a ``num_queries`` smaller than the number of processes.
    """

    def __init__(
        self,
        circuit: Circuit | HammingCircuit,
        source: Source,
        target: Source,
        config: TrainConfig | None = None,
        *,
        device: str | torch.device | None = None,
        checkpoint_path: str | os.PathLike | None = None,
        progress: bool = True,
        metadata: dict | None = None,
    ) -> None:
        config = TrainConfig() if config is None else config
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig or None, got {type(config).__name__}")
        check_model_for_circuit(config.model, circuit)
        if checkpoint_path is not None and not isinstance(checkpoint_path, (str, os.PathLike)):
            raise TypeError(
                f"checkpoint_path must be a str, os.PathLike or None, got {type(checkpoint_path).__name__}"
            )
        self.circuit, self.config, self.progress = circuit, config, progress
        self.metadata = dict(metadata or {})
        self.checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
        if self.checkpoint_path is not None and self.checkpoint_path.is_dir():
            raise ValueError(f"checkpoint_path {str(self.checkpoint_path)!r} is a folder; give a file path")
        self.ctx = ctx = distributed.setup(device)
        if config.queries_per_step < ctx.world_size:
            raise ValueError(
                f"num_queries must be >= the number of processes {ctx.world_size}, got {config.queries_per_step}"
            )
        dev = self.device = ctx.device
        self.sources = (
            DataSource("source", source, circuit, dev),
            DataSource("target", target, circuit, dev),
        )
        self.queries = QuerySampler(config.queries, config.model, circuit, self.sources, config.query_kwargs)
        self.use_amp = dev.type == "cuda" and config.amp is not False
        self.loss = make_loss(
            circuit,
            config.model,
            config.targets_backend,
            self.use_amp,
            dev,
            config.ratio_weight,
            config.sink_labels,
            config.consistency_weight,
        )
        self.net = config.build_model(circuit).to(dev)
        self.ema_net = None
        if config.ema_decay is not None:
            self.ema_net = config.build_model(circuit).to(dev)
            self.ema_net.requires_grad_(False)
        self.optimizer = config.build_optimizer(self.net.parameters())
        self.gen = torch.Generator(device=dev)
        self.gen.manual_seed(config.seed)
        self.losses: list[float] = []  # of the checked steps
        self.pending: list[torch.Tensor] = []  # 0-d float64 device losses since the last check
        self.step_count = 0  # completed steps
        self.last_saved: int | None = None
        # this process's slice of the global queries
        n = config.queries_per_step
        self.lo, self.hi = ctx.rank * n // ctx.world_size, (ctx.rank + 1) * n // ctx.world_size
        self._call = self._wrap()

    def _wrap(self) -> torch.nn.Module:
        """The module the steps call: the network, or its DistributedDataParallel wrapper."""
        if not self.ctx.distributed:
            return self.net
        ids = [self.device.index] if self.device.type == "cuda" else None
        # the buffers (encoding table, closed-form scales) are identical on every rank: no per-step sync
        ddp = torch.nn.parallel.DistributedDataParallel
        if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters:  # torch >= 2.13
            return ddp(self.net, device_ids=ids, forward_sync_buffers=False)
        return ddp(self.net, device_ids=ids, broadcast_buffers=False)

    # -------------------------------------------------------------- one step
    def step(self) -> torch.Tensor:
        """One optimiser step; with tensor sources, without any device-to-host synchronisation.

        Returns:
            0-d float64 tensor on the training device: the global mean normalised squared error,
            also appended to ``pending``. It is not checked here: a nan/inf step is applied like
            any other, and found by the next :meth:`check`.
        """
        ctx, cfg = self.ctx, self.config
        x = self.sources[0].draw(cfg.batch_size, self.gen)
        y = self.sources[1].draw(cfg.batch_size, self.gen)
        batch = self.queries.draw(cfg.queries_per_step, self.gen, self.device)
        local = tuple(t[self.lo : self.hi] for t in batch)
        sq = self.loss(self._call, local, x, y)
        # this process's share of the global mean; DDP averages gradients over processes
        (sq * (ctx.world_size / cfg.queries_per_step)).backward()
        total = sq.detach().to(torch.float64)
        if ctx.distributed:
            dist.all_reduce(total)
        loss = total / cfg.queries_per_step
        lr = cfg.lr * cfg.lr_factor(self.step_count)  # a Python number: no host-device traffic
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if cfg.grad_clip is not None:  # no host sync: the norm stays on the device
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema_net is not None:
            self._update_ema()
        self.step_count += 1
        self.pending.append(loss)
        return loss

    def _update_ema(self) -> None:
        t = self.step_count  # completed steps before this update
        decay = min(self.config.ema_decay, (1 + t) / (10 + t))
        with torch.no_grad():
            torch._foreach_lerp_(list(self.ema_net.parameters()), list(self.net.parameters()), 1.0 - decay)

    def check(self) -> None:
        """Move the pending losses to ``losses`` (one device-to-host copy: a sync on CUDA).

        Raises:
            NonFiniteLossError: one of them is nan/inf; the message names the first such step.
        """
        if not self.pending:
            return
        values = torch.stack(self.pending).cpu().tolist()
        first = self.step_count - len(values) + 1
        self.pending = []
        for i, value in enumerate(values):
            if not math.isfinite(value):
                self._raise_non_finite(value, first + i)
        self.losses.extend(values)

    # -------------------------------------------------------------- checkpoints
    def save(self) -> None:
        """Check the pending losses (:meth:`check`), then write a checkpoint (rank 0)."""
        self.check()
        if self.ctx.rank == 0:
            checkpoint.save(self, self.checkpoint_path)
        self.last_saved = self.step_count

    def restore(self) -> None:
        """Continue from ``checkpoint_path`` (:func:`~ecd2g_fast.training.checkpoint.restore`)."""
        checkpoint.restore(self, self.checkpoint_path)

    # -------------------------------------------------------------- the whole run
    def run(self, *, resume: bool = False) -> TrainResult:
        """Train up to ``config.steps`` steps; returns the result.

        Args:
            resume: continue from ``checkpoint_path`` if that file exists (else start afresh). A
                resumed run ends bit-identical to an uninterrupted one with the same settings (on
                a deterministic device, with tensor sources, or callables that draw from torch's
                global CPU RNG, whose state is checkpointed too).

        Raises:
            ValueError: ``resume`` without ``checkpoint_path``; a checkpoint of a different run
                or with more steps than ``config.steps``.
            NonFiniteLossError: the loss became nan/inf. Detected at the next check point (at
                most :data:`CHECK_EVERY` steps later, or before the next checkpoint); the message
                names the first non-finite step. No checkpoint holding a non-finite step is
                written: the one on disk is the last good one.
        """
        cfg, path = self.config, self.checkpoint_path
        if resume and path is None:
            raise ValueError("resume=True needs a checkpoint_path")
        if resume and path.exists():
            self.restore()
        start = self.step_count
        self.net.train()  # a fresh network is in train mode already; run() may follow a finished run()
        bar = tqdm(
            total=cfg.steps,
            initial=start,
            disable=not self.progress or self.ctx.rank != 0,
            desc=f"train {cfg.model}",
            dynamic_ncols=True,
        )
        try:
            while self.step_count < cfg.steps:
                self.step()
                last = self.step_count == cfg.steps
                if path is not None and (self.step_count % cfg.checkpoint_every == 0 or last):
                    self.save()
                elif self.step_count % CHECK_EVERY == 0 or last:
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
            config=cfg,
            world_size=self.ctx.world_size,
            start_step=start,
            last_iterate=self.net,
        )

    def _raise_non_finite(self, value: float, step: int) -> None:
        if self.last_saved is not None:
            kept = f"the last good checkpoint (step {self.last_saved}) is kept at {os.fspath(self.checkpoint_path)!r}"
        else:
            kept = "no checkpoint was written"
        raise NonFiniteLossError(
            f"non-finite training loss {value} at step {step} of {self.config.steps} (detected after step "
            f"{self.step_count}); {kept}. A smaller lr (lr={self.config.lr}) usually helps."
        )
