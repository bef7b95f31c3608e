"""The one backend table: ``(op, backend) -> implementation``, and the one selection rule.

Each op family registers its implementations here when its module is imported. A backend has an
availability check on the device (is the extension built, is Triton importable, ...) and,
optionally, a check on what it is asked to process (for example the ``"potential"`` sampler takes
only potential fields).

What an implementation is depends on the op: for ``"current_targets"`` and
``"potential_targets"`` the whole pass; for ``"sample"`` a *per-move draw factory*
``(field, mode) -> draw`` (:data:`ecd2g_fast.sampling.reference.DrawFactory`): the backends of the
sampler differ only in how one move's outlets are drawn, and :func:`ecd2g_fast.sample` runs every
one of them in the same walk loop. Sampler entries: ``"torch"`` (plain torch, the reference),
``"cpp"`` (compiled ops), ``"potential"`` (O(log M) tables, compiled draw, plain torch without the
extension) and ``"potential-torch"`` (the same tables drawn in plain torch).

``"auto"`` walks the op's preference list for the device type and takes the first backend that is
available and supports the subject. When it passes over a backend only because that backend is
unavailable (typically: the C++ extension is not built), it warns once per process. An
explicitly requested backend that is unavailable or unsuitable raises ``ValueError``. The
environment variable ``ECD2G_BACKEND_<OP>`` (for example ``ECD2G_BACKEND_SAMPLE=torch``) replaces
``"auto"``.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch


def _always(_: object) -> bool:
    return True


@dataclass(frozen=True)
class Backend:
    name: str
    impl: Callable
    is_available: Callable[[torch.device], bool]
    unavailable_reason: str | Callable[[torch.device], str] = ""
    supports: Callable[[object], bool] = _always
    unsupported_reason: str = ""

    def why_unavailable(self, device: torch.device) -> str:
        reason = self.unavailable_reason
        return reason(device) if callable(reason) else reason


_TABLE: dict[str, dict[str, Backend]] = {}
_AUTO_ORDER: dict[str, dict[str, tuple[str, ...]]] = {}
_WARNED: set[tuple[str, str]] = set()


def register(
    op: str,
    name: str,
    impl: Callable,
    is_available: Callable[[torch.device], bool] = lambda device: True,
    unavailable_reason: str | Callable[[torch.device], str] = "",
    supports: Callable[[object], bool] = _always,
    unsupported_reason: str = "",
) -> None:
    _TABLE.setdefault(op, {})[name] = Backend(
        name, impl, is_available, unavailable_reason, supports, unsupported_reason
    )


def set_auto_order(op: str, device_type: str, order: tuple[str, ...]) -> None:
    _AUTO_ORDER.setdefault(op, {})[device_type] = order


def names(op: str) -> tuple[str, ...]:
    return tuple(_TABLE[op])


def select(op: str, backend: str, device: torch.device, subject: object = None) -> Backend:
    """The implementation of ``op`` that ``backend`` (a name or ``"auto"``) means on ``device``.

    Args:
        op: op name (``"sample"``, ``"current_targets"``, ...).
        backend: a registered name or ``"auto"``.
        device: the device of the op's tensors.
        subject: what the op will process (for ``"sample"``: the field), checked with each
            backend's ``supports``.

    Raises:
        ValueError: unknown backend name, or an explicitly named backend unavailable on ``device``
            or unsuitable for ``subject``.
    """
    table = _TABLE[op]
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str ('auto' or a backend name), got {type(backend).__name__}")
    if backend == "auto":
        backend = os.environ.get(f"ECD2G_BACKEND_{op.upper()}", "auto")
    if backend == "auto":
        skipped: list[Backend] = []
        for name in _AUTO_ORDER.get(op, {}).get(device.type, tuple(table)):
            candidate = table[name]
            if not candidate.supports(subject):
                continue
            if candidate.is_available(device):
                for passed in skipped:
                    reason = passed.why_unavailable(device)
                    warn_once(
                        (op, passed.name),
                        f"ecd2g_fast {op}: backend {passed.name!r} is not available on {device}"
                        + (f" ({reason})" if reason else "")
                        + f"; using {candidate.name!r}",
                    )
                return candidate
            skipped.append(candidate)
        raise ValueError(f"no backend for {op} is available on {device}")
    if backend not in table:
        choices = ", ".join(repr(n) for n in ("auto", *table))
        raise ValueError(f"backend must be one of {choices}, got {backend!r}")
    chosen = table[backend]
    if not chosen.is_available(device):
        reason = chosen.why_unavailable(device)
        reason = f": {reason}" if reason else ""
        raise ValueError(f"backend {backend!r} for {op} is not available on {device}{reason}")
    if not chosen.supports(subject):
        raise ValueError(
            f"backend {backend!r} for {op} cannot process {type(subject).__name__}: {chosen.unsupported_reason}"
        )
    return chosen


def warn_once(key: tuple[str, str], message: str) -> None:
    """One ``RuntimeWarning`` per process and ``key`` (``(op, backend passed over)``).

    The warning names the first caller outside this package (and outside torch's compile
    wrappers, such as the one of ``torch.compiler.disable`` around :func:`ecd2g_fast.sample`).
    """
    if key in _WARNED:
        return
    _WARNED.add(key)
    warnings.warn(message, RuntimeWarning, stacklevel=_outside_stacklevel())


_INTERNAL = tuple(os.path.dirname(os.path.abspath(f)) + os.sep for f in (__file__, torch.__file__))


def _outside_stacklevel() -> int:
    # the stacklevel, counted from warn_once's warnings.warn, of the first frame outside _INTERNAL
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1
    return level
