"""Writing one zip member: its compressed bytes inflated into a temporary name beside its destination, then, once its
size and CRC-32 check out, *held* under a name that says so (the CRC in it), until its whole archive is vouched for and
:mod:`.naming` gives it its final name. Shared by archive mode (bytes read from the downloaded archive) and stream mode
(bytes as they arrive), so both inflate with the same codec (:mod:`.codec`).

Every temporary name of a member carries its archive's key: an archive only ever takes up or removes its own, never
another's (a directory that lies may name another archive's members)."""

from __future__ import annotations

import bz2
import glob
import hashlib
import lzma
import os
import struct
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ExtractError, OutOfSpaceError
from ..signals import StreamCorrupt
from . import codec
from .writeback import EarlyWriteback

INPUT_PIECE_BYTES = 128 << 10  # compressed bytes per call to the inflater
OUTPUT_PIECE_BYTES = 512 << 10  # inflated bytes at a time: held at once, and small enough to stay in the cache until written
TMP_SUFFIX = ".provision-tmp"
HELD_SUFFIX = ".held" + TMP_SUFFIX  # a member checked out, waiting for its archive to be vouched for
LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
LOCAL_SIGNATURE = b"PK\x03\x04"
METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
# what damaged compressed data raises: zlib's or ISA-L's error, LZMA's, bz2's OSError, EOFError after the end of a stream
DECODE_ERRORS = (codec.error, lzma.LZMAError, OSError, EOFError, ValueError)


@dataclass(frozen=True)
class Member:
    """A file member of an archive and where it will be written."""

    name: str
    dest: Path
    size: int
    crc: int


def write_error(exc: OSError, member: Member, archive: str) -> ExtractError | OutOfSpaceError:
    """An OSError while writing a member, as the error to show (never a traceback)."""
    if exc.errno == 28:  # ENOSPC
        return OutOfSpaceError.disk_full(member.dest, f"unpacking {member.name}")
    return ExtractError(
        f"{archive}: cannot write {member.dest}: {exc.strerror or exc}",
        hint=f"check that {member.dest.parent} is writable and on a working disk; what is staged so far is kept",
        archive=archive, member=member.name, path=str(member.dest),
    )


def temp_prefix(dest: Path, archive: str) -> str:
    """How every temporary name of ``archive``'s member bound for ``dest`` starts: hidden (the book's globs skip it), and
    its archive's own."""
    prefix = f".{dest.name}.{archive}."
    if len(prefix.encode("utf-8", "surrogateescape")) > 160:  # the name then still fits a filesystem's 255 bytes
        prefix = f".{hashlib.sha256(f'{dest.name}/{archive}'.encode('utf-8', 'surrogateescape')).hexdigest()[:40]}."
    return prefix


def held_path(member: Member, archive: str) -> Path:
    """Where ``archive``'s ``member`` is held once its size and CRC-32 checked out (the CRC is in the name)."""
    return member.dest.with_name(f"{temp_prefix(member.dest, archive)}{member.crc & 0xFFFFFFFF:08x}{HELD_SUFFIX}")


def temporaries(dest: Path, archive: str) -> list[Path]:
    """Every temporary file ``archive`` has for the member bound for ``dest``: one being written, one held."""
    return list(dest.parent.glob(f"{glob.escape(temp_prefix(dest, archive))}*{TMP_SUFFIX}"))


def is_held(member: Member, archive: str) -> bool:
    """Whether ``archive`` holds ``member`` already: written and checked, by this run or one that was stopped (its name
    says which CRC it checked out with, and its size is the member's)."""
    try:
        return os.stat(held_path(member, archive)).st_size == member.size
    except OSError:
        return False


def held_size(dest: Path, archive: str) -> int:
    """The size of what ``archive`` holds for ``dest`` (0: nothing), whatever CRC it was held with."""
    for path in dest.parent.glob(f"{glob.escape(temp_prefix(dest, archive))}*{HELD_SUFFIX}"):
        try:
            return os.stat(path).st_size
        except OSError:
            continue
    return 0


@dataclass(frozen=True)
class StreamMember:
    member: Member
    header_offset: int
    compress_size: int
    compress_type: int


@dataclass(frozen=True)
class Layout:
    """What the central directory says: members in stream order and where the directory starts."""

    members: tuple[StreamMember, ...]
    directory_offset: int
    size: int
    archive: str = ""


def _decompressor(method: int) -> Any:
    if method == zipfile.ZIP_DEFLATED:
        return codec.raw_inflater()
    if method == zipfile.ZIP_BZIP2:
        return bz2.BZ2Decompressor()
    if method == zipfile.ZIP_LZMA:
        return _LzmaZip()
    return None  # stored


