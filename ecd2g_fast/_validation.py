"""Input checks shared by the public API.

Every public function validates its arguments once, here, and raises ``TypeError`` (wrong kind
of object or dtype) or ``ValueError`` (wrong shape or value) with a message that names the
argument and states what was expected.
"""

from __future__ import annotations

import numbers

import torch

#: Enumeration-only methods (full potential tables, exact output distributions, the samplers
#: that visit every neighbour state) refuse circuits with more states than this.
MAX_ENUMERABLE_STATES = 2**24
#: ``Circuit.currents`` materialises ``L * M * M`` float64 values; it refuses more than this.
MAX_DENSE_CURRENT_ENTRIES = 2**28
#: ``|sum(p) - 1|`` must not exceed this for a pmf argument.
PMF_SUM_TOLERANCE = 1e-6


def check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_tensor(name: str, value: object) -> torch.Tensor:
    """A dense tensor holding data (not sparse, not on the ``meta`` device)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {value.layout}")
    if value.device.type == "meta":
        raise ValueError(f"{name} must hold data, got a tensor on the meta device")
    return value


#: Integer dtypes accepted for states besides int64; they are cast to int64 once, on entry.
NARROW_STATE_DTYPES = (torch.int8, torch.int16, torch.int32, torch.uint8)


def check_integer_dtype(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as int64: int64 as is, a narrower integer dtype (:data:`NARROW_STATE_DTYPES`) cast.

    Raises:
        TypeError: any other dtype, naming ``name`` and what to pass.
    """
    if tensor.dtype == torch.int64:
        return tensor
    if tensor.dtype in NARROW_STATE_DTYPES:
        return tensor.to(torch.int64)
    raise TypeError(
        f"{name} must have dtype torch.int64 (or int8, int16, int32, uint8, cast to int64), got {tensor.dtype}"
    )


def check_states(
    name: str, states: object, num_categories: int, dim: int, *, check_values: bool = True
) -> torch.Tensor:
    """Check a ``(B, D)`` tensor of states with entries in ``[0, K)``; return it as int64.

    int64 states are returned as they are; int8, int16, int32 and uint8 states are cast to int64
    once (callers must use the returned tensor). ``check_values=False`` checks type, dtype and
    shape only (no device-to-host sync); callers then check the values with :func:`check_ranges`,
    or not at all.

    Raises:
        TypeError: not a tensor, or not an integer dtype of :func:`check_integer_dtype`.
        ValueError: not ``(B, D)``, or (``check_values``) an entry outside ``[0, K)``.
    """
    states = check_integer_dtype(name, check_tensor(name, states))
    if states.dim() != 2 or states.shape[1] != dim:
        raise ValueError(f"{name} must have shape (B, {dim}) (D = {dim}), got {tuple(states.shape)}")
    if check_values:
        check_ranges([state_range(name, states, num_categories)])
    return states


def check_generator(name: str, generator: object, device: torch.device) -> torch.Generator | None:
    """A ``torch.Generator`` on ``device`` (or None) as it is; an int seed as a new seeded one.

    Args:
        name: the argument's name, for messages.
        generator: None, a ``torch.Generator`` on ``device``'s type, or an int seed in
            ``[-2**63, 2**64)`` (``torch.Generator(device).manual_seed(seed)``).
        device: where the draws happen.

    Raises:
        TypeError: any other type.
        ValueError: a generator on another device type, or a seed out of range.
    """
    if generator is None:
        return None
    if isinstance(generator, torch.Generator):
        if generator.device.type != device.type:
            raise ValueError(f"{name} must be a torch.Generator on {device}, got one on {generator.device}")
        return generator
    if isinstance(generator, numbers.Integral) and not isinstance(generator, bool):
        seed = int(generator)
        if not -(2**63) <= seed < 2**64:
            raise ValueError(f"{name} as an int seed must lie in [-2**63, 2**64), got {seed}")
        return torch.Generator(device=device).manual_seed(seed)
    raise TypeError(f"{name} must be a torch.Generator, an int seed or None, got {type(generator).__name__}")


#: ``(name, tensor, low, high, description)``: the values of ``tensor`` must lie in ``[low, high)``.
ValueRange = tuple[str, torch.Tensor, int, int, str]


def state_range(name: str, states: torch.Tensor, num_categories: int) -> ValueRange:
    """The :data:`ValueRange` of a states tensor: entries in ``[0, K)``."""
    return (name, states, 0, num_categories, f"states in [0, {num_categories}) (K = {num_categories})")


def check_ranges(ranges: list[ValueRange]) -> None:
    """Check integer tensors' values against their ranges with one device-to-host copy for all.

    Raises:
        ValueError: naming the first tensor out of range, its allowed and its actual range.
    """
    present = [r for r in ranges if r[1].numel()]
    if not present:
        return
    bounds = torch.stack([v for r in present for v in torch.aminmax(r[1])]).tolist()
    for (name, _, low, high, description), lo, hi in zip(present, bounds[::2], bounds[1::2]):
        if lo < low or hi >= high:
            raise ValueError(f"{name} must hold {description}, got values in [{lo}, {hi}]")


def check_pmf(name: str, pmf: object, num_states: int) -> torch.Tensor:
    """Check a probability vector of length M; return it as float64."""
    pmf = check_tensor(name, pmf)
    if not pmf.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {pmf.dtype}")
    if pmf.dim() != 1 or pmf.shape[0] != num_states:
        raise ValueError(f"{name} must have shape ({num_states},) (M = K**D), got {tuple(pmf.shape)}")
    pmf = pmf.to(torch.float64)
    if not bool(torch.isfinite(pmf).all()):
        raise ValueError(f"{name} must be finite")
    if bool((pmf < 0).any()):
        raise ValueError(f"{name} must be non-negative, got minimum {float(pmf.min())}")
    total = float(pmf.sum())
    if abs(total - 1.0) > PMF_SUM_TOLERANCE:
        raise ValueError(f"{name} must sum to 1 (within {PMF_SUM_TOLERANCE}), got {total!r}")
    return pmf


def check_enumerable(what: str, num_states: int) -> None:
    if num_states > MAX_ENUMERABLE_STATES:
        raise ValueError(
            f"{what} enumerates all M = K**D states and supports M <= {MAX_ENUMERABLE_STATES} "
            f"(2**24); this circuit has M = {_short_int(num_states)}"
        )


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str):  # also keeps unhashable or array values out of `in`
        raise ValueError(
            f"{name} must be one of {', '.join(map(repr, choices))}; got a {type(value).__name__}"
        )
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value  # type: ignore[return-value]


def _short_int(n: int) -> str:
    # str() of a huge int is slow and limited (sys.get_int_max_str_digits); print a magnitude.
    if n.bit_length() <= 64:
        return str(n)
    return f"~2**{n.bit_length() - 1}"
