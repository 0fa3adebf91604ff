"""How to stage: the ways there are, what disk each needs, how long each would take, and the choice.

In order of preference (and, on a capped connection, of speed): archive mode with ``files_in_flight``
archives on disk at once; archive mode with fewer in flight, down to one (the peak is then the unpacked
data plus the largest archive; each member is still unpacked as it lands, but the next download waits for an
archive's last members); stream mode, each
archive's bytes fetched over several connections at once and inflated in order (its md5 checked as in
archive mode; every connection busy even on the last archive). ``data.mode: auto`` takes the first that
fits; a mode the user set is used as set. Pure functions: the disk figures come from :mod:`provision.disk`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from .disk import DiskItem, DiskPlan, DiskRules, gb, plan_disk

# nominal rates for the time estimate: Zenodo-like connections, zlib inflate on one core (output bytes)
CONNECTION_BYTES_S = 10e6
INFLATE_BYTES_S = 300e6


@dataclass(frozen=True)
class Way:
    mode: str             # archive | stream
    files_in_flight: int  # archives on disk at once (archive mode)
    stream_ranges: int    # connections one archive's stream may use at once (stream mode)
    disk: DiskPlan
    seconds: float        # estimated, at nominal rates: only the ratios between ways mean something

    @property
    def label(self) -> str:
        if self.mode == "archive":
            return f"archive, {self.files_in_flight} in flight"
        return f"stream, {self.stream_ranges} connection{'s' if self.stream_ranges > 1 else ''} per archive"

    @property
    def fits(self) -> bool:
        return self.disk.fits


@dataclass(frozen=True)
class Load:
    """What the ways are weighed on: archives to fetch, their bytes and unpacked bytes, connections and cores."""

    archives: int
    download_bytes: int
    unpacked_bytes: int
    connections: int
    cores: int


def load_of(items: Sequence[DiskItem], connections: int, cores: int) -> Load:
    archives = [i for i in items if i.unpack and i.archive_bytes > 0]
    return Load(len(archives), sum(i.archive_bytes for i in items), sum(i.unpacked_bytes for i in items), max(1, connections), max(1, cores))


def estimate_s(mode: str, files_in_flight: int, ranges: int, load: Load, landing: bool = True) -> float:
    """Seconds at nominal rates. Archive mode downloads on every connection and unpacks on every core: each member as
    it lands (``landing``, data.unpack_while_downloading), so the two overlap however many archives are in flight;
    otherwise only once two archives are in flight. Stream mode inflates as it reads, one thread per archive."""
    if mode == "archive":
        download = load.download_bytes / (CONNECTION_BYTES_S * load.connections)
        unpack = load.unpacked_bytes / (INFLATE_BYTES_S * load.cores)
        if landing:
            return max(download, unpack)
        if files_in_flight <= 1:
            return download + unpack
        return max(download, unpack) + unpack / max(1, load.archives)
    streams = max(1, min(load.connections, load.archives * ranges))
    inflaters = max(1, min(load.cores, load.archives, streams_at_once(load.connections, ranges, load.cores)))
    return max(load.download_bytes / (CONNECTION_BYTES_S * streams), load.unpacked_bytes / (INFLATE_BYTES_S * inflaters))


def streams_at_once(connections: int, ranges: int, cores: int) -> int:
    """Archives streamed at once: enough to use every connection, and, where every connection may serve one archive
    (the last one then still gets them all), two per core up to the connections, so that the cores inflate while
    some of the readers wait on a write (each archive is inflated by one reader, in order)."""
    return max(min(2 * max(1, cores), connections), connections // max(1, ranges))


def read_ahead_chunks(budget_bytes: int, smallest_chunk: int, connections: int) -> tuple[int, int]:
    """Stream mode's read-ahead as (chunk bytes, chunks): one chunk a connection being fetched and half as many again
    ready (two at least), within the budget; each chunk is one request. Large chunks keep the request count low: Zenodo
    allows a guest 133 a minute, and with the default budget its 4 connections at 10 MB/s each make 1.7 a second.
    Never under ``smallest_chunk``, and one chunk a connection plus one at least."""
    chunks = connections + max(2, connections // 2)
    chunk = max(smallest_chunk, budget_bytes // chunks)
    return chunk, max(connections + 1, budget_bytes // chunk)


def stream_connections(setting: int, connections: int) -> int:
    """Connections per archive in stream mode: data.stream_ranges, or (0, the default) every connection there is."""
    return min(setting, connections) if setting > 0 else connections


def candidates(setting: str, files_in_flight: int, stream_ranges: int, load: Load) -> list[tuple[str, int, int]]:
    """(mode, files in flight, ranges) in order of preference; only ``auto`` offers more than the setting."""
    if setting == "archive":
        return [("archive", files_in_flight, 1)]
    ranges = stream_connections(stream_ranges, load.connections)
    if setting == "stream":
        return [("stream", 1, ranges)]
    return [("archive", k, 1) for k in range(max(1, min(files_in_flight, max(1, load.archives))), 0, -1)] + [("stream", 1, ranges)]


def plan_ways(items: Sequence[DiskItem], rules: DiskRules, setting: str, stream_ranges: int, *, path: str, probe: str, free_bytes: int,
              connections: int, cores: int, landing: bool = True) -> list[Way]:
    """Every way the setting allows, with its disk plan and time estimate, in order of preference."""
    load = load_of(items, connections, cores)
    ways = []
    for mode, in_flight, ranges in candidates(setting, rules.files_in_flight, stream_ranges, load):
        disk = plan_disk(items, path=path, probe=probe, free_bytes=free_bytes,
                         rules=replace(rules, files_in_flight=in_flight, stream=mode == "stream"))
        ways.append(Way(mode, in_flight, ranges, disk, estimate_s(mode, in_flight, ranges, load, landing)))
    return ways


def choose(setting: str, ways: Sequence[Way], has_archives: bool) -> tuple[Way, str]:
    """The first way that fits (the only one, for a mode set by hand), and why, in one line."""
    first = ways[0]
    if setting != "auto":
        return first, f"data.mode is {setting}"
    if not has_archives:
        return first, "no archives to unpack"
    fastest = min(w.seconds for w in ways)
    for way in ways:
        if way.fits:
            if way is first:
                return way, f"{way.label}: archives and unpacked data fit ({gb(way.disk.needed_bytes)} needed, {gb(way.disk.free_bytes)} free)"
            slower = f", about {way.seconds / fastest:.1f}x the time of {first.label}" if way.seconds > fastest * 1.05 else ""
            return way, (f"{way.label}: {first.label} would need {gb(first.disk.needed_bytes)} but {gb(first.disk.free_bytes)} is free; "
                         f"this needs {gb(way.disk.needed_bytes)}{slower}")
    return first, "no way fits"
