"""A stream's checkpoint: where the stream of one archive stands, saved after each member, so a killed run continues
at the next member with the archive's md5 still covering every byte (its running state restored), and a changed
archive (another directory) is noticed and what the earlier run wrote is removed."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..state import atomic_write_json, read_json
from . import md5state
from .extract import member_done, safe_dest
from .members import Layout


def directory_digest(layout: Layout) -> str:
    """A fingerprint of the central directory (names, sizes, CRCs, offsets): a resumed stream must be of the same archive."""
    text = json.dumps([[sm.member.name, sm.member.size, sm.member.crc, sm.header_offset, sm.compress_size] for sm in layout.members])
    return hashlib.sha256(f"{layout.size}:{layout.directory_offset}:{text}".encode()).hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    """Where a stream of one archive stands, saved after each member: the archive (its directory's fingerprint), the
    next member to write, the byte the stream continues at, and the md5 state of every byte before it (single-range
    streams where a resumable md5 is available; None otherwise)."""

    directory: str
    index: int = 0
    pos: int = 0
    md5_state: bytes | None = None


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
            return Checkpoint(str(saved["directory"]), int(saved["index"]), int(saved["pos"]), state), [str(n) for n in saved["names"]]
        except (KeyError, TypeError, ValueError):
            return None

    def save(self, checkpoint: Checkpoint, names: list[str]) -> None:
        atomic_write_json(self.path, {"size": self.size, "md5": self.md5, "directory": checkpoint.directory, "index": checkpoint.index,
                                      "pos": checkpoint.pos, "md5_state": checkpoint.md5_state.hex() if checkpoint.md5_state else None,
                                      "names": names}, fsync=False)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def discard_stream(checkpoint: Path, target: Path, archive: str) -> None:
    """Remove what a stream that will not be resumed wrote (the members its checkpoint names), and the checkpoint."""
    saved = read_json(checkpoint)
    names = saved.get("names", []) if isinstance(saved, dict) else []
    _remove_named([str(n) for n in names] if isinstance(names, list) else [], target, archive)
    checkpoint.unlink(missing_ok=True)


def _remove_named(names: list[str], target: Path, archive: str) -> None:
    """Delete the members of ``archive`` with these names under ``target`` (names checked as any member's are)."""
    for name in names:
        dest = safe_dest(target, name, archive)
        if dest is not None:
            dest.unlink(missing_ok=True)


def resume_point(layout: Layout, saved: tuple[Checkpoint, list[str]] | None, target: Path) -> Checkpoint | None:
    """Where a single-range stream can continue with its md5 intact, or None (start from byte 0). Members a checkpoint of
    another archive wrote are removed: nothing it wrote is vouched for by this one."""
    if saved is None:
        return None
    checkpoint, names = saved
    if checkpoint.directory != directory_digest(layout):
        _remove_named(names, target, layout.archive)
        return None
    if checkpoint.md5_state is None or not md5state.available() or checkpoint.index > len(layout.members):
        return None
    if not all(member_done(layout.members[i].member) for i in range(checkpoint.index)):
        return None
    return checkpoint
