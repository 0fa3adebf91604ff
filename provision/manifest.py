"""Dataset manifests: which files make up a data set, their sizes, checksums, and subset selection."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import ConfigError
from .schema import build, did_you_mean, set_by_tool
from .yamlfile import read_yaml

SUBSET_KEY = re.compile(r"subset(\d+)")
MAX_SUBSET = 9999  # LUNA16 has 10; a range to a hundred million would only fill memory


FIT = "fit"  # data.subsets: as many as fit on the disk, from the lowest (the plan decides, with the cache's measured size)


def parse_subsets(value: Any, path: str = "subsets") -> tuple[int, ...] | str | None:
    """``all`` -> None; ``fit`` -> FIT; ``"0-3"``, ``"0,2,5"``, ``[0, 2, 5]``, ``3`` -> sorted unique numbers."""
    if value is None or value == "all":
        return None
    if value == FIT:
        return FIT
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
            if not 0 <= item <= MAX_SUBSET:
                raise ValueError(f"{item} is not a subset number (0 to {MAX_SUBSET})")
            numbers.add(item)
            continue
        match = re.fullmatch(r"(\d+)\s*(?:-\s*(\d+))?", str(item))
        if not match:
            raise ValueError(f"{item!r} is not a subset number or range (write e.g. '0-3' or '0,2,5')")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        if high < low:
            raise ValueError(f"range {item!r} runs backwards")
        if high > MAX_SUBSET:
            raise ValueError(f"subset {high} is past any data set's numbering (at most {MAX_SUBSET})")
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


def _parse_ratio(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 < value <= 1000:
        raise ValueError(f"expected how many times larger the unpacked data is than its archive (e.g. 1.8), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class PinnedMember:
    """One member of an archive as the data set has it: its path inside the archive, size and CRC-32."""

    name: str
    size: int
    crc: int


@dataclass(frozen=True)
class ManifestFile:
    """One file of a data set. ``size``/``md5`` may be None until resolved from a source.

    ``pinned``: the archive's members, from ``<manifest>.members.yaml`` (written by `provision pin`).
    """

    key: str = field(metadata={"parse": _parse_key})
    record: str | None = None
    size: int | None = field(default=None, metadata={"parse": _parse_size})
    md5: str | None = field(default=None, metadata={"parse": _parse_md5})
    unpack: bool = False
    unpacked_size: int | None = field(default=None, metadata={"parse": _parse_size})
    members: int | None = field(default=None, metadata={"parse": _parse_size})
    pinned: tuple[PinnedMember, ...] = field(default=(), metadata={"parse": set_by_tool})

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
    unpack_ratio: float = field(default=3.0, metadata={"parse": _parse_ratio})
    sources: tuple[str, ...] = ()  # where its files are when no profile setting names a source for it (chapter 15's assets)
    path: str = field(default="", metadata={"parse": set_by_tool})

    @property
    def subsets(self) -> tuple[int, ...]:
        return tuple(sorted({f.subset for f in self.files if f.subset is not None}))

    def select(self, subsets: tuple[int, ...] | str | None) -> tuple[ManifestFile, ...]:
        """Files for the chosen subsets (all for ``all`` and, until the plan has chosen, ``fit``); files without a subset
        number are always included."""
        if subsets is None or isinstance(subsets, str):
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
    pins = load_pins(pins_path(path), set(keys))
    files = tuple(dataclasses.replace(f, pinned=pins[f.key][1], unpacked_size=f.unpacked_size or pins[f.key][0], members=f.members or len(pins[f.key][1]))
                  if f.key in pins else f for f in manifest.files)
    return dataclasses.replace(manifest, files=files, path=str(path))


def pins_path(manifest: Path) -> Path:
    """luna16.yaml -> luna16.members.yaml beside it."""
    return manifest.with_name(manifest.stem + ".members.yaml")


def load_pins(path: Path, keys: set[str]) -> dict[str, tuple[int, tuple[PinnedMember, ...]]]:
    """key -> (unpacked size, members) from a pins file; {} when there is none."""
    if not path.is_file():
        return {}
    raw = read_yaml(path).get("files")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected 'files:' mapping each archive to its members", hint="regenerate it with `provision pin`", file=str(path))
    pins = {}
    for key, entry in raw.items():
        if key not in keys:
            raise ConfigError(f"{path}: {key} is not a file of the data set", hint="regenerate it with `provision pin`", file=str(path))
        try:
            members = tuple(PinnedMember(str(name), int(size), int(str(crc), 16)) for name, size, crc in entry["members"])
            pins[key] = (sum(m.size for m in members), members)
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{path}: {key}: each member must be [name, size, crc32 in hex]", hint="regenerate it with `provision pin`",
                              file=str(path)) from None
    return pins


def dump_pins(pins: dict[str, tuple[PinnedMember, ...]]) -> str:
    """The text of a pins file (members as compact [name, size, crc] rows)."""
    lines = ["# Written by `provision pin` from each archive's central directory: every member's name, size and CRC-32.",
             "# Staging checks members against these (also from an unpacked copy, and in stream mode with parallel ranges).",
             "files:"]
    for key in sorted(pins):
        lines.append(f"  {key}:")
        lines.append("    members:")
        lines += [f"      - [{json.dumps(m.name)}, {m.size}, \"{m.crc:08x}\"]" for m in pins[key]]
    return "\n".join(lines) + "\n"
