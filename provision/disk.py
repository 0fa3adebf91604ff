"""Disk arithmetic: how many bytes staging needs at its peak, and which subsets fit.

Pure functions of their arguments: no filesystem access here (free bytes are passed in).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from .manifest import format_subsets

GB = 1_000_000_000


def gb(n: float) -> str:
    """Bytes as decimal gigabytes (the unit Colab and cloud consoles show); small sizes in MB or kB."""
    if abs(n) < 100_000:
        return f"{n / 1e3:.1f} kB"
    if abs(n) < GB / 10:
        return f"{n / 1e6:.1f} MB"
    return f"{n / GB:.1f} GB"


@dataclass(frozen=True)
class DiskItem:
    """One file's disk needs: bytes still to write as an archive and as unpacked data."""

    key: str
    subset: int | None
    archive_bytes: int  # still to be written for the file itself (0 when already there)
    unpacked_bytes: int  # still to be written by extraction (0 for plain files)
    unpack: bool
    unpacked_estimated: bool = False
    size_known: bool = True


@dataclass(frozen=True)
class DiskPlan:
    """Disk figures for one filesystem. ``needed_bytes`` = max(peak, final + reserve) + margin."""

    mode: str
    path: str
    probe: str
    free_bytes: int
    archive_bytes: int
    unpacked_bytes: int
    archives_in_flight_bytes: int
    peak_bytes: int
    final_bytes: int
    reserve_bytes: int  # kept free after staging: the book's cache for these subsets plus data.reserve_gb
    margin_bytes: int
    needed_bytes: int
    estimated: bool
    unresolved: tuple[str, ...]
    fitting_subsets: tuple[int, ...] | None  # None when everything fits or no subsets apply
    fitting_without_reserve: tuple[int, ...] | None = None  # when nothing fits only because of the reserve
    cache_bytes: int = 0  # the part of the reserve that is the book's cache (per subset staged)
    subsets: int = 0      # subsets the cache reserve is counted for

    @property
    def fits(self) -> bool:
        return self.needed_bytes <= self.free_bytes

    @property
    def shortfall_bytes(self) -> int:
        return max(0, self.needed_bytes - self.free_bytes)

    def fitting_text(self) -> str:
        if self.fitting_subsets is None:
            return ""
        if not self.fitting_subsets:
            return f"not even one subset fits in {gb(self.free_bytes)} free"
        n = len(self.fitting_subsets)
        noun = "subset" if n == 1 else "subsets"
        return f"{noun} {format_subsets(self.fitting_subsets)} fit in {gb(self.free_bytes)} free"


@dataclass(frozen=True)
class DiskRules:
    """How staging uses the disk: what stays free afterwards, and what is on disk at once."""

    reserve_bytes: int
    margin_bytes: int
    keep_archives: bool
    files_in_flight: int
    stream: bool = False
    cache_bytes_per_subset: int = 0  # the book keeps one chapter's cache at a time; it grows with the scans

    @property
    def mode(self) -> str:
        return "stream" if self.stream else "archive"

    def cache_bytes(self, items: Sequence[DiskItem]) -> int:
        """Room for the book's cache of the subsets among ``items`` (staged ones too: the cache covers them all)."""
        return self.cache_bytes_per_subset * len(subsets_of(items))

    def reserve_for(self, items: Sequence[DiskItem]) -> int:
        return self.reserve_bytes + self.cache_bytes(items)


def subsets_of(items: Sequence[DiskItem]) -> set[int]:
    return {i.subset for i in items if i.subset is not None}


def _needs(items: Sequence[DiskItem], rules: DiskRules) -> tuple[int, int, int, int]:
    """(archive bytes, unpacked bytes, archives on disk at once, peak bytes) for ``items``.

    In stream mode archives are never stored: members are written straight to their final
    place, so the peak is the unpacked data itself.
    """
    unpacked = sum(i.unpacked_bytes for i in items)
    plain = sum(i.archive_bytes for i in items if not i.unpack)
    archives = sorted((i.archive_bytes for i in items if i.unpack), reverse=True)
    if rules.stream:
        return plain, unpacked, 0, plain + unpacked
    if rules.keep_archives:
        in_flight = sum(archives)
    else:
        # a download slot is freed only once its archive is unpacked and deleted,
        # so at most files_in_flight archives are on disk at any moment
        in_flight = sum(archives[: max(1, rules.files_in_flight)])
    return plain + sum(archives), unpacked, in_flight, plain + unpacked + in_flight


def _final(items: Sequence[DiskItem], rules: DiskRules) -> int:
    unpacked = sum(i.unpacked_bytes for i in items)
    kept = sum(i.archive_bytes for i in items if (rules.keep_archives and not rules.stream) or not i.unpack)
    return unpacked + kept


def needed_bytes(items: Sequence[DiskItem], rules: DiskRules) -> int:
    """max(peak, after staging + reserve) + margin."""
    _, _, _, peak = _needs(items, rules)
    return max(peak, _final(items, rules) + rules.reserve_for(items)) + rules.margin_bytes


def plan_disk(items: Sequence[DiskItem], *, path: str, probe: str, free_bytes: int, rules: DiskRules) -> DiskPlan:
    """The disk figures for staging ``items`` onto one filesystem with ``free_bytes`` free."""
    archive, unpacked, in_flight, peak = _needs(items, rules)
    needed = needed_bytes(items, rules)
    fitting = without_reserve = None
    if needed > free_bytes and any(i.subset is not None for i in items):
        fitting = largest_fitting_subsets(items, free_bytes, rules)
        if not fitting and (rules.reserve_bytes or rules.cache_bytes_per_subset):
            without_reserve = largest_fitting_subsets(items, free_bytes, replace(rules, reserve_bytes=0, cache_bytes_per_subset=0)) or None
    return DiskPlan(
        mode=rules.mode,
        path=path,
        probe=probe,
        free_bytes=free_bytes,
        archive_bytes=archive,
        unpacked_bytes=unpacked,
        archives_in_flight_bytes=in_flight,
        peak_bytes=peak,
        final_bytes=_final(items, rules),
        reserve_bytes=rules.reserve_for(items),
        margin_bytes=rules.margin_bytes,
        needed_bytes=needed,
        estimated=any(i.unpacked_estimated for i in items),
        unresolved=tuple(i.key for i in items if not i.size_known),
        fitting_subsets=fitting,
        fitting_without_reserve=without_reserve,
        cache_bytes=rules.cache_bytes(items),
        subsets=len(subsets_of(items)),
    )


def largest_fitting_subsets(items: Sequence[DiskItem], free_bytes: int, rules: DiskRules) -> tuple[int, ...]:
    """The longest run of subsets, in order, that fits together with the files every selection needs."""
    always = [i for i in items if i.subset is None]
    subsets = sorted(subsets_of(items))
    best: tuple[int, ...] = ()
    for n in range(1, len(subsets) + 1):
        chosen = set(subsets[:n])
        if needed_bytes(always + [i for i in items if i.subset in chosen], rules) > free_bytes:
            break
        best = tuple(subsets[:n])
    return best
