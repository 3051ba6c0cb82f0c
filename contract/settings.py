"""Typed, bounded TOML settings: the one loader both services' configs are built on.

A service describes each config section as a frozen dataclass whose fields carry their
docstring where they are defined and their bounds in ``metadata`` (see :func:`bounded`).
:func:`section` checks types, bounds and unknown keys generically, so a bad file fails at start
with a :class:`~contract.errors.ConfigError` naming the key (``buffer.flush_interval_ms``)
instead of running with a silent default. Relative paths resolve against the config file's folder.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import json
import math
import textwrap
import tomllib
import typing
from dataclasses import field
from enum import StrEnum
from pathlib import Path
from typing import Any

from contract.errors import ConfigError

__all__ = ["bounded", "describe", "read_toml", "section", "split_host_port", "table"]

_T = typing.TypeVar("_T")


def bounded(
    default: Any = dataclasses.MISSING, *, lo: float | None = None, hi: float | None = None
) -> Any:
    """A dataclass field with inclusive bounds that :func:`section` enforces."""
    return field(default=default, metadata={"lo": lo, "hi": hi})


def read_toml(path: Path) -> dict[str, Any]:
    """Parse the TOML file at ``path``; any problem is a :class:`ConfigError` naming the file."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read the config file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), "the config file is not UTF-8") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from exc


def table(raw: dict[str, Any], key: str) -> dict[str, Any]:
    """The sub-table ``key`` of ``raw`` (empty if absent); anything else is a ConfigError."""
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(key, "must be a table")
    return value


def section(cls: type[_T], raw: dict[str, Any], prefix: str, base: Path) -> _T:
    """Build dataclass ``cls`` from the TOML table ``raw`` found at ``prefix``."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in raw:
        if key not in fields or key == "path":
            raise ConfigError(f"{prefix}.{key}", f"unknown key (known: {', '.join(fields)})")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}"
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(key, "is required")
            if isinstance(f.default, Path) and not f.default.is_absolute():
                values[name] = base / f.default  # defaults are relative to the file, too
            continue
        if typing.get_origin(hints[name]) is tuple and typing.get_args(hints[name]) == (
            str,
            Ellipsis,
        ):
            values[name] = _strings(key, raw[name])
        else:
            values[name] = _coerce(key, raw[name], hints[name], f.metadata, base)
    return cls(**values)


def _coerce(key: str, value: object, hint: Any, meta: Any, base: Path) -> Any:
    if typing.get_args(hint) == (Path, type(None)):  # ``Path | None``: set means a path
        hint = Path
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(key, f"must be an integer, got {value!r}")
        _check_bounds(key, value, meta)
        return value
    if hint is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(key, f"must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(key, f"must be a finite number, got {value!r}")
        _check_bounds(key, value, meta)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, got {value!r}")
        return value
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(key, f"must be a non-empty path string, got {value!r}")
        p = Path(value).expanduser()
        return p if p.is_absolute() else base / p
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        choices = [m.value for m in hint]
        if value not in choices:
            raise ConfigError(
                key, f"must be one of {', '.join(repr(c) for c in choices)}, got {value!r}"
            )
        return hint(value)
    raise ConfigError(key, "cannot be set in the config file")  # pragma: no cover


def _strings(key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(key, f"must be a list of non-empty strings, got {value!r}")
    return tuple(value)


def _check_bounds(key: str, value: float, meta: Any) -> None:
    lo, hi = meta.get("lo"), meta.get("hi")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(key, f"must be between {_num(lo)} and {_num(hi)}, got {value!r}")


def _num(x: float | None) -> str:
    if isinstance(x, float) and x.is_integer():
        return str(int(x)) if abs(x) >= 1 else str(x)
    return str(x)


def split_host_port(listen: str) -> tuple[str, int]:
    """``("127.0.0.1", 8080)`` from ``"127.0.0.1:8080"``; ``ValueError`` saying what is wrong."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"must be host:port, got {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if port > 65_535:
        raise ValueError(f"port must be 0..65535, got {port}")
    return host, port


def describe(cls: type) -> list[tuple[str, str, str, str]]:
    """``(key, type, default, doc)`` for every field of a settings dataclass, the doc being the
    docstring written under the field: the config reference is generated from this."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    docs: dict[str, str] = {}
    body = tree.body[0].body if isinstance(tree.body[0], ast.ClassDef) else []
    for node, nxt in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name == "path":
            continue
        hint = hints[f.name]
        kind = getattr(hint, "__name__", str(hint))
        if typing.get_args(hint) == (Path, type(None)):
            kind = "Path (optional)"
        if f.default is not dataclasses.MISSING:
            default = repr(f.default.value if isinstance(f.default, StrEnum) else f.default)
            if isinstance(f.default, tuple) and all(isinstance(v, str) for v in f.default):
                default = json.dumps(list(f.default))  # as it is written in TOML
            if f.default is None:
                default = "unset"
            if isinstance(f.default, Path):
                default = repr(str(f.default))
        elif f.default_factory is not dataclasses.MISSING:
            default = "(see below)"
        else:
            default = "required"
        out.append((f.name, kind, default, docs.get(f.name, "")))
    return out
