"""Bringing one file to its final name, verified: from the first source that delivers it intact.

A local file on the same filesystem is hard-linked; a source with byte ranges is fetched as parallel
segments (:mod:`.segments`), one without as one stream from byte 0. Either way the file is written
under a temporary name, its size and md5 are checked, and only then does it take its final name.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from ..errors import OutOfSpaceError
from ..planvalues import FileLocation, FilePlan
from .archive import writeback
from .context import FileResult, StageContext
from .fallback import from_sources
from .segments import SegmentContext, SegmentedDownload
from .signals import ChecksumMismatch, NoRangeSupport, PermanentError, TransientError
from .state import size_of
from .transport.local import try_hardlink
from .transport.opening import open_transfer
from .transport.protocol import BUFFER_BYTES, Transfer
from .transport.zenodo import fill_from_records


class Follower(Protocol):
    """Work that follows a download as its bytes land (archive mode's unpacking): begun once the partial file exists,
    with the download, which says whether its source honours ranges and which bytes are written; abandoned when the
    attempt fails (with ``damaged``, when its bytes turned out wrong or are written again from the start)."""

    def begin(self, transfer: Transfer, size: int, part: Path, download: SegmentedDownload) -> None: ...

    def abandon(self, damaged: bool) -> None: ...


def fetch(ctx: StageContext, f: FilePlan, final: Path, result: FileResult, conns: ThreadPoolExecutor,
          follower: Follower | None = None) -> tuple[str, str]:
    """Bring ``f`` to ``final``, verified; returns (the source that delivered it, its md5). A ``follower`` is begun with
    each ranged download (and abandoned with it when it fails)."""

    def attempt(loc: FileLocation) -> str:
        size, md5 = expected(ctx, f, loc)
        return download(ctx, f, loc, final, size, md5, result, conns, follower)

    return from_sources(ctx, f, result, attempt, damaged=ChecksumMismatch)


def expected(ctx: StageContext, f: FilePlan, loc: FileLocation) -> tuple[int | None, str | None]:
    """The size and md5 to check against: the manifest's, else the Zenodo records API's."""
    return fill_from_records(f.size, f.md5, record=f.record, key=f.key, source_kind=loc.kind, records=ctx.zenodo)


def download(ctx: StageContext, f: FilePlan, loc: FileLocation, final: Path, size: int | None, md5: str | None,
             result: FileResult, conns: ThreadPoolExecutor, follower: Follower | None = None) -> str:
    pdir = ctx.partial
    pdir.mkdir(parents=True, exist_ok=True)
    part = pdir / f"{f.key}.part"
    progress_path = pdir / f"{f.key}.progress.json"
    if md5 and already_here(final, size, md5):  # a run killed once it was renamed, before its record was written
        part.unlink(missing_ok=True)
        progress_path.unlink(missing_ok=True)
        return md5
    if loc.kind == "local" and size is not None:
        linked = hardlink_verified(loc.url, part, final, size, md5)
        if linked is not None:
            return linked
    transfer, size, md5, ranges = open_source(ctx, f, loc, size, md5, result)
    if size is None or not ranges:
        return download_whole(ctx, f, transfer, part, progress_path, final, size, md5, result)
    def finish(part: Path, final: Path, size: int | None, md5: str | None, digest: str, label: str) -> str:
        return verify_and_rename(part, final, size, md5, digest, label, durable=ctx.plan.keeps(f))

    job = SegmentContext(segment_min_bytes=ctx.cfg.segment_mb << 20, connections=ctx.plan.connections, retrier=ctx.retrier,
                         stop=ctx.stop, emit=ctx.emit, finish=finish)
    segmented = SegmentedDownload(job, f, transfer, part, progress_path, final, size, md5, result, conns)
    if follower is not None:
        follower.begin(transfer, size, part, segmented)
    try:
        return segmented.run()
    except NoRangeSupport:
        if follower is not None:
            follower.abandon(damaged=True)  # the file is written again from its first byte
        result.retries.append(f"{loc.url} ignores byte ranges: fetching it whole")
        return download_whole(ctx, f, transfer, part, progress_path, final, size, md5, result)
    except BaseException as exc:
        if follower is not None:
            follower.abandon(damaged=isinstance(exc, ChecksumMismatch))
        raise


def open_source(ctx: StageContext, f: FilePlan, loc: FileLocation, size: int | None, md5: str | None,
                result: FileResult) -> tuple[Transfer, int | None, str | None, bool]:
    """The transfer for ``loc``, with size, md5 and range support; a copy that differs from the manifest is refused."""
    transfer = open_transfer(loc, ctx.cfg, ctx.throttle, size)
    ranges = True  # with a known size, the first ranged answer tells whether the source honours ranges
    if size is None or loc.kind == "gs":  # a bucket's metadata is one cheap call and carries the md5
        info = ctx.with_retries(transfer.info, f"{f.key}: asking {loc.url} for the size", result)
        if md5 and info.md5 and info.md5 != md5:
            raise PermanentError(f"{loc.url} holds md5 {info.md5}, the manifest says {md5}: the copy there differs from the data set")
        if size is not None and info.size is not None and info.size != size:
            raise PermanentError(f"{loc.url} holds {info.size} bytes, the manifest says {size}")
        size, ranges = info.size, info.ranges
        md5 = md5 or info.md5
    return transfer, size, md5, ranges


def already_here(final: Path, size: int | None, md5: str) -> bool:
    """Whether ``final`` is the file already, complete: of its size, and its md5 checks out. A complete download is
    never fetched again (one whose md5 is not known cannot be told from another, and is)."""
    return size is not None and size_of(final) == size and md5_of(final) == md5


def hardlink_verified(src: str, part: Path, final: Path, size: int, md5: str | None) -> str | None:
    """Hard-link a local source file (same filesystem), verify it, and give it its final name; None when it cannot be linked."""
    part.unlink(missing_ok=True)
    if size_of(Path(src)) != size or not try_hardlink(src, str(part)):
        return None
    got = md5_of(part)
    if md5 and got != md5:
        part.unlink(missing_ok=True)
        raise ChecksumMismatch(f"md5 of {src} is {got}, expected {md5}")
    os.replace(part, final)
    return got


def download_whole(ctx: StageContext, f: FilePlan, transfer: Transfer, part: Path, progress_path: Path, final: Path,
                   size: int | None, md5: str | None, result: FileResult) -> str:
    """For sources without ranges: one stream from byte 0, hashed as it arrives; a retry starts over."""
    progress_path.unlink(missing_ok=True)
    digest = ctx.with_retries(lambda: _stream_once(ctx, f, transfer, part, size, result), f"{transfer.label} (whole file, from its start)", result)
    return verify_and_rename(part, final, size, md5, digest, transfer.label, durable=ctx.plan.keeps(f))


def _stream_once(ctx: StageContext, f: FilePlan, transfer: Transfer, part: Path, size: int | None, result: FileResult) -> str:
    """One whole-file pass, hashed as it arrives; on failure the bytes it counted are taken back."""
    hasher = hashlib.md5()
    written = 0

    def sink(chunk: bytes) -> None:
        nonlocal written
        ctx.stop.check()
        write_chunk(out, chunk, part)
        hasher.update(chunk)
        written += len(chunk)
        ctx.count(result, f.key, len(chunk))

    try:
        with open(part, "wb") as out:
            transfer.read_all(sink, size)
    except TransientError:
        ctx.emit("bytes", n=-written, key=f.key)
        raise
    return hasher.hexdigest()


def verify_and_rename(part: Path, final: Path, size: int | None, md5: str | None, got_md5: str, label: str, *, durable: bool = True) -> str:
    """The file takes its final name only when its size and md5 are the data set's; on disk first (fsync) when it is
    kept. An archive that is unpacked and deleted a moment later is not forced to disk: its md5 was computed as its
    bytes arrived, each member's CRC is checked as it is unpacked, and one that a power cut damaged is fetched again."""
    got_size = os.stat(part).st_size
    if (size is not None and got_size != size) or (md5 and got_md5 != md5):
        part.unlink(missing_ok=True)
        (part.parent / (part.name[: -len(".part")] + ".progress.json")).unlink(missing_ok=True)
        raise ChecksumMismatch(f"md5 mismatch from {label}: got {got_md5} ({got_size} bytes), expected {md5} ({size} bytes)")
    if durable:
        with open(part, "rb+") as fh:
            os.fsync(fh.fileno())
            writeback.forget(fh.fileno())  # on disk now: its pages go back for what comes next (see archive/writeback.py)
    os.replace(part, final)
    return got_md5


def write_chunk(out: Any, chunk: bytes, path: Path) -> None:
    try:
        out.write(chunk)
    except OSError as exc:
        if exc.errno == 28:
            raise OutOfSpaceError.disk_full(path) from None
        raise


def md5_of(path: Path) -> str:
    hasher = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(BUFFER_BYTES * 4):
            hasher.update(chunk)
    return hasher.hexdigest()
