"""Settings dataclasses: each setting declared once, with its default, help text and check.

A settings class is a frozen dataclass whose fields are declared with :func:`setting`. From that
one declaration follow the validation (:meth:`Settings.__post_init__`, with ``TypeError`` /
``ValueError`` naming the setting), the JSON round trip (:meth:`Settings.to_json`,
:meth:`Settings.from_json`), validated copies (:meth:`Settings.replace`) and the command-line
options (:func:`add_options`, :func:`options_from_args`). A new setting is one new field.

Checks are small callables ``check(name, value) -> value``; :func:`integer`, :func:`real`,
:func:`choice`, :func:`optional`, :func:`text` and :func:`mapping` make the common ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import typing
from collections.abc import Callable, Iterable
from typing import Any

Check = Callable[[str, Any], Any]


# ---------------------------------------------------------------------------- checks
def integer(minimum: int, maximum: int | None = None) -> Check:
    """An ``int`` (not a bool) ``>= minimum`` (and ``<= maximum`` if given)."""

    def check(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ValueError(f"{name} must be <= {maximum}, got {value}")
        return value

    check.parse = int  # type: ignore[attr-defined]
    return check


def real(low: float, *, inclusive: bool, high: float = math.inf) -> Check:
    """A finite real number ``> low`` (``>= low`` if ``inclusive``) and ``< high``; returned as float."""

    def check(name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
        try:
            value = float(value)
        except OverflowError:
            raise ValueError(f"{name} must be finite, got an int beyond float64") from None
        above = value >= low if inclusive else value > low
        if not (math.isfinite(value) and above and value < high):
            bound = f"{'>=' if inclusive else '>'} {low}" + (f" and < {high}" if high < math.inf else "")
            raise ValueError(f"{name} must be finite and {bound}, got {value}")
        return value

    check.parse = float  # type: ignore[attr-defined]
    return check


def choice(choices: Iterable[str] | Callable[[], Iterable[str]]) -> Check:
    """One of ``choices`` (a collection, or a function returning it when the check runs)."""

    def allowed() -> tuple[str, ...]:
        return tuple(choices() if callable(choices) else choices)

    def check(name: str, value: Any) -> str:
        options = allowed()
        if not isinstance(value, str):  # also keeps unhashable or array values out of `in`
            raise ValueError(
                f"{name} must be one of {', '.join(map(repr, options))}; got a {type(value).__name__}"
            )
        if value not in options:
            raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}")
        return value

    check.parse = str  # type: ignore[attr-defined]
    check.choices = allowed  # type: ignore[attr-defined]
    return check


def text(name: str, value: Any) -> str:
    """A non-empty ``str``."""
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a non-empty str, got {value!r}")
    return value


text.parse = str  # type: ignore[attr-defined]


def flag(name: str, value: Any) -> bool:
    """A ``bool``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def _parse_bool(text_value: str) -> bool:
    lowered = text_value.lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"expected true or false, got {text_value!r}")


flag.parse = _parse_bool  # type: ignore[attr-defined]


def mapping(name: str, value: Any) -> dict:
    """A ``dict`` with ``str`` keys (JSON object on the command line); returned as a copy."""
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise TypeError(f"{name} must be a dict with str keys, got {type(value).__name__}")
    return dict(value)


def _parse_json_object(text_value: str) -> dict:
    try:
        value = json.loads(text_value)
    except json.JSONDecodeError as error:
        raise ValueError(f"expected a JSON object, got {text_value!r} ({error})") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {text_value!r}")
    return value


mapping.parse = _parse_json_object  # type: ignore[attr-defined]


def optional(inner: Check) -> Check:
    """``None`` (written ``none`` on the command line) or what ``inner`` accepts."""

    def check(name: str, value: Any) -> Any:
        return None if value is None else inner(name, value)

    def parse(text_value: str) -> Any:
        return None if text_value.lower() in ("none", "auto") else inner.parse(text_value)  # type: ignore[attr-defined]

    check.parse = parse  # type: ignore[attr-defined]
    check.inner = inner  # type: ignore[attr-defined]
    return check


