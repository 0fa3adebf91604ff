"""Turning a file into the book's layout: unpacking a downloaded archive, streaming one (unpacked as it
arrives, never stored), or linking the scans of an unpacked copy. Each records what it wrote.

``only`` names the members to (re)write in a repair; None means all that are not yet complete.
"""

from __future__ import annotations

import logging
import os
import threading
import zipfile
from pathlib import Path

from ..errors import ChecksumError, DownloadError, ExtractError
from ..planvalues import FileLocation, FilePlan
from .archive import extract as extracting
from .archive import landing
from .archive.checkpoint import CheckpointFile, discard_stream
from .archive.members import Layout
from .archive.stream import (
    StreamHooks,
    StreamOutcome,
    check_layout_against_pins,
    check_streamable_size,
    read_layout,
    stream_archive,
)
from .context import FileResult, StageContext
from .fallback import from_sources
from .fetch import expected, md5_of, open_source
from .segments import SegmentedDownload
from .signals import CannotStream, CopyDamaged, NoRangeSupport, PermanentError, StreamCorrupt, TransientError
from .state import FileRecord, StateStore
from .transport.protocol import Transfer

log = logging.getLogger(__name__)


def member_sizes(members: list[extracting.Member]) -> dict[str, tuple[int, int | None]]:
    """name -> (size, CRC-32) of unpacked members, as the state record keeps them."""
    return {m.name: (m.size, m.crc) for m in members}


def extract_file(ctx: StageContext, f: FilePlan, archive: Path, only: frozenset[str] | None, result: FileResult) -> list[extracting.Member]:
    """Unpack a verified archive into the target; a damaged one is deleted so that it is fetched again."""
    count = 0

    def done(member: extracting.Member) -> None:
        nonlocal count
        count += 1
        ctx.emit("unpacked", key=f.key, n=member.size)

    try:
        if f.pinned:  # with or without an md5, the data set's own member list vouches for the archive, as it does streaming
            check_archive_against_pins(archive, f)
        members = extracting.extract(
            archive, ctx.target,
            only=only,
            free_bytes=ctx.free_bytes,
            workers=ctx.cfg.extract_workers or (os.cpu_count() or 1),
            on_member=done,
            stop=ctx.stop,
            on_start=lambda n, size: ctx.emit("unpack", key=f.key, members=n, bytes=size),
        )
    except ExtractError:
        archive.unlink(missing_ok=True)
        raise
    result.members = count
    return members


def check_archive_against_pins(archive: Path, f: FilePlan) -> None:
    """The downloaded archive's directory must list the data set's pinned members (names, sizes, CRC-32s): then each
    member's CRC, checked as it is unpacked, ties it to the data set even where no md5 is known."""
    try:
        with zipfile.ZipFile(archive) as zf:
            have = {i.filename: (i.file_size, i.CRC) for i in zf.infolist() if not i.is_dir()}
    except (zipfile.BadZipFile, OSError):
        return  # unreadable: extracting says so
    want = {p.name: (p.size, p.crc) for p in f.pinned}
    if have != want:
        differ = sorted(set(have) ^ set(want)) or sorted(n for n in have if have[n] != want[n])
        raise ExtractError(f"{f.key} is not the data set's archive: its members differ from the pinned ones (e.g. {differ[0]})",
                           hint="the source serves another archive under this name; check it, or put another source first in data.sources",
                           archive=f.key, member=differ[0])


