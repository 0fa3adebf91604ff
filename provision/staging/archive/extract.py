"""Safe zip extraction: checked member paths, no symlinks, bounded sizes, temp names, CRC-checked members named only
once all of the archive's are (:mod:`.naming`)."""

from __future__ import annotations

import os
import queue
import stat
import threading
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import IO

from ...errors import ExtractError, OutOfSpaceError
from ..signals import Stopped, StreamCorrupt
from ..transport.protocol import BUFFER_BYTES
from . import codec
from .members import LOCAL_HEADER, LOCAL_SIGNATURE, METHODS, TMP_SUFFIX, Layout, Member, MemberWriter, StreamMember, is_held
from .naming import publish

RESERVED_TOP = (".provision", ".provision-partial")  # the tool's own folders, when the data set unpacks into data.root itself


def safe_dest(target: Path, name: str, archive: str) -> Path | None:
    """Where member ``name`` goes under ``target``; None for folders; ExtractError when it would escape, or take a name
    the tool uses itself (its state folder, its temporary files)."""
    normalized = name.replace("\\", "/")
    posix = PurePosixPath(normalized)
    if normalized.startswith("/") or (len(normalized) > 1 and normalized[1] == ":") or ".." in posix.parts:
        raise ExtractError(
            f"{archive} holds a member that would be written outside {target}: {name!r}",
            hint="this archive is damaged or hostile; nothing was written; check the source",
            archive=archive, member=name,
        )
    parts = [p for p in posix.parts if p not in ("", ".")]
    if (parts and parts[0] in RESERVED_TOP) or any(p.endswith(TMP_SUFFIX) for p in parts) or "\x00" in normalized:
        raise ExtractError(
            f"{archive} holds a member with a name the tool keeps for itself: {name!r}",
            hint="this archive is damaged or hostile; nothing was written; check the source",
            archive=archive, member=name,
        )
    if normalized.endswith("/"):
        return None
    parts = [p for p in posix.parts if p not in ("", ".")]
    if not parts:
        return None
    dest = target.joinpath(*parts)
    if os.path.commonpath([os.path.abspath(dest), os.path.abspath(target)]) != os.path.abspath(target):
        raise ExtractError(f"{archive}: member {name!r} escapes {target}", hint="nothing was written; check the source", archive=archive, member=name)
    return dest


def list_members(zf: zipfile.ZipFile, target: Path, archive: str) -> list[Member]:
    """Every file member, validated before anything is written: no symlinks, no escapes, no two members
    for one file (which would race for one temporary name and leave it unclear which is meant)."""
    members = []
    seen: dict[Path, str] = {}
    for info in zf.infolist():
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise ExtractError(f"{archive} holds a symbolic link member {info.filename!r}", hint="symlinks are refused; nothing was written", archive=archive, member=info.filename)
        dest = safe_dest(target, info.filename, archive)
        if dest is None or info.is_dir():
            continue
        if dest in seen:
            raise ExtractError(
                f"{archive} holds two members for {dest.relative_to(target)}: {seen[dest]!r} and {info.filename!r}",
                hint="the archive is damaged or not the data set's; nothing was written; check the source (or the manifest's md5)",
                archive=archive, member=info.filename,
            )
        seen[dest] = info.filename
        members.append(Member(info.filename, dest, info.file_size, info.CRC))
    check_extents(zf, archive)
    return members


def check_extents(zf: zipfile.ZipFile, archive: str) -> None:
    """Every member's bytes lie before the central directory and after the member before it: an entry that points past
    the end of the archive, or into another member's bytes, is refused up front (in both modes)."""
    end = zf.start_dir
    previous: tuple[int, str] | None = None
    for info in sorted(zf.infolist(), key=lambda i: i.header_offset):
        own_end = info.header_offset + LOCAL_HEADER.size + len(info.orig_filename.encode("utf-8", "surrogateescape")) + info.compress_size
        problem = ""
        if info.header_offset < 0 or own_end > end:
            problem = f"member {info.filename!r} lies past the end of its data (byte {info.header_offset} + {info.compress_size} of {end})"
        elif previous is not None and info.header_offset < previous[0]:
            problem = f"members {previous[1]!r} and {info.filename!r} overlap"
        if problem:
            raise ExtractError(f"{archive}: {problem}", hint="the archive is damaged or hostile; nothing of it was written; check the source",
                               archive=archive, member=info.filename)
        previous = (own_end, info.filename)


