"""Process-group setup for multi-process training (``torchrun --nproc_per_node=N``).

:func:`setup` reads the torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``) and initialises ``torch.distributed`` with NCCL on CUDA and gloo
on the CPU; without those variables (or with ``WORLD_SIZE=1``) training runs in one process.

The group is created once per process and kept for later calls (re-initialising a group after
destroying it under torchrun's agent store can hang); it is destroyed at interpreter exit, or by
:func:`shutdown`.
"""

from __future__ import annotations

import atexit
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a training job.

    Attributes:
        rank: this process's rank, ``0 <= rank < world_size``.
        world_size: number of processes (1 without torch.distributed).
        device: the device this process trains on.
        owns_group: True when this package created the process group (it is then destroyed at
            exit or by :func:`shutdown`).
    """

    rank: int
    world_size: int
    device: torch.device
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an int, got {value!r}") from None


def resolve_device(device: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """``None`` -> ``cuda:<local_rank>`` when CUDA is available, else the CPU; ``"cuda"`` without an
    index -> ``cuda:<local_rank>``.

    Raises:
        TypeError: ``device`` not a str, torch.device or None.
        ValueError: an unparsable device string, or CUDA requested but unavailable.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a str, torch.device or None, got {type(device).__name__}")
    try:
        device = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device {device!r} is not a valid torch device: {err}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be a CPU or CUDA device, got {str(device)!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device is 'cuda' but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


def setup(device: str | torch.device | None = None) -> DistContext:
    """Join (or create) the process group described by the torchrun environment.

    An already initialised process group is used as is. Otherwise, when ``WORLD_SIZE > 1``, the
    group is created with ``init_method="env://"``, NCCL for CUDA devices and gloo for the CPU.

    Args:
        device: the requested training device (see :func:`resolve_device`).

    Returns:
        :class:`DistContext`.

    Raises:
        ValueError: a malformed torchrun variable or device.
        RuntimeError: ``WORLD_SIZE > 1`` but torch.distributed is not available.
    """
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, local_rank)
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), dev, owns_group=_STATE["owned"])
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return DistContext(0, 1, dev, owns_group=False)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this torch build")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, init_method="env://")
    if not _STATE["owned"]:
        atexit.register(shutdown)
    _STATE["owned"] = True
    return DistContext(dist.get_rank(), dist.get_world_size(), dev, owns_group=True)


_STATE = {"owned": False}


#: How long :func:`shutdown` waits for the other gloo processes before destroying the group.
_SHUTDOWN_BARRIER_SECONDS = 30


def shutdown() -> None:
    """Destroy the process group if this package created it (no-op otherwise).

    With gloo the processes first meet at a barrier: a process that closes its connections while
    a peer is still using the group can make that peer abort ("terminate called without an
    active exception", seen once in a CPU test run). The barrier gives up after
    :data:`_SHUTDOWN_BARRIER_SECONDS` (a peer that failed never arrives).
    """
    if _STATE["owned"] and dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "gloo":
            try:
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=_SHUTDOWN_BARRIER_SECONDS))
            except RuntimeError:
                pass  # a peer is gone: nothing left to wait for
        dist.destroy_process_group()
    _STATE["owned"] = False
