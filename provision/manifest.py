"""Dataset manifests: which files make up a data set, their sizes, checksums, and subset selection."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import ConfigError
from .schema import build, did_you_mean, set_by_tool

SUBSET_KEY = re.compile(r"subset(\d+)")


def parse_subsets(value: Any, path: str = "subsets") -> tuple[int, ...] | None:
    """``all`` -> None; ``"0-3"``, ``"0,2,5"``, ``[0, 2, 5]``, ``3`` -> sorted unique numbers."""
    if value is None or value == "all":
        return None
    if isinstance(value, bool):
        raise ValueError(f"expected 'all', a range like '0-3', a list like '0,2,5' or [0, 2, 5], got {value!r}")
    if isinstance(value, int):
        items: list[Any] = [value]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    elif isinstance(value, str):
        items = [part.strip() for part in value.split(",") if part.strip()]
    else:
        raise ValueError(f"expected 'all', a range like '0-3', a list like '0,2,5' or [0, 2, 5], got {value!r}")
    numbers: set[int] = set()
    for item in items:
        if isinstance(item, bool):
            raise ValueError(f"{item!r} is not a subset number")
        if isinstance(item, int):
            numbers.add(item)
            continue
        match = re.fullmatch(r"(\d+)\s*(?:-\s*(\d+))?", str(item))
        if not match:
            raise ValueError(f"{item!r} is not a subset number or range (write e.g. '0-3' or '0,2,5')")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        if high < low:
            raise ValueError(f"range {item!r} runs backwards")
        numbers.update(range(low, high + 1))
    if any(n < 0 for n in numbers):
        raise ValueError("subset numbers must not be negative")
    if not numbers:
        raise ValueError("no subsets selected")
    return tuple(sorted(numbers))


def format_subsets(numbers: tuple[int, ...] | list[int]) -> str:
    """(0, 1, 2, 4) -> '0-2,4'."""
    runs: list[str] = []
    ordered = sorted(numbers)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        runs.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(runs)


def _parse_key(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a file name")
    if "/" in value or "\\" in value or value in (".", "..") or value.startswith("."):
        raise ValueError(f"{value!r} must be a plain file name (no folders, not hidden)")
    return value


def _parse_md5(value: Any, path: str) -> str | None:
    if value is None:
        return None
    text = str(value).lower()
    if text.startswith("md5:"):
        text = text[4:]
    if not re.fullmatch(r"[0-9a-f]{32}", text):
        raise ValueError(f"{value!r} is not an md5 checksum (32 hex digits)")
    return text


def _parse_dir(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a relative folder like part2/luna")
    posix = PurePosixPath(value)
    if posix.is_absolute() or ".." in posix.parts:
        raise ValueError(f"{value!r} must be a folder relative to data.root, without '..'")
    return str(posix)


def _parse_size(value: Any, path: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a size in bytes, got {value!r}")
    return value


@dataclass(frozen=True)
class ManifestFile:
    """One file of a data set. ``size``/``md5`` may be None until resolved from a source."""

    key: str = field(metadata={"parse": _parse_key})
    record: str | None = None
    size: int | None = field(default=None, metadata={"parse": _parse_size})
    md5: str | None = field(default=None, metadata={"parse": _parse_md5})
    unpack: bool = False
    unpacked_size: int | None = field(default=None, metadata={"parse": _parse_size})
    members: int | None = field(default=None, metadata={"parse": _parse_size})

    @property
    def subset(self) -> int | None:
        match = SUBSET_KEY.search(self.key)
        return int(match.group(1)) if match else None


@dataclass(frozen=True)
class Manifest:
    """A data set: its files, and the folder (under ``data.root``) they unpack into."""

    name: str
    files: tuple[ManifestFile, ...]
    description: str = ""
    dir: str = field(default=".", metadata={"parse": _parse_dir})
    unpack_ratio: float = 3.0
    path: str = field(default="", metadata={"parse": set_by_tool})

    @property
    def subsets(self) -> tuple[int, ...]:
        return tuple(sorted({f.subset for f in self.files if f.subset is not None}))

    def select(self, subsets: tuple[int, ...] | None) -> tuple[ManifestFile, ...]:
        """Files for the chosen subsets; files without a subset number are always included."""
        if subsets is None:
            return self.files
        missing = sorted(set(subsets) - set(self.subsets))
        if missing:
            available = format_subsets(self.subsets) or "none"
            raise ConfigError(
                f"data set '{self.name}' has no subset {format_subsets(missing)} (it has {available})",
                hint=f"choose subsets among {available} with --subsets or data.subsets",
                key="data.subsets",
            )
        chosen = set(subsets)
        return tuple(f for f in self.files if f.subset is None or f.subset in chosen)


def manifest_path(dataset: str, configs_dir: Path) -> Path:
    """A dataset name under ``configs/datasets/`` or a path to a manifest file."""
    if "/" in dataset or dataset.endswith((".yaml", ".yml")):
        return Path(dataset)
    return configs_dir / "datasets" / f"{dataset}.yaml"


def load_manifest(dataset: str, configs_dir: Path) -> Manifest:
    """Read and validate a manifest by name or path."""
    from .config import read_yaml  # late: config imports this module

    path = manifest_path(dataset, configs_dir)
    if not path.is_file():
        known = sorted(p.stem for p in (configs_dir / "datasets").glob("*.yaml"))
        raise ConfigError(
            f"no dataset manifest '{dataset}'{did_you_mean(dataset, known)} ({path} does not exist)",
            hint=f"set data.dataset to one of: {', '.join(known) or '(none)'} or to a manifest file path",
            key="data.dataset",
        )
    manifest = build(Manifest, read_yaml(path), path="", origin=lambda p: str(path))
    keys = [f.key for f in manifest.files]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if not keys or repeated:
        problem = f"repeated file keys: {', '.join(repeated)}" if repeated else "'files' is empty"
        raise ConfigError(f"{path}: {problem}", hint="list each file of the data set once under 'files:'", file=str(path), key="files")
    return dataclasses.replace(manifest, path=str(path))
