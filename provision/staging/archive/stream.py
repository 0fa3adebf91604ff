"""Stream mode: unpack a zip archive as its bytes arrive, never storing the archive.

The central directory is read first (one ranged request of the archive's tail), so every
member's offset, sizes and CRC are known before a byte is written. The archive is then read as
one ordered byte stream (over several connections at once, :mod:`..transport.ordered`): each
member is inflated into a temporary name, fsync'd and held once its size and CRC-32 check out,
and the archive's md5 is computed over the same stream, as is the directory the stream carries
(compared with the one read first). Only then, the archive vouched for, do its members take
their final names (:mod:`.naming`). A dropped connection continues at the exact byte (the parser
keeps its state); a new run after an interruption continues at the first member not yet held,
so it costs at most the member in progress and the read-ahead. Peak disk is the unpacked data
plus the members being written.
"""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ExtractError, OutOfSpaceError
from ...manifest import PinnedMember
from ..signals import CannotStream, PermanentError, Stopped, StreamCorrupt
from ..transport.opening import BLOCK_BYTES, RangeReader
from ..transport.ordered import OrderedHooks, ReadAhead, read_ordered
from ..transport.protocol import BUFFER_BYTES, Retrier, Transfer, read_resuming
from . import md5state
from .checkpoint import Checkpoint, CheckpointFile, directory_digest, resume_point
from .extract import list_members, member_done, same_directory
from .members import LOCAL_HEADER, LOCAL_SIGNATURE, METHODS, Layout, Member, MemberWriter, StreamMember, is_held
from .naming import discard, publish

# a whole stream keeps the bytes of the directory it carries, to compare with the one read first: a LUNA16 archive's is
# about 20 KB; an archive whose directory is larger than this is staged in archive mode
MAX_DIRECTORY_BYTES = 16 << 20


def read_layout(transfer: Transfer, size: int, target: Path, archive: str) -> Layout:
    """The central directory via ranged reads of the tail; members validated (paths, symlinks) up front."""
    reader = RangeReader(transfer, size)
    try:
        with zipfile.ZipFile(io.BufferedReader(reader, BLOCK_BYTES)) as zf:
            members = {m.name: m for m in list_members(zf, target, archive)}
            infos = [i for i in zf.infolist() if i.filename in members]
            directory_offset = zf.start_dir
    except zipfile.BadZipFile as exc:
        raise StreamCorrupt(f"{archive}: cannot read its central directory ({exc})") from None
    stream = []
    for info in sorted(infos, key=lambda i: i.header_offset):
        if info.flag_bits & 0x1:
            raise CannotStream(f"{archive}: member {info.filename} is encrypted")
        if info.compress_type not in METHODS:
            raise CannotStream(f"{archive}: member {info.filename} uses compression method {info.compress_type}")
        stream.append(StreamMember(members[info.filename], info.header_offset, info.compress_size, info.compress_type))
    return Layout(tuple(stream), directory_offset, size, archive)


