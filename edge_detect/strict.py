"""Strict reading of settings: one helper for every configuration table and dataclass.

Every setting that reaches the runtime (a TOML table, a model's metadata, a dataclass built in
code) is checked the same way, and a wrong one is refused with one line that names the key, says
what was expected and what arrived::

    config.toml [clips]: max_mb must be a finite number between 0 and 1e+06; got nan

Rules:

- a table must be a mapping and may hold only known keys (a typo is an error, not a default);
- numbers are finite (``nan`` and ``inf`` are refused everywhere: ``nan < 3`` is False, so a NaN
  slips through every comparison that was meant to bound it) and within the field's range;
  ``bool`` is never a number; integers are whole numbers;
- a dataclass declares each checked field's kind and range once, with :func:`setting`, and calls
  :func:`check_fields` in ``__post_init__``, so code that builds it directly is checked as well
  as :func:`strict_from_dict`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from edge_detect.errors import ConfigError

__all__ = [
    "check_bool",
    "check_field",
    "check_fields",
    "check_integer",
    "check_path",
    "check_number",
    "check_string",
    "make_folder",
    "refuse_unknown",
    "setting",
    "shown",
    "strict_from_dict",
    "table",
]

T = TypeVar("T")

_SPEC = "edge_detect.strict"
"""Key of a field's specification in ``dataclasses.field(metadata=...)``."""


_SHOWN_CHARS = 60
"""Longest repr of a wrong value quoted in a message (a fuzzer's 10**400 is one line, too)."""


def shown(value: Any) -> str:
    """``repr(value)``, shortened to one readable line."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _join(where: str, key: str) -> str:
    return f"{where}: {key}" if where else key


def _number_text(x: float) -> str:
    """10000000 rather than 1e+07; 0.001 and 0.5 as they are."""
    return str(int(x)) if x == int(x) and abs(x) < 1e15 else f"{x:g}"


def _span(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f" between {_number_text(low)} and {_number_text(high)}"
    if low is not None:
        return f" >= {_number_text(low)}"
    if high is not None:
        return f" <= {_number_text(high)}"
    return ""


def _is_finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float (TOML allows 64-bit, Python any)
        return False


def check_number(
    value: Any,
    key: str,
    *,
    low: float | None = None,
    high: float | None = None,
    where: str = "",
) -> float:
    """``value`` as a float if it is a finite number within [low, high]; else ConfigError."""
    finite = _is_finite_number(value)
    if not finite or (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(
            f"{_join(where, key)} must be a finite number{_span(low, high)}; got {shown(value)}"
        )
    return float(value)


def check_integer(
    value: Any,
    key: str,
    *,
    low: int | None = None,
    high: int | None = None,
    where: str = "",
) -> int:
    """``value`` if it is a whole number (not a bool) within [low, high]; else ConfigError."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or (low is not None and value < low)
        or (high is not None and value > high)
    ):
        raise ConfigError(
            f"{_join(where, key)} must be a whole number{_span(low, high)}; got {shown(value)}"
        )
    return int(value)


def check_bool(value: Any, key: str, *, where: str = "") -> bool:
    """``value`` if it is true or false; else ConfigError."""
    if not isinstance(value, bool):
        raise ConfigError(f"{_join(where, key)} must be true or false; got {shown(value)}")
    return value


def check_string(value: Any, key: str, *, where: str = "", what: str = "a string") -> str:
    """``value`` if it is a non-empty string without control characters; else ConfigError."""
    if not isinstance(value, str) or not value.strip() or any(not ch.isprintable() for ch in value):
        raise ConfigError(f"{_join(where, key)} must be {what}; got {shown(value)}")
    return value


def check_path(value: Any, key: str, *, where: str = "") -> str:
    """``value`` if it is a usable file or folder path: a non-empty string without NUL or other
    control characters (the operating system refuses a NUL, Python with a ValueError)."""
    return check_string(value, key, where=where, what="a file or folder path")


def make_folder(path: Path, what: str) -> None:
    """Create ``path`` if missing, but never its parents: a typo such as ``/var/lib/edge-detcet/x``
    must be an error naming it, not a new tree of folders. ConfigError when it cannot be made."""
    if path.is_dir():
        return
    if not path.parent.is_dir():
        raise ConfigError(
            f"cannot create {what} {path}: its parent {path.parent} does not exist; "
            "create it first, or check the path for a typo"
        )
    try:
        path.mkdir(exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create {what} {path}: {exc.strerror or exc}; choose a writable folder"
        ) from None


def table(value: Any, where: str) -> Mapping[str, Any]:
    """``value`` if it is a table (mapping with string keys); else ConfigError."""
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{where} must be a table of key = value; got {shown(value)}")
    return value


def refuse_unknown(data: Mapping[str, Any], known: Iterable[str], where: str) -> None:
    """ConfigError naming the unknown keys of ``data`` and the known ones."""
    known = list(known)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(known)}")


def setting(
    default: Any,
    *,
    kind: type = float,
    low: float | None = None,
    high: float | None = None,
    key: str | None = None,
) -> Any:
    """A dataclass field whose value :func:`check_fields` checks.

    Parameters
    ----------
    default
        The field's default (also checked: a default must be a valid value).
    kind
        ``float`` (a finite number; ints are accepted and converted), ``int`` (a whole number),
        ``bool`` or ``str``.
    low, high
        Inclusive bounds of a number (None: unbounded on that side).
    key
        The name shown in messages when it differs from the field name (e.g. ``input.block_ms``).
    """
    spec = {"kind": kind, "low": low, "high": high, "key": key}
    return dataclasses.field(default=default, metadata={_SPEC: spec})


def _check_value(value: Any, spec: Mapping[str, Any], key: str, where: str) -> Any:
    kind = spec["kind"]
    if kind is float:
        return check_number(value, key, low=spec["low"], high=spec["high"], where=where)
    if kind is int:
        return check_integer(value, key, low=spec["low"], high=spec["high"], where=where)
    if kind is bool:
        return check_bool(value, key, where=where)
    return check_string(value, key, where=where)


def check_field(
    cls: type, name: str, value: Any, *, key: str | None = None, where: str = ""
) -> Any:
    """``value`` checked (and normalised) as field ``name`` of the dataclass ``cls`` would be,
    named ``key`` in the message (a table's key may differ from the field's name)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return _check_value(value, fields[name].metadata[_SPEC], key or name, where)


def check_fields(obj: Any, where: str = "") -> None:
    """Check (and normalise: ints of float fields become floats) every :func:`setting` field.

    Call it first in ``__post_init__``; works on frozen dataclasses.
    """
    for f in dataclasses.fields(obj):
        spec = f.metadata.get(_SPEC)
        if spec is None:
            continue
        value = _check_value(getattr(obj, f.name), spec, spec["key"] or f.name, where)
        if value is not getattr(obj, f.name):
            object.__setattr__(obj, f.name, value)


def strict_from_dict(cls: type[T], data: Any, *, where: str) -> T:
    """Build the dataclass ``cls`` from a table: unknown keys refused, each value checked.

    Raises
    ------
    ConfigError
        One line naming ``where`` and the key: not a table, an unknown key, a wrong type, a
        non-finite or out-of-range number, or a rule of the dataclass's own ``__post_init__``.
    """
    data = table(data, where)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    refuse_unknown(data, fields, where)
    kwargs = {}
    for key, value in data.items():
        spec = fields[key].metadata.get(_SPEC)
        kwargs[key] = value if spec is None else _check_value(value, spec, key, where)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith(where) else f"{where}: {message}") from None