class UnpackWhileLanding:
    """Archive mode's unpacking while the archive downloads (a :class:`.fetch.Follower`): each attempt at a ranged
    source begins a :class:`.archive.landing.Landing`; ``finish`` hands over its members once the archive is verified,
    or None, and then the archive is unpacked the ordinary way (:func:`extract_file`)."""

    def __init__(self, ctx: StageContext, f: FilePlan, result: FileResult) -> None:
        self.ctx = ctx
        self.f = f
        self.result = result
        self.current: landing.Landing | None = None

    def begin(self, transfer: Transfer, size: int, part: Path, download: SegmentedDownload) -> None:
        self.abandon(damaged=False)
        if size < landing.MIN_ARCHIVE_BYTES:
            return
        ctx, f = self.ctx, self.f

        def layout(halt: threading.Event) -> Layout | None:
            """The directory, read while the download starts; None to unpack the archive once it is whole (a source
            without ranges, whose answers are whole files; a directory that cannot be read or does not match the data
            set's, which the ordinary way then reports; too little room for archive and members)."""
            try:
                if not download.honours_ranges(halt):
                    return None
                retrier = ctx.retrier()
                while True:
                    try:
                        found = read_layout(transfer, size, ctx.target, f.key)
                        break
                    except TransientError as exc:
                        others_go()  # the download does not wait for a directory that is slow to come
                        try:
                            delay = retrier.after(exc)
                        except TransientError:
                            return None
                        if halt.wait(delay):
                            return None
                check_layout(found, f, transfer.label)
                # before the other segments ask: each then starts at a member's header, which lands first, not last
                download.align(sm.header_offset for sm in found.members)
            except Exception as exc:  # noqa: BLE001 - whatever a damaged, hostile or other archive raises, the ordinary way reports
                log.info("%s: not unpacked while it downloads: %s: %s", f.key, type(exc).__name__, exc)
                return None
            finally:
                others_go()
            to_write = sum(sm.member.size for sm in found.members)
            if to_write + size > ctx.free_bytes():
                return None
            ctx.emit("unpack", key=f.key, members=len(found.members), bytes=to_write)
            return found

        def landed(member: extracting.Member) -> None:
            ctx.emit("unpacked", key=f.key, n=member.size)

        others_go = download.hold_others()
        try:
            self.current = landing.Landing(layout, part, download.landed, target=ctx.target, stop=ctx.stop, on_member=landed,
                                           workers=ctx.cfg.extract_workers or (os.cpu_count() or 1))
        except BaseException:
            others_go()  # the download never waits for a landing that did not start
            raise

    def abandon(self, damaged: bool) -> None:
        if self.current is not None:
            self.current.abandon(remove=damaged)
            self.current = None

    def finish(self, archive: Path) -> list[extracting.Member] | None:
        """The archive's members, all on disk, once the last is written; None when it is to be unpacked the ordinary way."""
        if self.current is None:
            return None
        done, self.current = self.current, None
        members = done.finish(archive)
        if members is not None:
            self.result.members = len(done.written)
        return members


def stream_file(ctx: StageContext, f: FilePlan, only: frozenset[str] | None, state: StateStore, result: FileResult) -> bool:
    """Stage an archive in stream mode; False when it cannot be streamed (then archive mode takes over)."""

    def attempt(loc: FileLocation) -> StreamOutcome:
        size, md5 = expected(ctx, f, loc)
        transfer, size, md5, ranges = open_source(ctx, f, loc, size, md5, result)
        if size is None or not ranges:
            raise CannotStream(f"{loc.url} does not serve byte ranges or a size")
        layout = ctx.with_retries(lambda: read_layout(transfer, size, ctx.target, f.key), f"{f.key}: reading the directory at {loc.url}", result)
        check_layout(layout, f, loc.url)
        if only is not None:
            check_repair_source(state.record(f.key), layout, only, loc.url)
        if only is None:
            state.stream_started(f.key, md5=md5, size=size, source=loc.url)

        def starting(members: int, to_write: int, to_fetch: int) -> None:
            if only is not None:  # a repair: bytes the plan did not count
                ctx.emit("expect", key=f.key, n=to_fetch)
            ctx.emit("unpack", key=f.key, members=members, bytes=to_write)

        hooks = StreamHooks(ctx.retrier, ctx.sleep, lambda n: ctx.count(result, f.key, n), result.retries.append, ctx.stop, ctx.free_bytes,
                            on_start=starting, on_member=lambda m: ctx.emit("unpacked", key=f.key, n=m.size))
        return stream_archive(transfer, layout, hooks, only=only, expected_md5=md5, parallel=ctx.plan.stream_ranges, budget=ctx.read_ahead,
                              checkpoints=CheckpointFile(checkpoint, size, md5), target=ctx.target)

    checkpoint = ctx.partial / f"{f.key}.stream.json"

    try:
        source, outcome = from_sources(ctx, f, result, attempt, damaged=StreamCorrupt)
    except (CannotStream, NoRangeSupport) as exc:
        result.retries.append(f"{f.key} cannot be streamed ({exc}): staging it as an archive")
        return False
    except (DownloadError, ChecksumError):
        if only is None:  # every source failed: what the stream wrote is vouched for by no archive md5 (a full disk resumes instead)
            discard_stream(checkpoint, ctx.target, f.key)
        raise
    state.streamed(f.key, member_sizes(outcome.members), only, md5_checked=outcome.md5 is not None,
                   unpacked_bytes=sum(m.size for m in outcome.members))
    if only is None:  # recorded: a run killed before this line names what is left from the checkpoint, fetching nothing again
        CheckpointFile(checkpoint, 0, None).clear()
    result.source = source
    result.members = outcome.written
    result.outcome = "repaired" if only is not None else "staged"
    return True