# ---------------------------------------------------------------------------- declaring settings
def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    check: Check,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    cli: bool = True,
    resume: bool = True,
    group: str = "",
) -> Any:
    """A dataclass field of a :class:`Settings` class.

    Args:
        default: the default value (or ``default_factory`` for mutable ones).
        help: one line for the documentation and ``--help``.
        check: validates and normalises the value (``check(name, value) -> value``).
        cli: whether :func:`add_options` makes a command-line option of it.
        resume: whether a resumed run must use the same value (:meth:`Settings.resume_key`).
        group: a free label by which :func:`add_options` can select fields.
    """
    metadata = {"help": help, "check": check, "cli": cli, "resume": resume, "group": group}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


class Settings:
    """Base of the settings dataclasses (subclasses are ``@dataclass(frozen=True)``)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            check = f.metadata.get("check")
            if check is not None:
                object.__setattr__(self, f.name, check(f.name, getattr(self, f.name)))

    def replace(self, **changes: Any):
        """A validated copy with ``changes`` applied.

        Raises:
            TypeError: an unknown setting name, or a value of the wrong type.
            ValueError: a value out of range.
        """
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        if unknown:
            raise TypeError(f"unknown {type(self).__name__} setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def to_json(self) -> dict:
        """A JSON-friendly dict (nested settings become nested dicts)."""
        return {
            f.name: _to_json(getattr(self, f.name))
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
        }

    @classmethod
    def from_json(cls, data: dict):
        """Inverse of :meth:`to_json`; validates every value.

        Raises:
            TypeError: ``data`` is not a dict, or names an unknown setting.
            ValueError: a value out of range.
        """
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__} JSON must be an object, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - set(fields)
        if unknown:
            raise TypeError(f"unknown {cls.__name__} setting(s): {', '.join(sorted(unknown))}")
        hints = typing.get_type_hints(cls)
        values = {}
        for name, value in data.items():
            nested = hints[name]
            if isinstance(nested, type) and issubclass(nested, Settings) and isinstance(value, dict):
                value = nested.from_json(value)
            values[name] = value
        return cls(**values)

    def resume_key(self) -> dict:
        """The settings a resumed run must share with its checkpoint (``resume=True`` fields)."""
        return {
            f.name: _to_json(getattr(self, f.name))
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if f.metadata.get("resume", True)
        }


def _to_json(value: Any) -> Any:
    return value.to_json() if isinstance(value, Settings) else value


# ---------------------------------------------------------------------------- command line
def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def cli_fields(cls: type, groups: Iterable[str] | None = None) -> list[dataclasses.Field]:
    """The fields of ``cls`` that become options (``cli=True``, and in ``groups`` if given)."""
    wanted = None if groups is None else set(groups)
    return [
        f
        for f in dataclasses.fields(cls)
        if f.metadata.get("cli", False) and (wanted is None or f.metadata.get("group", "") in wanted)
    ]


def add_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    groups: Iterable[str] | None = None,
    show_defaults: bool = True,
) -> None:
    """Add one ``--option`` per command-line field of ``cls`` (``snake_case`` -> ``--snake-case``).

    An option that is not given leaves no attribute: the configuration it is applied to keeps its
    value (:func:`options_from_args`); ``none`` sets an optional setting to None. Each value is
    parsed and checked by the field's own check, so a bad value is a usage error (exit 2) naming
    the option. ``show_defaults`` appends the field's default to the help text (off where a
    preset supplies the values).
    """
    for f in cli_fields(cls, groups):
        check = f.metadata["check"]

        def parse(text_value: str, _check: Check = check, _name: str = f.name) -> Any:
            try:
                return _check(_name, _check.parse(text_value))  # type: ignore[attr-defined]
            except (TypeError, ValueError) as error:
                raise argparse.ArgumentTypeError(str(error)) from None

        help_text = f.metadata["help"]
        if show_defaults and f.default is not dataclasses.MISSING:
            help_text += f" (default: {f.default})"
        choices = getattr(getattr(check, "inner", check), "choices", None)
        metavar = "{" + ",".join(choices()) + "}" if choices is not None else f.name.upper()
        parser.add_argument(
            _option(f.name),
            dest=f.name,
            type=parse,
            default=argparse.SUPPRESS,
            help=help_text,
            metavar=metavar,
        )


def options_from_args(args: argparse.Namespace, cls: type, groups: Iterable[str] | None = None) -> dict:
    """The options of ``cls`` given on the command line, as ``{field: value}`` (omitted ones left out)."""
    return {f.name: getattr(args, f.name) for f in cli_fields(cls, groups) if hasattr(args, f.name)}
