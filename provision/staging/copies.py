"""An unpacked copy as a source: a read-only mount (Kaggle's /kaggle/input/<dataset>/, an NFS share).

Nothing is downloaded or copied, and nothing is written into the copy: each selected subset's scans
are found in it (also one nesting level deeper, as published copies have them: subset0/subset0/),
checked, and linked into the layout the book's code expects (<root>/part2/luna/subsetN/, symlinks).
A scan is checked against its MetaImage header (the .raw must hold DimSize x ElementType bytes) or,
where the manifest pins its members, against their sizes and CRC-32s. A subset that fails a check
falls back to the next source like any failed download.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..sources import KAGGLE_INPUT
from .extract import crc_of
from .transfer import PermanentError

SUBSET_DIR = re.compile(r"subset(\d+)$")
SEARCH_DEPTH = 4  # <copy>/<folder>/<folder>/subsetN/subsetN
KAGGLE_SEARCH_DEPTH = 7  # /kaggle/input/datasets/<owner>/<slug>/<folder>/<folder>/subsetN/subsetN
ELEMENT_BYTES = {"MET_UCHAR": 1, "MET_CHAR": 1, "MET_USHORT": 2, "MET_SHORT": 2, "MET_UINT": 4, "MET_INT": 4, "MET_FLOAT": 4,
                 "MET_ULONG": 8, "MET_LONG": 8, "MET_DOUBLE": 8}


class CopyDamaged(PermanentError):
    """The copy lacks scans or holds damaged ones: that subset comes from the next source."""


@dataclass(frozen=True)
class CopyFile:
    """One file of a subset in the copy, and the name it takes under the data set's folder."""

    name: str   # subsetN/<uid>.mhd
    path: Path
    size: int


def find_subsets(root: Path, depth: int = SEARCH_DEPTH) -> dict[int, str]:
    """subset number -> the folder under ``root`` that holds its .mhd files.

    One walk, top-down in name order, at most ``depth`` levels deep, listing folders but never reading or
    stat-ing the scans: the first data set that has a subset wins, except that a subset folder nested in
    its own (subset0/subset0/, as published copies have it) wins over the outer one. Below a subset
    folder only such a nested one is entered; hidden folders are not entered at all.
    """
    found: dict[int, str] = {}
    if not root.is_dir():
        return found
    base = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if len(here.parts) - base >= depth:
            dirnames[:] = []
        match = SUBSET_DIR.match(here.name)
        if not match:
            continue
        number = int(match.group(1))
        if any(name.endswith(".mhd") for name in filenames):
            current = found.get(number)
            if current is None or Path(current) in here.parents:
                found[number] = dirpath
        dirnames[:] = [d for d in dirnames if d == here.name]  # only subsetN/subsetN below a subset folder
    return found


def find_plain(root: Path, key: str, near: Sequence[str] = (), depth: int = 2) -> str | None:
    """A plain file of the data set (annotations.csv): beside or above a subset folder found in the copy (up to
    ``root``), else near the top of the copy; None when there is none."""
    for folder in near:
        here = Path(folder)
        while here == root or root in here.parents:
            if (here / key).is_file():
                return str(here / key)
            here = here.parent
    for level in range(depth + 1):
        for candidate in sorted(root.glob("/".join(["*"] * level + [key]))):
            if candidate.is_file():
                return str(candidate)
    return None


def kaggle_copies(input_dir: Path = Path(KAGGLE_INPUT)) -> dict[int, str]:
    """Subsets found in any data set mounted under Kaggle's input folder, in either of its layouts:
    ``/kaggle/input/<slug>/`` and (since mid-2026) ``/kaggle/input/datasets/<owner>/<slug>/``."""
    return find_subsets(input_dir, KAGGLE_SEARCH_DEPTH)


def read_header(mhd: Path) -> dict[str, str]:
    fields = {}
    with open(mhd, encoding="latin-1") as fh:
        for line in fh:
            key, sep, value = line.partition("=")
            if sep:
                fields[key.strip()] = value.strip()
    return fields


def raw_size_from_header(header: dict[str, str]) -> int | None:
    """The bytes a .raw must hold: the product of DimSize times the element size (None when it cannot tell)."""
    try:
        dims = [int(x) for x in header["DimSize"].split()]
        element = ELEMENT_BYTES[header["ElementType"]] * int(header.get("ElementNumberOfChannels", "1"))
    except (KeyError, ValueError):
        return None
    if header.get("CompressedData", "False").lower() == "true":
        return None
    total = element
    for d in dims:
        total *= d
    return total + int(header.get("HeaderSize", "0") or 0)


def scan_files(folder: Path, subset: int) -> list[CopyFile]:
    """The subset's .mhd files and the .raw each names, checked against its header; CopyDamaged names what is wrong."""
    files: list[CopyFile] = []
    problems: list[str] = []
    for mhd in sorted(folder.glob("*.mhd")):
        header = read_header(mhd)
        raw_name = header.get("ElementDataFile", mhd.with_suffix(".raw").name)
        raw = mhd.parent / raw_name
        try:
            raw_size = raw.stat().st_size
        except OSError:
            problems.append(f"{mhd.name} names {raw_name}, which is missing")
            continue
        expected = raw_size_from_header(header)
        if expected is not None and raw_size != expected:
            problems.append(f"{raw} holds {raw_size} bytes, its header ({mhd.name}: DimSize {header.get('DimSize')}, "
                            f"{header.get('ElementType')}) says {expected}")
            continue
        files.append(CopyFile(f"subset{subset}/{mhd.name}", mhd, mhd.stat().st_size))
        files.append(CopyFile(f"subset{subset}/{raw.name}", raw, raw_size))
    if problems:
        raise CopyDamaged(f"the copy's subset{subset} ({folder}) is damaged: " + "; ".join(problems[:5]) +
                          (f"; and {len(problems) - 5} more" if len(problems) > 5 else ""))
    if not files:
        raise CopyDamaged(f"the copy's subset{subset} ({folder}) holds no scans")
    return files


def check_against_pins(files: list[CopyFile], pins: dict[str, tuple[int, int]], subset: int, folder: str) -> dict[str, int]:
    """Sizes and CRC-32s of the copy's files against the manifest's pinned members; returns name -> CRC."""
    have = {f.name: f for f in files}
    missing = sorted(set(pins) - set(have))
    wrong = [f"{name} holds {have[name].size} bytes, not {size}" for name, (size, _) in sorted(pins.items()) if name in have and have[name].size != size]
    if missing or wrong:
        raise CopyDamaged(f"the copy's subset{subset} ({folder}) differs from the data set: "
                          + "; ".join([f"{len(missing)} file(s) missing, e.g. {missing[0]}"] if missing else []) + "; ".join(wrong[:3]))
    crcs = {}
    for name, (_size, crc) in sorted(pins.items()):
        got = crc_of(have[name].path)
        if got != crc:
            raise CopyDamaged(f"the copy's {have[name].path} has CRC-32 {got:08x}, the data set's {name} has {crc:08x}")
        crcs[name] = got
    return crcs


def link_files(files: list[CopyFile], target: Path) -> None:
    """A symlink per file under ``target`` (each made under a temporary name, then renamed into place)."""
    for f in files:
        dest = target / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_symlink() and os.readlink(dest) == str(f.path):
            continue
        tmp = Path(tempfile.mktemp(prefix=f".{dest.name}.", suffix=".link", dir=dest.parent))
        os.symlink(f.path, tmp)
        os.replace(tmp, dest)