def check_layout(layout: Layout, f: FilePlan, url: str) -> None:
    """A directory read before the archive is whole must declare the manifest's unpacked size (when it is exact) and
    list the data set's pinned members."""
    if not f.unpacked_estimated:
        check_streamable_size(layout, f.unpacked_bytes, f.key)
    if f.pinned:
        check_layout_against_pins(layout, f.pinned, url)


def check_repair_source(staged: FileRecord | None, layout: Layout, only: frozenset[str], url: str) -> None:
    """A repair: the members to rewrite must be the ones the verified archive had (a source that now serves another
    archive, even of the same size, is refused rather than mixed in)."""
    recorded = staged.members if staged is not None else {}
    for sm in layout.members:
        want = recorded.get(sm.member.name)
        if sm.member.name in only and want is not None and want[1] is not None and (sm.member.size, sm.member.crc) != tuple(want):
            raise PermanentError(f"{url} serves a different {layout.archive} than the one staged: member {sm.member.name} is "
                                 f"{sm.member.size} bytes with CRC {sm.member.crc:08x}, the staged one {want[0]} with {want[1]:08x}")


def link_from_copies(ctx: StageContext, f: FilePlan, state: StateStore, result: FileResult) -> tuple[FileLocation, ...]:
    """Link ``f`` from the unpacked copies that lead its sources; returns the sources left to try (none: linked)."""
    from .copies import CopyFile, check_against_pins, link_files, scan_files

    for i, loc in enumerate(f.locations):
        if loc.kind != "unpacked":
            return f.locations[i:]
        try:
            if f.unpack:
                files = scan_files(Path(loc.url), f.subset or 0)
                pins = {m.name: (m.size, m.crc) for m in f.pinned}
                crcs = check_against_pins(files, pins, f.subset or 0, loc.url) if pins else {}
            else:
                got = md5_of(Path(loc.url))
                if f.md5 and got != f.md5:
                    raise CopyDamaged(f"the copy's {loc.url} has md5 {got}, the data set's {f.key} has {f.md5}")
                files, crcs = [CopyFile(f.key, Path(loc.url), os.stat(loc.url).st_size)], {}
        except (CopyDamaged, OSError) as exc:
            reason = exc.reason if isinstance(exc, CopyDamaged) else f"{loc.url}: {exc}"
            then = "trying the next source" if i + 1 < len(f.locations) else "no other source to try"
            result.retries.append(f"{reason}; {then}")
            ctx.emit("retry", key=f.key, message=f"{f.key}: {reason}; {then}")
            continue
        link_files(files, ctx.target)
        members = {c.name: (c.size, crcs.get(c.name)) for c in files}
        state.linked(f.key, unpack=f.unpack, source=loc.url, members=members, md5=f.md5, size=f.size)
        result.source, result.members, result.outcome = loc.url, len(files), "linked"
        result.checked = "members against the data set's pins" if crcs else ("each scan against its header" if f.unpack else "md5")
        return ()
    raise DownloadError(f"{f.key}: no unpacked copy holds it intact and no other source is configured: " + "; ".join(result.retries),
                        hint="add a download source after the copy (data.sources: [kaggle, zenodo])", key=f.key)
