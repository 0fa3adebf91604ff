"""Reading YAML the tool is given (profiles, manifests, the book's fixes, the wheel table, --set values), safely.

Beyond ``yaml.safe_load``: a key given twice in one mapping is an error (YAML would keep the last silently),
aliases are limited (nested anchors can expand a few lines into gigabytes: a "billion laughs"), and a NUL
character anywhere is refused, as paths and names cannot hold one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

MAX_ALIASES = 50  # a profile has no use for more; a YAML bomb needs thousands


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and counts aliases."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise yaml.YAMLError(f"more than {MAX_ALIASES} aliases (*name) at line {mark.line + 1}: refused, as nested "
                                     "aliases can expand without bound")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: SafeLoader says so itself below
                continue
            if first != key_node.start_mark.line + 1:
                raise yaml.YAMLError(f"key {key!r} is given twice (lines {first} and {key_node.start_mark.line + 1}): "
                                     "only one can count; remove the other")
        return super().construct_mapping(node, deep=deep)


def load_text(text: str) -> Any:
    """Parse YAML text strictly (see the module's docstring); raises yaml.YAMLError."""
    if "\x00" in text:
        raise yaml.YAMLError("it contains a NUL character")
    loader = _StrictLoader(text)
    try:
        data = loader.get_single_data()
    finally:
        loader.dispose()
    _refuse_nul(data, "")
    return data


def _refuse_nul(value: Any, where: str) -> None:
    """A NUL written as an escape ("a\\0b") appears only once parsed: no key or value may hold one."""
    if isinstance(value, str) and "\x00" in value:
        raise yaml.YAMLError(f"{where or 'a value'} holds a NUL character")
    if isinstance(value, dict):
        for key, item in value.items():
            _refuse_nul(key, f"a key under {where or 'the top level'}")
            _refuse_nul(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _refuse_nul(item, f"{where}[{i}]")


def read_yaml(path: Path) -> dict[str, Any]:
    """Read one YAML file that must hold a mapping (an empty file is an empty mapping)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", hint="check the path and its permissions", file=str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x})",
                          hint="save it as UTF-8 (a YAML file is text)", file=str(path)) from None
    try:
        data = load_text(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}", hint="fix the YAML", file=str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}", hint="write 'key: value' lines", file=str(path))
    return data
