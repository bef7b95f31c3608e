"""The one backend table: ``(op, backend) -> implementation``, and the one selection rule.

Each op family registers its implementations here when its module is imported. ``"auto"`` walks
the op's preference list for the tensors' device type and takes the first available backend,
quietly; an explicitly requested backend that is unavailable raises. The environment variable
``ECD2G_BACKEND_<OP>`` (for example ``ECD2G_BACKEND_SAMPLE=torch``) replaces ``"auto"``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Backend:
    name: str
    impl: Callable
    is_available: Callable[[torch.device], bool]
    unavailable_reason: str = ""


_TABLE: dict[str, dict[str, Backend]] = {}
_AUTO_ORDER: dict[str, dict[str, tuple[str, ...]]] = {}


def register(
    op: str,
    name: str,
    impl: Callable,
    is_available: Callable[[torch.device], bool] = lambda device: True,
    unavailable_reason: str = "",
) -> None:
    _TABLE.setdefault(op, {})[name] = Backend(name, impl, is_available, unavailable_reason)


def set_auto_order(op: str, device_type: str, order: tuple[str, ...]) -> None:
    _AUTO_ORDER.setdefault(op, {})[device_type] = order


def names(op: str) -> tuple[str, ...]:
    return tuple(_TABLE[op])


def select(op: str, backend: str, device: torch.device) -> Backend:
    """The implementation of ``op`` that ``backend`` (a name or ``"auto"``) means on ``device``.

    Raises:
        ValueError: unknown backend name, or an explicitly named backend unavailable on ``device``.
    """
    table = _TABLE[op]
    if backend == "auto":
        backend = os.environ.get(f"ECD2G_BACKEND_{op.upper()}", "auto")
    if backend == "auto":
        order = _AUTO_ORDER.get(op, {}).get(device.type, tuple(table))
        for name in order:
            if table[name].is_available(device):
                return table[name]
        raise ValueError(f"no backend for {op} is available on {device}")
    if backend not in table:
        choices = ", ".join(repr(n) for n in ("auto", *table))
        raise ValueError(f"backend must be one of {choices}, got {backend!r}")
    chosen = table[backend]
    if not chosen.is_available(device):
        reason = f": {chosen.unavailable_reason}" if chosen.unavailable_reason else ""
        raise ValueError(f"backend {backend!r} for {op} is not available on {device}{reason}")
    return chosen
