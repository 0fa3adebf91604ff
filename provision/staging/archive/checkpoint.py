"""A stream's checkpoint: where the stream of one archive stands, saved after each member, so a killed run continues
at the next member with the archive's md5 still covering every byte (its running state restored), and a changed
archive (another directory) is noticed and what the earlier run holds is removed. Once the archive is vouched for, the
checkpoint says so before its members are named: a run killed while they are, or before its record is written, names
the rest without fetching the archive again."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ...errors import ExtractError
from ..state import atomic_write_json, read_json
from . import md5state
from .extract import safe_dest
from .members import Layout, Member, is_held, temporaries


def directory_digest(layout: Layout) -> str:
    """A fingerprint of the central directory (names, sizes, CRCs, offsets): a resumed stream must be of the same archive."""
    text = json.dumps([[sm.member.name, sm.member.size, sm.member.crc, sm.header_offset, sm.compress_size] for sm in layout.members])
    return hashlib.sha256(f"{layout.size}:{layout.directory_offset}:{text}".encode()).hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    """Where a stream of one archive stands, saved after each member: the archive (its directory's fingerprint), the
    next member to write, the byte the stream continues at, and the md5 state of every byte before it (single-range
    streams where a resumable md5 is available; None otherwise); ``vouched``, the md5 the stream computed, once the
    whole archive checked out."""

    directory: str
    index: int = 0
    pos: int = 0
    md5_state: bytes | None = None
    vouched: str | None = None


class CheckpointFile:
    """A stream's checkpoint beside the partial downloads (``<key>.stream.json``), written atomically after each member."""

    def __init__(self, path: Path, size: int, md5: str | None) -> None:
        self.path = path
        self.size = size
        self.md5 = md5

    def load(self) -> tuple[Checkpoint, list[str]] | None:
        """The saved checkpoint and the member names of its archive, when it is for this archive's size and md5."""
        saved = read_json(self.path)
        if not isinstance(saved, dict) or saved.get("size") != self.size or saved.get("md5") != self.md5:
            return None
        try:
            state = bytes.fromhex(saved["md5_state"]) if saved.get("md5_state") else None
            return (Checkpoint(str(saved["directory"]), int(saved["index"]), int(saved["pos"]), state,
                                str(saved["vouched"]) if isinstance(saved.get("vouched"), str) else None),
                    [str(n) for n in saved["names"]])
        except (KeyError, TypeError, ValueError):
            return None

    def save(self, checkpoint: Checkpoint, names: list[str]) -> None:
        atomic_write_json(self.path, {"size": self.size, "md5": self.md5, "directory": checkpoint.directory, "index": checkpoint.index,
                                      "pos": checkpoint.pos, "md5_state": checkpoint.md5_state.hex() if checkpoint.md5_state else None,
                                      "vouched": checkpoint.vouched, "names": names}, fsync=False)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def discard_stream(checkpoint: Path, target: Path, archive: str) -> None:
    """Remove what a stream that will not be resumed holds (of the members its checkpoint names), and the checkpoint."""
    saved = read_json(checkpoint)
    names = saved.get("names", []) if isinstance(saved, dict) else []
    discard_named([str(n) for n in names] if isinstance(names, list) else [], target, archive)
    checkpoint.unlink(missing_ok=True)


def discard_named(names: list[str], target: Path, archive: str) -> None:
    """Remove what ``archive`` holds of the members with these names under ``target`` (names checked as any member's are;
    only its own temporary files, never a final name)."""
    for name in names:
        try:
            dest = safe_dest(target, name, archive)
        except ExtractError:
            continue
        if dest is not None:
            for path in temporaries(dest, archive):
                path.unlink(missing_ok=True)


def resume_point(layout: Layout, saved: tuple[Checkpoint, list[str]] | None, target: Path) -> Checkpoint | None:
    """Where a single-range stream can continue with its md5 intact, or None (start from byte 0). What a checkpoint of
    another archive holds is removed: nothing of it is vouched for by this one. A vouched checkpoint continues with its
    members named or held (the archive is not fetched again)."""
    if saved is None:
        return None
    checkpoint, names = saved
    if checkpoint.directory != directory_digest(layout):
        discard_named(names, target, layout.archive)
        return None
    members = [sm.member for sm in layout.members]
    if checkpoint.vouched is not None:
        return checkpoint if all(is_held(m, layout.archive) or named(m) for m in members) else None
    if checkpoint.md5_state is None or not md5state.available() or checkpoint.index > len(layout.members) \
            or checkpoint.pos > layout.directory_offset:
        return None
    if not all(is_held(members[i], layout.archive) for i in range(checkpoint.index)):
        return None
    return checkpoint


def named(member: Member) -> bool:
    """Whether ``member`` is under its final name, of its size (a vouched stream named it before it was killed)."""
    try:
        return os.stat(member.dest).st_size == member.size
    except OSError:
        return False