def member_done(member: Member, check_crc: bool = False) -> bool:
    """A member under its final name is complete: it was renamed only after its CRC checked out. With ``check_crc``,
    its bytes are read back and checked against this archive's CRC (a member an interrupted run wrote from another
    source is vouched for only so)."""
    try:
        if os.stat(member.dest).st_size != member.size:
            return False
        return not check_crc or crc_of(member.dest) == member.crc
    except OSError:
        return False


def extract(
    archive_path: Path,
    target: Path,
    *,
    expected_unpacked: int | None = None,
    only: Iterable[str] | None = None,
    free_bytes: Callable[[], int] | None = None,
    workers: int = 1,
    on_member: Callable[[Member], None] | None = None,
    stop: threading.Event | None = None,
    on_start: Callable[[int, int], None] | None = None,
) -> list[Member]:
    """Extract ``archive_path`` into ``target``, skipping members already complete; return all members.

    ``only`` limits writing to those member names (repairs). Members are written in parallel by
    ``workers`` threads, each reading the archive at its own offsets. ``on_start(members, bytes)`` says how
    much is about to be written, ``on_member`` each member done.
    """
    archive = archive_path.name
    try:
        with zipfile.ZipFile(archive_path) as zf:
            members = list_members(zf, target, archive)
            infos = {i.filename: i for i in zf.infolist()}
    except zipfile.BadZipFile as exc:
        raise ExtractError(f"{archive} is not a readable zip archive: {exc}", hint="delete it and stage again to refetch", archive=archive) from None
    declared = sum(m.size for m in members)
    if expected_unpacked is not None and declared != expected_unpacked:
        raise ExtractError(
            f"{archive} declares {declared} unpacked bytes, the manifest says {expected_unpacked}",
            hint="the archive or the manifest is wrong; nothing was written",
            archive=archive, declared=declared, expected=expected_unpacked,
        )
    wanted = set(only) if only is not None else None
    # the archive's md5 vouches for its directory, and so each CRC: a member already under its final name stays only when
    # it matches, and one a stopped run held (checked out with the CRC its name carries) is taken up as it is
    chosen = [m for m in members if wanted is None or m.name in wanted]
    held = {m.name for m in chosen if is_held(m, archive)}
    to_name = [m for m in chosen if m.name in held or wanted is not None or not member_done(m, check_crc=True)]
    todo = [m for m in to_name if m.name not in held]
    located = [stream_member(infos[m.name], m, archive) for m in sorted(todo, key=lambda m: -m.size)]
    remaining = sum(m.size for m in todo)
    if free_bytes is not None and remaining > free_bytes():
        raise OutOfSpaceError.disk_full(target, f"unpacking {archive} (it is kept)", needed=remaining, free=free_bytes())
    if on_start is not None:
        on_start(len(todo), remaining)
    _run_parallel(archive_path, located, max(1, workers), on_member, stop)
    publish(to_name, archive)
    return members


def same_directory(archive: Path | IO[bytes], layout: Layout) -> bool:
    """Whether ``archive``'s own directory (a file, or the tail of one as a file object) lists the members ``layout``
    did, at the same offsets, sizes and CRCs, and starts where it said."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = {m.name for m in list_members(zf, Path("/"), layout.archive)}
            infos = {i.filename: i for i in zf.infolist()}
            start = zf.start_dir
    except (zipfile.BadZipFile, ExtractError, OSError, ValueError, EOFError):
        return False
    if start != layout.directory_offset or names != {sm.member.name for sm in layout.members}:
        return False
    for sm in layout.members:
        info = infos[sm.member.name]
        if (info.header_offset, info.compress_size, info.compress_type, info.file_size, info.CRC) != \
                (sm.header_offset, sm.compress_size, sm.compress_type, sm.member.size, sm.member.crc):
            return False
    return True


def stream_member(info: zipfile.ZipInfo, member: Member, archive: str) -> StreamMember:
    """Where ``member``'s bytes are and how they are compressed; an encrypted member, or an unknown method, is refused."""
    if info.flag_bits & 0x1 or info.compress_type not in METHODS:
        what = "is encrypted" if info.flag_bits & 0x1 else f"uses compression method {info.compress_type}, which is not supported"
        raise ExtractError(f"{archive}: member {member.name} {what}", hint="this is not an archive of the data set; nothing of it was written",
                           archive=archive, member=member.name)
    return StreamMember(member, info.header_offset, info.compress_size, info.compress_type)


