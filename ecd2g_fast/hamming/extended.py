"""Extended-range floats: a float64 mantissa times two to an integer power (docs/hamming.md §5).

The Hamming kernel tables span thousands of binary orders of magnitude (``1/M = 2**-8192`` at
``K = 256``, ``D = 1024``), far beyond float64, and must keep float64's relative accuracy at
every entry. A log representation would not: every operation on ``log x`` errs by a few ulps of
``|log x|``, which is ``1e-13`` relative at ``|log x| ~ 1000``. So every value is a pair
``(m, e)`` with value ``m * 2**e``: ``|m|`` in ``[0.5, 1)`` (or ``m = 0`` with exponent
:data:`ZERO_EXPONENT`), and every operation errs by a few ulps of its result only.

The arithmetic runs on numpy arrays with int32 exponents (``np.ldexp`` is ten times faster with
int32 than with int64 exponents, and real exponents stay far inside ``+-2**27``); the public face is
:class:`ExtendedTensor`, a pair of torch tensors with an int64 exponent.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

#: Exponent stored with a zero mantissa: below every real exponent, so that maxima ignore zeros.
ZERO_EXPONENT = -(2**28)
#: An extended array as ``(mantissa, exponent)``: float64 and int32 numpy arrays of one shape.
Pair = tuple[np.ndarray, np.ndarray]

# Shifts below this flush to zero anyway (2**-1075 is below the smallest subnormal); the floor
# keeps int32 differences of ZERO_EXPONENT from wrapping.
_FLUSH = -1100


def normalize(m: np.ndarray, e: np.ndarray) -> Pair:
    """``(m, e)`` with ``|m|`` in ``[0.5, 1)`` (zeros get :data:`ZERO_EXPONENT`), same value."""
    f, k = np.frexp(m)
    return f, np.where(f == 0, np.int32(ZERO_EXPONENT), e + k).astype(np.int32)


def shifted(m: np.ndarray, e: np.ndarray, to: np.ndarray) -> np.ndarray:
    """The mantissa of ``m * 2**e`` expressed at exponent ``to >= e``: ``m * 2**(e - to)``."""
    return np.ldexp(m, np.maximum(e - to, _FLUSH).astype(np.int32))


def add(*terms: Pair) -> Pair:
    """Sum of broadcastable extended values; terms ``2**1075`` below the largest vanish."""
    top = terms[0][1]
    for _, e in terms[1:]:
        top = np.maximum(top, e)
    total = sum(shifted(m, e, top) for m, e in terms)
    return normalize(total, top)


def total(m: np.ndarray, e: np.ndarray, axis: int = -1) -> Pair:
    """Sum of extended values along ``axis``, aligned to the largest: one rounding per term."""
    top = e.max(axis=axis, keepdims=True)
    return normalize(shifted(m, e, top).sum(axis=axis), top.squeeze(axis))


def multiply(a: Pair, b: Pair) -> Pair:
    """Product of two broadcastable extended values."""
    return normalize(a[0] * b[0], a[1] + b[1])


def power(a: Pair, n: int) -> Pair:
    """``a ** n`` for an int ``n >= 0`` by repeated squaring (``2 log2 n`` roundings)."""
    result = normalize(np.ones_like(a[0]), np.zeros_like(a[1]))
    while n:
        if n & 1:
            result = multiply(result, a)
        a, n = multiply(a, a), n >> 1
    return result


def from_log(x: np.ndarray) -> Pair:
    """``exp(x)`` (``x`` float64, ``-inf`` for zero) as an extended value, for any finite ``x``."""
    t = np.asarray(x, dtype=np.float64) / math.log(2.0)
    finite = np.isfinite(t)
    t = np.where(finite, t, 0.0)
    whole = np.floor(t)
    m = np.where(finite, np.exp2(t - whole), 0.0)
    return normalize(m, np.where(finite, whole, 0).astype(np.int32))


def to_log(m: np.ndarray, e: np.ndarray) -> np.ndarray:
    """``log |m * 2**e|`` as float64 (``-inf`` for zeros)."""
    with np.errstate(divide="ignore"):
        return np.log(np.abs(m)) + e.astype(np.float64) * math.log(2.0)


def from_int(k: int) -> tuple[float, int]:
    """A Python int of any size as ``(m, e)``, correctly truncated to 64 bits before rounding."""
    if k == 0:
        return 0.0, ZERO_EXPONENT
    shift = max(abs(k).bit_length() - 64, 0)
    f, e = math.frexp(float(abs(k) >> shift))
    return (f if k > 0 else -f), e + shift


def from_ratio(num: int, den: int) -> tuple[float, int]:
    """``num / den`` for Python ints of any size (``den > 0``) as ``(m, e)``, to a few ulps."""
    if num == 0:
        return 0.0, ZERO_EXPONENT
    # 64 significant bits of the quotient: exact integer division after a shift
    shift = 64 + den.bit_length() - abs(num).bit_length()
    q = (abs(num) << shift) // den if shift >= 0 else abs(num) // (den << -shift)
    f, e = from_int(q)
    return (f if num > 0 else -f), e - shift


class ExtendedTensor(NamedTuple):
    """Values ``mantissa * 2**exponent`` that never overflow or underflow.

    Attributes:
        mantissa: float64 tensor; ``|mantissa|`` in ``[0.5, 1)``, or 0 for a zero value. Carries
            the sign.
        exponent: int64 tensor of the same shape (:data:`ZERO_EXPONENT` where the value is 0).
    """

    mantissa: torch.Tensor
    exponent: torch.Tensor

    @classmethod
    def from_numpy(cls, m: np.ndarray, e: np.ndarray) -> ExtendedTensor:
        return cls(torch.from_numpy(np.array(m, np.float64)), torch.from_numpy(np.array(e, np.int64)))

    def numpy(self) -> Pair:
        """``(mantissa, exponent)`` as numpy arrays, exponent int32, for the arithmetic above."""
        return self.mantissa.numpy(), self.exponent.numpy().astype(np.int32)

    def log(self) -> torch.Tensor:
        """``log |value|`` (float64; ``-inf`` for zeros), finite for every non-zero value."""
        return torch.log(self.mantissa.abs()) + self.exponent.to(torch.float64) * math.log(2.0)

    def sign(self) -> torch.Tensor:
        """-1.0, 0.0 or 1.0 (float64)."""
        return torch.sign(self.mantissa)

    def to_float(self) -> torch.Tensor:
        """The plain float64 values: ``inf`` or 0.0 where they are out of float64's range."""
        return torch.ldexp(self.mantissa, self.exponent.clamp(-2000, 2000).to(torch.float64))
