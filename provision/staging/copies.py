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
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..sources import KAGGLE_INPUT
from .archive.extract import crc_of
from .signals import CopyDamaged

SUBSET_DIR = re.compile(r"subset(\d+)$")
SEARCH_DEPTH = 4  # <copy>/<folder>/<folder>/subsetN/subsetN
KAGGLE_SEARCH_DEPTH = 7  # /kaggle/input/datasets/<owner>/<slug>/<folder>/<folder>/subsetN/subsetN
ELEMENT_BYTES = {"MET_UCHAR": 1, "MET_CHAR": 1, "MET_USHORT": 2, "MET_SHORT": 2, "MET_UINT": 4, "MET_INT": 4, "MET_FLOAT": 4,
                 "MET_ULONG": 8, "MET_LONG": 8, "MET_DOUBLE": 8}


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


HEADER_MAX_BYTES = 64 * 1024  # a MetaImage header is a few hundred bytes; anything larger is not one


def read_header(mhd: Path) -> dict[str, str]:
    """The ``key = value`` lines of a MetaImage header (at most HEADER_MAX_BYTES are read)."""
    fields = {}
    with open(mhd, "rb") as fh:
        text = fh.read(HEADER_MAX_BYTES).decode("latin-1")
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def raw_size_from_header(header: dict[str, str]) -> int:
    """The bytes a .raw must hold: the product of DimSize times the element size; ValueError says why it cannot tell."""
    if header.get("CompressedData", "False").lower() == "true":
        raise ValueError("its data is compressed, so its size says nothing")
    if header.get("ElementType") not in ELEMENT_BYTES:
        raise ValueError(f"ElementType {header.get('ElementType')!r} is not a known element type")
    try:
        dims = [int(x) for x in header["DimSize"].split()]
        channels = int(header.get("ElementNumberOfChannels", "1"))
        offset = int(header.get("HeaderSize", "0") or 0)
    except (KeyError, ValueError):
        raise ValueError(f"DimSize {header.get('DimSize')!r} is not a list of whole numbers") from None
    if not dims or any(d <= 0 for d in dims) or channels <= 0 or offset < 0:
        raise ValueError(f"DimSize {header.get('DimSize')!r} does not describe an image")
    total = ELEMENT_BYTES[header["ElementType"]] * channels
    for d in dims:
        total *= d
    return total + offset


def regular_inside(path: Path, folder: str) -> int:
    """The size of ``path`` when it is (or links to) a regular file inside ``folder`` (a real path); ValueError otherwise.
    Checked before anything opens it: a FIFO would block the reader, a link out of the copy would be linked onward."""
    real = os.path.realpath(path)
    if os.path.commonpath([real, folder]) != folder:
        raise ValueError(f"{path.name} leads out of the copy (to {real})")
    st = os.stat(real)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path.name} is not a regular file")
    return st.st_size


def scan_files(folder: Path, subset: int) -> list[CopyFile]:
    """The subset's .mhd files and the .raw each names, checked against its header; CopyDamaged names what is wrong.

    Only regular files inside the subset's folder are taken, each .raw is the one its header names in that folder,
    and a header that does not say how large its .raw is (an unknown element type, a DimSize that is not one) is
    refused: what cannot be checked is not linked."""
    files: list[CopyFile] = []
    problems: list[str] = []
    base = os.path.realpath(folder)
    for mhd in sorted(folder.glob("*.mhd")):
        try:
            mhd_size = regular_inside(mhd, base)
            header = read_header(mhd)
            raw_name = header.get("ElementDataFile")
            if not raw_name:
                raise ValueError(f"{mhd.name} is not a MetaImage header (no ElementDataFile)")
            if raw_name != os.path.basename(raw_name) or raw_name in (".", "..", "LOCAL", "LIST") or "\\" in raw_name:
                raise ValueError(f"{mhd.name} names {raw_name!r} as its data: not a file beside it")
            expected = raw_size_from_header(header)
            raw = mhd.parent / raw_name
            if not os.path.lexists(raw):
                raise ValueError(f"{mhd.name} names {raw_name}, which is missing")
            raw_size = regular_inside(raw, base)
        except (ValueError, OSError) as exc:
            problems.append(str(exc) if mhd.name in str(exc) else f"{mhd.name}: {exc}")
            continue
        if raw_size != expected:
            problems.append(f"{raw} holds {raw_size} bytes, its header ({mhd.name}: DimSize {header.get('DimSize')}, "
                            f"{header.get('ElementType')}) says {expected}")
            continue
        files.append(CopyFile(f"subset{subset}/{mhd.name}", Path(os.path.realpath(mhd)), mhd_size))
        files.append(CopyFile(f"subset{subset}/{raw.name}", Path(os.path.realpath(raw)), raw_size))
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
    """A symlink per file under ``target`` (each made under a temporary name, then renamed into place): every volume
    before any header, so that the book (which finds scans by their .mhd) never sees a header without its .raw."""
    for f in sorted(files, key=lambda f: f.name.lower().endswith(".mhd")):
        dest = target / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_symlink() and os.readlink(dest) == str(f.path):
            continue
        tmp = Path(tempfile.mktemp(prefix=f".{dest.name}.", suffix=".link", dir=dest.parent))
        os.symlink(f.path, tmp)
        os.replace(tmp, dest)