class StreamUnpacker:
    """A push parser over one contiguous byte range of the archive, starting at a member's header.

    ``feed`` takes the bytes in order; ``pos`` is the absolute offset of the next byte expected,
    so a dropped connection continues with a request from ``pos``.
    """

    def __init__(self, layout: Layout, first: int, last: int, md5: Any | None, on_member: Callable[[Member], None] | None = None) -> None:
        self.layout = layout
        self.on_member = on_member
        self.index = first
        self.last = last  # exclusive index of members to write
        self.pos = layout.members[first].header_offset if first < len(layout.members) else layout.directory_offset
        self.md5 = md5
        self.header = b""
        self.data_start: int | None = None
        self.writer: MemberWriter | None = None
        self.written: list[Member] = []  # held by this parser: written, or found held by a run that was stopped
        # a whole stream: the bytes of the directory it carries, from the directory's offset on
        self.tail: bytearray | None = bytearray() if md5 is not None else None

    @property
    def end(self) -> int:
        """Where this range's request should stop (the whole archive when hashing it)."""
        if self.md5 is not None:
            return self.layout.size
        if self.last < len(self.layout.members):
            return self.layout.members[self.last].header_offset
        return self.layout.directory_offset

    def feed(self, chunk: bytes | memoryview) -> None:
        view = memoryview(chunk)
        while view:
            if self.index >= self.last:  # past the members to write: descriptors, directory
                self._advance(view, len(view))
                return
            sm = self.layout.members[self.index]
            if self.pos < sm.header_offset:  # a data descriptor between members
                view = self._advance(view, min(len(view), sm.header_offset - self.pos))
                continue
            if self.data_start is None:
                view = self._header(sm, view)
                continue
            data_end = self.data_start + sm.compress_size
            take = min(len(view), data_end - self.pos)
            if self.writer is not None:
                self.writer.feed(view[:take])
            view = self._advance(view, take)
            if self.pos == data_end:
                self._member_done()

    def _advance(self, view: memoryview, n: int) -> memoryview:
        """Consume ``n`` bytes: hashed here, as they are consumed, so a checkpoint's md5 state is exactly that of bytes [0, pos)."""
        if self.md5 is not None and n:
            self.md5.update(view[:n])
        if self.tail is not None and self.pos + n > self.layout.directory_offset:
            self.tail += view[max(0, self.layout.directory_offset - self.pos) : n]
        self.pos += n
        return view[n:]

    def _header(self, sm: StreamMember, view: memoryview) -> memoryview:
        need = LOCAL_HEADER.size - len(self.header)
        if need > 0:
            take = min(need, len(view))
            self.header += bytes(view[:take])
            view = self._advance(view, take)
            if len(self.header) < LOCAL_HEADER.size:
                return view
            fields = LOCAL_HEADER.unpack(self.header[: LOCAL_HEADER.size])
            if fields[0] != LOCAL_SIGNATURE:
                raise StreamCorrupt(f"no local header at byte {sm.header_offset} for member {sm.member.name}")
        name_len, extra_len = LOCAL_HEADER.unpack(self.header[: LOCAL_HEADER.size])[9:11]
        header_end = sm.header_offset + LOCAL_HEADER.size + name_len + extra_len
        view = self._advance(view, min(len(view), header_end - self.pos))
        if self.pos == header_end:
            self.data_start = header_end
            # a member a stopped run held is not inflated again: its bytes still pass, for the md5
            self.writer = None if is_held(sm.member, self.layout.archive) else MemberWriter(sm, self.layout.archive)
            if sm.compress_size == 0:
                self._member_done()
        return view

    def _member_done(self) -> None:
        member = self.layout.members[self.index].member
        if self.writer is not None:
            self.writer.finish()
        self.written.append(member)
        self.writer = None
        self.header = b""
        self.data_start = None
        self.index += 1
        if self.on_member is not None:  # after the parser is at the next member: a checkpoint taken here resumes there
            self.on_member(member)

    def abandon(self) -> None:
        """Drop the member in progress (its temporary file)."""
        if self.writer is not None:
            self.writer.discard()
            self.writer = None


def runs_to_fetch(layout: Layout, only: frozenset[str] | None) -> list[tuple[int, int]]:
    """[first, last) member index ranges still to write: those not yet complete, or the named ones."""
    wanted = [i for i, sm in enumerate(layout.members) if (sm.member.name in only if only is not None else not member_done(sm.member))]
    runs: list[tuple[int, int]] = []
    for i in wanted:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def split_runs(layout: Layout, runs: list[tuple[int, int]], parts: int) -> list[tuple[int, int]]:
    """Cut ``runs`` at member boundaries into about ``parts`` pieces of similar compressed size."""
    if parts <= 1:
        return runs
    target = sum(layout.members[i].compress_size for first, last in runs for i in range(first, last)) / parts
    pieces = []
    for first, last in runs:
        start, size = first, 0
        for i in range(first, last):
            size += layout.members[i].compress_size
            if size >= target and i + 1 < last:
                pieces.append((start, i + 1))
                start, size = i + 1, 0
        pieces.append((start, last))
    return pieces