def lzma1_filter(props: bytes) -> dict[str, int]:
    """LZMA1's five property bytes (lc/lp/pb packed in one, then the dictionary size) as an lzma filter."""
    if len(props) < 5:
        raise StreamCorrupt(f"LZMA properties of {len(props)} bytes, expected 5")
    packed, dict_size = props[0], int.from_bytes(props[1:5], "little")
    lc, rest = packed % 9, packed // 9
    return {"id": lzma.FILTER_LZMA1, "lc": lc, "lp": rest % 5, "pb": rest // 5, "dict_size": dict_size}


class _LzmaZip:
    """LZMA as zip stores it: a 4-byte version, a 2-byte properties size, the properties, then raw LZMA1."""

    def __init__(self) -> None:
        self.head = b""
        self.inner: Any = None

    def decompress(self, data: bytes, max_length: int = -1) -> bytes:
        if self.inner is None:
            self.head += data
            if len(self.head) < 4 or len(self.head) < 4 + struct.unpack("<H", self.head[2:4])[0]:
                return b""
            psize = struct.unpack("<H", self.head[2:4])[0]
            props = self.head[4 : 4 + psize]
            filters = [lzma1_filter(props)]
            self.inner = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=filters)
            data, self.head = self.head[4 + psize :], b""
        return self.inner.decompress(data, max_length)

    @property
    def unconsumed_tail(self) -> bytes:
        return b""


class MemberWriter:
    """Inflates one member's compressed bytes into its temporary file; ``finish`` checks it and holds it."""

    def __init__(self, sm: StreamMember, archive: str) -> None:
        self.sm = sm
        self.member = sm.member
        self.archive = archive
        try:
            self.member.dest.parent.mkdir(parents=True, exist_ok=True)
            for stale in temporaries(self.member.dest, archive):
                stale.unlink(missing_ok=True)  # what a killed run of this archive left of this member (the run lock keeps others out)
            # a name of its own that no member can have: random, and members named *.provision-tmp are refused
            fd, tmp = tempfile.mkstemp(prefix=temp_prefix(self.member.dest, archive), suffix=TMP_SUFFIX, dir=self.member.dest.parent)
            self.tmp = Path(tmp)
            self.out = os.fdopen(fd, "wb")
        except OSError as exc:
            raise write_error(exc, self.member, archive) from None
        self.writeback = EarlyWriteback(fd)
        self.crc = 0
        self.written = 0
        self.inflater = _decompressor(sm.compress_type)

    def feed(self, data: bytes | memoryview) -> None:
        """Inflate and write ``data`` (not kept: a view of a buffer that is used again is fine)."""
        if self.inflater is None:
            self._emit(data)
            return
        view = memoryview(data)
        for at in range(0, len(view), INPUT_PIECE_BYTES):  # small pieces: what the output bound leaves over is small too
            pending: bytes | memoryview = view[at : at + INPUT_PIECE_BYTES]
            while pending:
                try:
                    out = self.inflater.decompress(pending, OUTPUT_PIECE_BYTES)
                except DECODE_ERRORS as exc:  # damaged compressed data: damaged bytes, as a bad CRC would say
                    raise StreamCorrupt(f"member {self.member.name}: its compressed data is damaged ({type(exc).__name__}: {exc})") from None
                self._emit(out)
                pending = getattr(self.inflater, "unconsumed_tail", b"")
                if not out and not pending:
                    break

    def _emit(self, data: bytes | memoryview) -> None:
        if not data:
            return
        if self.written + len(data) > self.member.size:
            raise StreamCorrupt(f"member {self.member.name} inflates past its declared {self.member.size} bytes")
        try:
            self.out.write(data)
        except OSError as exc:
            self.discard()
            raise write_error(exc, self.member, self.archive) from None
        self.crc = codec.crc32(data, self.crc)
        self.written += len(data)
        self.writeback.written(self.written)

    def finish(self) -> None:
        """Check the member's size and CRC-32 and hold it (:func:`held_path`): it is named once its archive is vouched for."""
        if self.inflater is not None and hasattr(self.inflater, "flush"):
            try:
                tail = self.inflater.flush()
            except DECODE_ERRORS as exc:
                raise StreamCorrupt(f"member {self.member.name}: its compressed data is damaged ({type(exc).__name__}: {exc})") from None
            self._emit(tail)
        try:
            self.out.flush()  # what the file object still holds goes to the kernel first: fsync sees only the kernel's
            os.fsync(self.out.fileno())  # the member is on disk before it takes its final name (and a checkpoint names it)
            self.writeback.synced()
            self.out.close()
        except OSError as exc:
            self.discard()
            raise write_error(exc, self.member, self.archive) from None
        if self.written != self.member.size or self.crc != self.member.crc:
            self.discard()
            raise StreamCorrupt(f"member {self.member.name}: got {self.written} bytes with CRC {self.crc:08x}, "
                                f"the directory says {self.member.size} bytes with CRC {self.member.crc:08x}")
        try:
            os.replace(self.tmp, held_path(self.member, self.archive))
        except OSError as exc:
            self.discard()
            raise write_error(exc, self.member, self.archive) from None

    def discard(self) -> None:
        if not self.out.closed:
            self.out.close()
        self.tmp.unlink(missing_ok=True)
