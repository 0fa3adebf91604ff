"""Turn validated YAML mappings into frozen dataclasses.

The dataclass definitions *are* the schema: field names are the allowed keys, type
annotations say what each value must be, and ``field(metadata={"parse": fn})`` adds a
custom parser for values with a richer syntax. Every error names the file and key path.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")

Parser = Callable[[Any, str], Any]
"""A custom field parser: (raw value, key path) -> parsed value; raises ValueError."""


def set_by_tool(value: Any, path: str) -> Any:
    """Parser for fields the tool fills in (where a config came from): a file may not set them."""
    raise ValueError("is set by the tool, not by a file")


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def join_path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else key


def build(
    cls: type[T],
    raw: Any,
    *,
    path: str,
    origin: Callable[[str], str],
) -> T:
    """Build dataclass ``cls`` from mapping ``raw``; ``origin(path)`` names the file a key came from."""
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{origin(path)}: '{path or 'top level'}' must be a mapping, got {_kind(raw)}",
            hint="write it as 'key: value' lines",
            file=origin(path),
            key=path,
        )
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    for key in raw:
        if key not in fields:
            key_path = join_path(path, str(key))
            raise ConfigError(
                f"{origin(key_path)}: unknown key '{key_path}'{did_you_mean(str(key), fields)}",
                hint=f"allowed keys here: {', '.join(sorted(fields))}",
                file=origin(key_path),
                key=key_path,
            )
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                key_path = join_path(path, name)
                raise ConfigError(
                    f"{origin(path)}: missing required key '{key_path}'",
                    hint=f"add '{name}:' to {origin(path)}",
                    file=origin(path),
                    key=key_path,
                )
            continue
        key_path = join_path(path, name)
        parse: Parser | None = f.metadata.get("parse")
        try:
            if parse is not None:
                values[name] = parse(raw[name], key_path)
            else:
                values[name] = convert(hints[name], raw[name], key_path, origin)
        except ValueError as exc:
            raise ConfigError(
                f"{origin(key_path)}: '{key_path}': {exc}",
                hint=f"fix '{key_path}' in {origin(key_path)}",
                file=origin(key_path),
                key=key_path,
            ) from None
    return cls(**values)


def convert(tp: Any, value: Any, path: str, origin: Callable[[str], str]) -> Any:
    """Check ``value`` against annotation ``tp``; raise ValueError saying what was expected."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return build(tp, value, path=path, origin=origin)
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for candidate in inner:
            try:
                return convert(candidate, value, path, origin)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(" or ".join(errors))
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected a list, got {_kind(value)}")
        return tuple(convert(args[0], v, join_path(path, i), origin) for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {_kind(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {_kind(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {_kind(value)}")
        return float(value)
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"expected a string, got {_kind(value)}")
        return str(value)
    raise TypeError(f"schema type {tp!r} is not supported")  # a bug in our schema, not user input


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    return f"{type(value).__name__} {value!r}"