@dataclass
class StreamOutcome:
    members: list[Member]
    written: int
    md5: str | None  # None when the archive was not read as one stream from its first byte


@dataclass(frozen=True)
class StreamHooks:
    """What a stream needs from the run around it: the retry policy and a stop-aware sleep, the stop signal, the free
    disk, and where to say what is coming (members, bytes to write, bytes to fetch), each member written and each byte."""

    retrier: Callable[[], Retrier]
    sleep: Callable[[float], None]
    on_bytes: Callable[[int], None]
    note_retry: Callable[[str], None]
    stop: threading.Event
    free_bytes: Callable[[], int]
    on_start: Callable[[int, int, int], None] | None = None
    on_member: Callable[[Member], None] | None = None


def stream_archive(transfer: Transfer, layout: Layout, run: StreamHooks, *, only: frozenset[str] | None, expected_md5: str | None,
                   parallel: int = 1, budget: ReadAhead | None = None, checkpoints: CheckpointFile | None = None,
                   target: Path | None = None) -> StreamOutcome:
    """Fetch and unpack the members still missing; verify the archive md5 when it is read whole; name them once vouched for.

    A whole stream (not a repair) is read from its first byte, or from the checkpoint a killed run saved (its md5 state
    restored), so the md5 always covers every byte and vouches for every member, resumed or not; and the directory it
    carries must be the one the members were cut by. Until both check out the members are held under their archive's
    temporary names, then named together (:mod:`.naming`); a mismatch removes what is held, never a final name. With
    ``parallel`` > 1 and a read-ahead ``budget`` its bytes come over that many connections at once, handed to the one
    inflating reader in order. A repair reads the members it rewrites as up to ``parallel`` member-aligned ranges at
    once, each member CRC-checked against the directory the caller checked (no archive md5 exists for a part). The
    checkpoint is the caller's to clear, once the outcome is recorded.
    """
    members = [sm.member for sm in layout.members]
    whole = only is None
    if whole and layout.size - layout.directory_offset > MAX_DIRECTORY_BYTES:
        raise CannotStream(f"{layout.archive}: its directory takes {layout.size - layout.directory_offset} bytes, more than a stream keeps")
    resume, runs = _runs(layout, only, whole, checkpoints.load() if checkpoints is not None and whole else None, target or Path("."))
    if resume is not None and resume.vouched is not None:  # checked out before a kill: its members are held or named
        publish([m for m in members if is_held(m, layout.archive)], layout.archive)
        return StreamOutcome(members, 0, resume.vouched or None)
    if not whole and not runs:
        return StreamOutcome(members, 0, None)
    to_write = sum(layout.members[i].member.size for first, last in runs for i in range(first, last) if not is_held(layout.members[i].member, layout.archive))
    if to_write > run.free_bytes():
        raise OutOfSpaceError.disk_full(target or Path("."), f"unpacking {layout.archive}", needed=to_write, free=run.free_bytes())
    md5: Any = None
    if whole:
        md5 = md5state.ResumableMd5(resume.md5_state if resume else None) if md5state.available() else hashlib.md5()
    saver = _Checkpointing(checkpoints, layout, md5) if checkpoints is not None and whole else None

    def member_written(member: Member) -> None:
        if run.on_member is not None:
            run.on_member(member)
        if saver is not None:
            saver.after(parsers[0])

    parsers = [StreamUnpacker(layout, first, last, md5, member_written) for first, last in split_runs(layout, runs, 1 if whole else parallel)]
    if whole:
        parsers[0].pos = resume.pos if resume else 0  # bytes before the first member count for the md5 too
    if saver is not None:
        saver.start(resume, parsers[0].pos)
    if run.on_start is not None:
        run.on_start(sum(last - first for first, last in runs), to_write, sum(p.end - p.pos for p in parsers))
    if whole and parallel > 1 and budget is not None:
        errors = _pump_all(parsers, lambda parser: _pump_ordered(transfer, parser, parallel, budget, run), at_once=1)
    else:
        errors = _pump_all(parsers, lambda parser: _pump(transfer, parser, run.retrier(), run.sleep, run.on_bytes, run.note_retry, run.stop),
                           at_once=1 if whole else parallel)
    written = [m for p in parsers for m in p.written]
    if errors:
        corrupt = next((e for e in errors if isinstance(e, StreamCorrupt)), None)
        if corrupt is not None and not whole:
            discard(written, layout.archive)  # nothing from a damaged repair survives (a whole stream keeps what it holds: its md5 judges it)
        raise corrupt or errors[0]
    if not whole:
        publish(written, layout.archive)
        return StreamOutcome(members, len(written), None)
    digest = md5.hexdigest()
    problem = None
    if expected_md5 and digest != expected_md5:
        problem = f"md5 mismatch from {transfer.label}: got {digest}, expected {expected_md5}"
    elif not same_directory(io.BufferedReader(_Tail(layout, parsers[0].tail)), layout):
        problem = (f"{transfer.label}: the directory its tail was read with differs from the one its bytes carry: the server's "
                   "answers disagree, so none of its members is vouched for")
    if problem is not None:
        discard(members, layout.archive, target)  # none of them is vouched for: not those of this run, nor those of the run it resumed
        if checkpoints is not None:
            checkpoints.clear()
        raise StreamCorrupt(problem)
    if saver is not None:  # before a name is given: a run killed while they are names the rest, fetching nothing again
        saver.vouched(parsers[0], digest)
    publish(members, layout.archive)
    return StreamOutcome(members, len(written), digest)


