"""How much disk the book's cache needs, per chapter, from what one entry measures on the book's code; and whether
the filesystem it would live on can hold it safely. Pure functions of their inputs.

Each chapter memoizes one crop per candidate (LUNA16: 551,065 for 888 scans) into its own diskcache. The book keeps
one chapter's cache at a time unless `provision cache` builds several (``book.cache``); the cache fixes compress the
entries. So the reserve per subset is: entries per scan x the subset's scans x one entry's bytes, for the largest
chapter (one at a time) or for the chapters built together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .book.fixes import CacheChapter

LUNA_SCANS_PER_SUBSET = 88.8  # 888 scans in 10 subsets (89 in 0-7, 88 in 8 and 9)
# filesystems where SQLite (the cache's index) corrupts or crawls: network and FUSE mounts (Colab's Drive is fuse.drive,
# gcsfuse fuse.gcsfuse); fuseblk is a local disk through FUSE (NTFS) and is fine
NETWORK_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre", "davfs", "sshfs", "gpfs"})


@dataclass(frozen=True)
class ChapterCache:
    chapter: int
    entries_per_subset: int
    entry_bytes: int
    compressed: bool
    build_s_per_subset: float | None = None  # building its cache, on this machine's cores (measured by `provision cache`)
    epoch_s_per_subset: float | None = None  # one training epoch over a subset's worth of data (measured by the smoke run)
    epoch_fixed_s: float = 0.0               # the part of an epoch that does not grow with the data (balanced datasets)
    measured_on: str = ""

    @property
    def bytes_per_subset(self) -> int:
        return self.entries_per_subset * self.entry_bytes


@dataclass(frozen=True)
class CachePlan:
    """The book's cache: each chapter's figures, which of them are on disk at once, where it lives, and what is wrong."""

    chapters: tuple[ChapterCache, ...]
    together: tuple[int, ...]    # chapters whose caches are kept at once (book.cache), or the largest one alone
    bytes_per_subset: int
    set_by_hand: bool            # data.cache_gb_per_subset overrides the measured figure
    path: str
    fs_type: str
    problem: str = ""

    @property
    def at_once(self) -> str:
        if len(self.together) == 1:
            return f"one chapter at a time (the largest, chapter {self.together[0]})" if not self.set_by_hand else "set by hand"
        return "chapters " + ", ".join(map(str, self.together)) + " together (book.cache)"


def _figures(c: CacheChapter, scans_per_subset: float, compressed: bool, timings: Mapping[str, Any], cores: int) -> ChapterCache:
    entries = round(c.entries_per_scan * scans_per_subset)
    built = timings.get("cache", {}).get(str(c.chapter)) or {}
    trained = timings.get("epoch", {}).get(c.training) or {}
    build_s = entries * float(built["core_s_per_entry"]) / max(1, cores) if built.get("core_s_per_entry") else None
    epoch_s = fixed_s = None
    if trained.get("s_per_sample"):
        rate = float(trained["s_per_sample"])
        validation = entries / 10
        epoch_s = (entries if not c.epoch_samples else validation) * rate  # what grows with the subsets staged
        fixed_s = c.epoch_samples * rate
    where = ", ".join(x for x in (built.get("measured_on", ""), trained.get("device", "")) if x)
    return ChapterCache(c.chapter, entries, c.entry_bytes_compressed if compressed and c.entry_bytes_compressed else c.entry_bytes, compressed,
                        build_s, epoch_s, fixed_s or 0.0, where)


def network_fs(fs_type: str) -> bool:
    return fs_type in NETWORK_FS or (fs_type.startswith("fuse") and fs_type != "fuseblk")


def plan_cache(chapters: Sequence[CacheChapter], *, build: Sequence[int], compressed: bool, scans_per_subset: float,
               set_gb: float | None, path: str, fs_type: str, timings: Mapping[str, Any] | None = None, cores: int = 1) -> CachePlan:
    """The cache's figures per chapter and the reserve per subset (``set_gb`` overrides it); with ``timings`` (what
    `provision cache` and the smoke run measured here), how long building each cache and one epoch take."""
    figures = tuple(_figures(c, scans_per_subset, compressed, timings or {}, cores) for c in chapters)
    chosen = [f for f in figures if f.chapter in build] if build else []
    if not chosen and figures:
        chosen = [max(figures, key=lambda f: f.bytes_per_subset)]
    per_subset = sum(f.bytes_per_subset for f in chosen)
    if set_gb is not None:
        per_subset = int(set_gb * 1e9)
    problem = ""
    if network_fs(fs_type) and per_subset:
        problem = (f"the book's cache would be on a {fs_type} filesystem ({path}): its SQLite index corrupts on network and "
                   "FUSE mounts (\"database disk image is malformed\"), and every epoch reads it")
    return CachePlan(figures, tuple(f.chapter for f in chosen), per_subset, set_gb is not None, path, fs_type, problem)


def fs_type_of(path: str, mounts: str) -> str:
    """The filesystem type of the mount that holds ``path`` (a real, existing path), from /proc/self/mounts' text."""
    best, kind = "", ""
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, kind = point, parts[2]
    return kind