def _run_parallel(archive_path: Path, todo: list[StreamMember], workers: int, on_member: Callable[[Member], None] | None,
                  stop: threading.Event | None) -> None:
    jobs: queue.Queue[StreamMember] = queue.Queue()
    for sm in todo:
        jobs.put(sm)
    errors: list[BaseException] = []
    halt = stop or threading.Event()

    def work(fd: int) -> None:
        try:
            while not halt.is_set() and not errors:
                try:
                    sm = jobs.get_nowait()
                except queue.Empty:
                    return
                write_member(fd, sm, archive_path.name, halt)
                if on_member:
                    on_member(sm.member)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            errors.append(exc)

    fd = os.open(archive_path, os.O_RDONLY)
    try:
        threads = [threading.Thread(target=work, args=(fd,), name=f"extract-{i}", daemon=True) for i in range(min(workers, max(1, len(todo))))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        os.close(fd)
    if errors:
        raise errors[0]
    if not jobs.empty():  # the run is stopping (Ctrl-C, another file's error): this archive is not unpacked, and says so
        raise Stopped(f"{archive_path.name}: unpacking stopped with {jobs.qsize()} member(s) still to write")


def data_offset(fd: int, sm: StreamMember, archive: str) -> int:
    """Where member ``sm``'s compressed bytes start in the archive open at ``fd`` (after its local header, read there)."""
    member = sm.member
    header = os.pread(fd, LOCAL_HEADER.size, sm.header_offset)
    if len(header) < LOCAL_HEADER.size or header[:4] != LOCAL_SIGNATURE:
        raise ExtractError(f"{archive}: member {member.name} is damaged (no local header at byte {sm.header_offset})",
                           hint="the archive will be fetched again on the next stage", archive=archive, member=member.name)
    name_len, extra_len = LOCAL_HEADER.unpack(header)[9:11]
    return sm.header_offset + LOCAL_HEADER.size + name_len + extra_len


class MemberFromFile:
    """One member inflated from the archive open at ``fd``, in as many steps as its bytes take to land: ``feed(upto)``
    inflates what lies before byte ``upto``, ``finish`` checks and holds it once all of it has been fed. Any failure
    leaves no temporary file; ``discard`` drops one that is given up on."""

    def __init__(self, fd: int, sm: StreamMember, archive: str) -> None:
        self.fd = fd
        self.sm = sm
        self.archive = archive
        self.pos = data_offset(fd, sm, archive)
        self.end = self.pos + sm.compress_size
        self.writer = MemberWriter(sm, archive)
        self.buf = memoryview(bytearray(min(BUFFER_BYTES, max(1, sm.compress_size))))  # read into again and again

    def feed(self, upto: int, stop: threading.Event | None = None) -> None:
        """Inflate the member's bytes from where the last feed ended up to ``upto`` (all of them at most); ``stop``
        ends it between two reads."""
        try:
            while self.pos < min(upto, self.end):
                if stop is not None and stop.is_set():
                    raise Stopped(f"{self.archive}: stopped while unpacking {self.sm.member.name}")
                got = os.preadv(self.fd, [self.buf[: min(len(self.buf), min(upto, self.end) - self.pos)]], self.pos)
                if not got:
                    raise StreamCorrupt(f"the archive ends {self.end - self.pos} bytes into member {self.sm.member.name}")
                self.writer.feed(self.buf[:got])
                self.pos += got
        except BaseException as exc:
            raise self._failed(exc) from None

    @property
    def fed(self) -> bool:
        return self.pos >= self.end

    def finish(self) -> None:
        try:
            self.writer.finish()
        except BaseException as exc:
            raise self._failed(exc) from None

    def discard(self) -> None:
        self.writer.discard()

    def _failed(self, exc: BaseException) -> BaseException:
        self.writer.discard()
        if isinstance(exc, StreamCorrupt):
            name = self.sm.member.name
            return ExtractError(f"{self.archive}: member {name} is damaged ({exc})", hint="the archive will be fetched again on the next stage",
                                archive=self.archive, member=name)
        return exc


def write_member(fd: int, sm: StreamMember, archive: str, stop: threading.Event | None = None) -> None:
    """Inflate one member, read at its offsets from the archive open at ``fd``, into a temp name beside its
    destination; held once its CRC checks out. ``stop`` ends it between two reads (the temp file goes)."""
    member = MemberFromFile(fd, sm, archive)
    member.feed(member.end, stop)
    member.finish()


def crc_of(path: Path) -> int:
    """CRC-32 of a file, read in MiB-sized pieces."""
    crc = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(BUFFER_BYTES * 4):
            crc = codec.crc32(chunk, crc)
    return crc