class _Tail(io.RawIOBase):
    """The archive as a file of its size holding only the bytes of the directory a stream carried (zeros before it):
    what reading its directory needs."""

    def __init__(self, layout: Layout, tail: bytearray | None) -> None:
        self.size = layout.size
        self.start = layout.directory_offset
        self.tail = bytes(tail) if tail is not None and len(tail) == self.size - self.start else b""
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = max(0, {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), self.size - self.pos))
        if not self.tail:  # the stream did not carry its whole directory: nothing to read it from
            raise OSError("the stream did not carry the archive's directory")
        zeros = max(0, min(n, self.start - self.pos))
        view[:zeros] = bytes(zeros)
        rest = self.tail[self.pos + zeros - self.start : self.pos + n - self.start]
        view[zeros : zeros + len(rest)] = rest
        self.pos += n
        return n


def _runs(layout: Layout, only: frozenset[str] | None, whole: bool, saved: tuple[Checkpoint, list[str]] | None,
          target: Path) -> tuple[Checkpoint | None, list[tuple[int, int]]]:
    """Where to resume (a whole stream) and the member runs to fetch; another archive's checkpoint means from scratch."""
    if whole:
        resume = resume_point(layout, saved, target)
        return resume, [(resume.index if resume else 0, len(layout.members))]
    if saved is not None and saved[0].directory != directory_digest(layout):
        resume_point(layout, saved, target)  # another archive's members go
        return None, [(0, len(layout.members))] if only is None else runs_to_fetch(layout, only)
    return None, runs_to_fetch(layout, only)


class _Checkpointing:
    """Saves a stream's checkpoint: once at its start (so a later run knows which archive it was), then after each member."""

    def __init__(self, checkpoints: CheckpointFile, layout: Layout, md5: Any) -> None:
        self.checkpoints = checkpoints
        self.directory = directory_digest(layout)
        self.names = [sm.member.name for sm in layout.members]
        self.md5 = md5

    def start(self, resume: Checkpoint | None, pos: int) -> None:
        self.checkpoints.save(Checkpoint(self.directory, resume.index if resume else 0, pos, resume.md5_state if resume else None), self.names)

    def after(self, parser: StreamUnpacker) -> None:
        state = self.md5.state() if isinstance(self.md5, md5state.ResumableMd5) else None
        self.checkpoints.save(Checkpoint(self.directory, parser.index, parser.pos, state), self.names)

    def vouched(self, parser: StreamUnpacker, digest: str) -> None:
        """The whole archive checked out (``digest``, its md5): what a run killed from here on needs is to name its members."""
        self.checkpoints.save(Checkpoint(self.directory, parser.index, parser.pos, None, vouched=digest), self.names)


def _pump_all(parsers: list[StreamUnpacker], pump: Callable[[StreamUnpacker], None], at_once: int) -> list[BaseException]:
    """Run each parser's pump (in order, or ``at_once`` on threads); a failed one drops its member in progress. The errors."""

    def run(parser: StreamUnpacker) -> None:
        try:
            pump(parser)
        except BaseException:
            parser.abandon()  # completed members are CRC-checked and stay: the next run continues after them
            raise

    errors: list[BaseException] = []
    if at_once <= 1:
        for parser in parsers:
            try:
                run(parser)
            except BaseException as exc:  # noqa: BLE001 - handed back
                errors.append(exc)
                break
        return errors
    with ThreadPoolExecutor(min(at_once, len(parsers)), thread_name_prefix="range") as pool:
        for fut in [pool.submit(run, p) for p in parsers]:
            failure = fut.exception()
            if failure is not None:
                errors.append(failure)
    return errors


def _pump(transfer: Transfer, parser: StreamUnpacker, retrier: Retrier, sleep: Callable[[float], None],
          on_bytes: Callable[[int], None], note_retry: Callable[[str], None], stop: threading.Event) -> None:
    """Feed the parser from ``parser.pos`` to ``parser.end``; a dropped connection continues at the exact byte."""

    def sink(chunk: bytes) -> None:
        if stop.is_set():  # Ctrl-C or another file's error: not after the archive, now
            raise Stopped("the run is stopping")
        parser.feed(chunk)
        on_bytes(len(chunk))

    if stop.is_set():
        raise Stopped("the run is stopping")
    read_resuming(transfer, parser.pos, parser.end, sink, retrier, note_retry, sleep)


def _pump_ordered(transfer: Transfer, parser: StreamUnpacker, ranges: int, budget: ReadAhead, run: StreamHooks) -> None:
    """Feed the parser from ``parser.pos`` to ``parser.end`` over up to ``ranges`` connections, in order."""

    def sink(chunk: memoryview) -> None:
        parser.feed(chunk)
        run.on_bytes(len(chunk))

    read_ordered(transfer, parser.pos, parser.end, sink, ranges=ranges, budget=budget, hooks=OrderedHooks(run.retrier, run.note_retry, run.stop))


def check_layout_against_pins(layout: Layout, pins: tuple[PinnedMember, ...], url: str) -> None:
    """The archive's directory must list the data set's members (names, sizes, CRC-32s): then each member's CRC,
    checked as it streams, ties the bytes to the data set itself, with or without the archive's md5."""
    have = {sm.member.name: (sm.member.size, sm.member.crc) for sm in layout.members}
    want = {p.name: (p.size, p.crc) for p in pins}
    if have == want:
        return
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    differ = sorted(n for n in set(have) & set(want) if have[n] != want[n])
    detail = (f"member {differ[0]} is {have[differ[0]][0]} bytes with CRC {have[differ[0]][1]:08x}, the data set's is "
              f"{want[differ[0]][0]} bytes with CRC {want[differ[0]][1]:08x}" if differ
              else f"{len(missing)} member(s) missing (e.g. {missing[0]})" if missing else f"{len(extra)} member(s) not in the data set (e.g. {extra[0]})")
    raise PermanentError(f"{url} serves a different archive than the data set's {layout.archive}: {detail}")


def check_streamable_size(layout: Layout, expected_unpacked: int | None, archive: str) -> None:
    declared = sum(sm.member.size for sm in layout.members)
    if expected_unpacked is not None and declared != expected_unpacked:
        raise ExtractError(f"{archive} declares {declared} unpacked bytes, the manifest says {expected_unpacked}",
                           hint="the archive or the manifest is wrong; nothing was written", archive=archive)


__all__ = ["BUFFER_BYTES", "CannotStream", "Layout", "StreamCorrupt", "read_layout", "stream_archive"]
