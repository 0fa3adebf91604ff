"""What has been staged: an atomic JSON state file, partial-download progress, and the run lock.

All of it lives in ``<data.root>/.provision/``, on the same filesystem as the data, so
temporary files can be renamed into place atomically.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any

from ..atomicfile import atomic_write_bytes
from ..environment import existing_ancestor
from ..errors import LockError, OutOfSpaceError

STATE_VERSION = 1
log = logging.getLogger(__name__)


class Stage(str, Enum):
    """Where a file stands."""

    MISSING = "missing"
    PARTIAL = "partial"       # some bytes downloaded, or some members streamed
    VERIFIED = "verified"     # the file (or archive) is there and matches its md5; an archive not yet (all) unpacked
    EXTRACTED = "extracted"   # an archive's members are all unpacked (a plain file: verified)
    LINKED = "linked"         # from an unpacked copy


@dataclass(frozen=True)
class FileStatus:
    """A file's stage for the plan and ``status``, with what a partial one has."""

    key: str
    stage: str
    partial_bytes: int = 0
    source: str | None = None
    unpacked_done_bytes: int = 0  # members already complete on disk from an unpacking that did not finish


Members = Mapping[str, tuple[int, int | None]]  # member name -> (size, CRC-32; None for a copy's scan checked by its header)


@dataclass(frozen=True)
class FileRecord:
    """What the state file says of one file. Written only through :class:`StateStore`'s transitions, read by the
    engine's ``decide``, ``status`` and ``verify`` alike."""

    unpack: bool = False
    verified: bool = False         # the file, or the archive, matched its md5 (a streamed archive: once complete)
    extracted: bool = False        # every member of the archive is unpacked
    linked: bool = False           # from an unpacked copy, through links
    streaming: bool = False        # a stream of the archive is under way
    md5: str | None = None
    size: int | None = None
    source: str | None = None
    stamp: tuple[int, int] | None = None  # (size, mtime_ns) of the verified archive while it is on disk
    members: Members = field(default_factory=dict)
    damaged: tuple[str, ...] = ()
    md5_checked: bool | None = None  # a stream: whether the archive's md5 vouched for it
    unpacked_bytes: int | None = None

    @property
    def stage(self) -> Stage:
        if self.linked:
            return Stage.LINKED
        if self.extracted or (self.verified and not self.unpack):
            return Stage.EXTRACTED if self.unpack else Stage.VERIFIED
        if self.verified:
            return Stage.VERIFIED
        return Stage.PARTIAL if self.streaming else Stage.MISSING

    def to_json(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["stamp"] = {"size": self.stamp[0], "mtime_ns": self.stamp[1]} if self.stamp else None
        raw["members"] = {name: list(v) for name, v in self.members.items()}
        raw["damaged"] = list(self.damaged)
        return raw

    @classmethod
    def from_json(cls, raw: Any) -> FileRecord:
        """A record from the state file, as tolerant as a state file written by an older version needs (fields it
        lacks take their defaults, fields it does not know are left out), and no more: a field of the wrong shape
        raises :class:`DamagedRecord`, since a record that says what it cannot mean is no record of a staged file."""
        if not isinstance(raw, dict):
            raise DamagedRecord(f"a record is a {type(raw).__name__}, not an object")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in raw or raw[f.name] is None and f.name not in _FLAGS:
                continue
            values[f.name] = _FIELD_READERS[f.name](raw[f.name], f.name)
        return cls(**values)


class DamagedRecord(ValueError):
    """A state file's record (or the file itself) is not of the shape this version writes."""


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise DamagedRecord(f"{name} is {value!r}, not true or false")
    return value


def _count(value: Any, name: str) -> int:
    if not _is_count(value):
        raise DamagedRecord(f"{name} is {str(value)[:40]!r}, not a count of bytes")
    return int(value)


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise DamagedRecord(f"{name} is {value!r}, not text")
    return value


def _stamp(value: Any, name: str) -> tuple[int, int]:
    if not isinstance(value, dict) or set(value) != {"size", "mtime_ns"}:
        raise DamagedRecord(f"{name} is {value!r}, not a size and an mtime")
    return _count(value["size"], f"{name}.size"), _count(value["mtime_ns"], f"{name}.mtime_ns")


def _member_name(value: Any, name: str) -> str:
    """A member's name as this version writes it: a relative path inside the target folder. A record naming anything
    else (an absolute path, ``..``) would have ``verify`` read, and ``stage`` repair, a file outside the data root."""
    text = _text(value, name)
    parts = text.split("/")
    if not text or text.startswith("/") or "\\" in text or "\x00" in text or (len(text) > 1 and text[1] == ":") \
            or any(p in ("", ".", "..") for p in parts):
        raise DamagedRecord(f"{name} names {text!r}, which is not a file inside the data folder")
    return text


def _members(value: Any, name: str) -> dict[str, tuple[int, int | None]]:
    if not isinstance(value, dict):
        raise DamagedRecord(f"{name} is a {type(value).__name__}, not an object of members")
    members: dict[str, tuple[int, int | None]] = {}
    for member, entry in value.items():
        _member_name(member, name)
        if not isinstance(entry, list) or len(entry) != 2 or not (entry[1] is None or _is_count(entry[1])):
            raise DamagedRecord(f"{name}[{member!r}] is {entry!r}, not a size and a CRC")
        members[member] = (_count(entry[0], f"{name}[{member!r}]"), entry[1])
    return members


def _names(value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise DamagedRecord(f"{name} is a {type(value).__name__}, not a list of member names")
    return tuple(_member_name(n, name) for n in value)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 64  # what a file's size, mtime or CRC can be


_FLAGS = ("unpack", "verified", "extracted", "linked", "streaming")
_FIELD_READERS: dict[str, Any] = {
    **{name: _flag for name in _FLAGS}, "md5_checked": _flag,
    "md5": _text, "source": _text, "size": _count, "unpacked_bytes": _count,
    "stamp": _stamp, "members": _members, "damaged": _names,
}


def work_dir(root: Path) -> Path:
    return root / ".provision"


PARTIAL_IN_TARGET = ".provision-partial"


def partial_dir(root: Path, target: Path | None = None) -> Path:
    """Where partial downloads and stream checkpoints live: ``<root>/.provision/partial``, or ``<target>/.provision-partial``
    when the target folder is on another filesystem (a disk mounted where the book looks), so that a finished file
    is renamed into place on its own filesystem, never copied across."""
    base = work_dir(root) / "partial"
    if target is not None:
        try:
            if os.stat(target).st_dev != os.stat(existing_ancestor(base)).st_dev:
                return target / PARTIAL_IN_TARGET
        except OSError:
            pass
    return base


def atomic_write_json(path: Path, data: Any, fsync: bool = True) -> None:
    """Write JSON to a temp file beside ``path`` (fsync'd unless told not to), then rename it into place."""
    try:
        atomic_write_bytes(path, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"), fsync=fsync)
    except OSError as exc:
        if exc.errno == 28:  # ENOSPC
            raise OutOfSpaceError.disk_full(path, f"saving {path.name}") from None
        raise


def stat_stamp(path: Path) -> tuple[int, int] | None:
    """(size, mtime_ns): a verified file whose stamp still matches need not be hashed again."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class Inside:
    """Which of a record's member paths lie inside the target folder: no link on the way to the file leads out (the
    file itself may be a link: a subset linked from an unpacked copy). What a record names elsewhere is never read."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self._real = os.path.realpath(target)
        self._folders: dict[str, bool] = {}

    def path(self, name: str) -> Path | None:
        path = self.target / name
        folder = str(path.parent)
        if folder not in self._folders:
            real = os.path.realpath(folder)
            self._folders[folder] = real == self._real or real.startswith(self._real.rstrip(os.sep) + os.sep)
        return path if self._folders[folder] else None


def size_of(path: Path) -> int | None:
    """The file's size, or None when it does not exist."""
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def read_json(path: Path) -> Any:
    """The parsed file, or None when it is missing or unreadable (a torn file is as good as none, and so is one nested
    too deep to parse)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError, RecursionError):
        return None


def load_records(path: Path) -> tuple[dict[str, FileRecord], str]:
    """The records of a state file, and what is damaged in it ("" when nothing): a file that is not this version's
    JSON object of records counts as holding none, a record of the wrong shape is left out. Reads only."""
    if not os.path.lexists(path):
        return {}, ""
    if os.path.islink(path):  # never followed: what it leads to is no file of this data root's
        return {}, "a link, not a file"
    loaded = read_json(path)
    if not isinstance(loaded, dict) or loaded.get("version") != STATE_VERSION or not isinstance(loaded.get("files"), dict):
        what = ("not readable JSON" if loaded is None else f"a {type(loaded).__name__}, not an object" if not isinstance(loaded, dict)
                else f"of another version ({str(loaded.get('version'))[:40]})" if loaded.get("version") != STATE_VERSION
                else "without an object of files")
        return {}, what
    records, bad = {}, []
    for key, raw in loaded["files"].items():
        try:
            records[key] = FileRecord.from_json(raw)
        except DamagedRecord as exc:
            bad.append(f"{key}: {exc}")
    return records, "; ".join(bad[:3]) + (f" (and {len(bad) - 3} more)" if len(bad) > 3 else "")


class StateStore:
    """The state file of one data root. Thread-safe; every update is written atomically. A damaged state file is set
    aside (renamed, and said so in the log) with the good records kept: the files the rest named are staged again."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = work_dir(root) / "state.json"
        self._lock = threading.Lock()
        records, damaged = load_records(self.path)
        self._data: dict[str, Any] = {"version": STATE_VERSION, "files": {k: r.to_json() for k, r in records.items()}}
        self.set_aside: Path | None = None
        if damaged:
            self.set_aside = self.path.with_name(f"state.damaged-{time.strftime('%Y%m%d-%H%M%S')}.json")
            os.replace(self.path, self.set_aside)
            atomic_write_json(self.path, self._data)
            log.warning("%s was damaged (%s): set aside as %s; the files it no longer vouches for are checked and staged again",
                        self.path, damaged, self.set_aside.name)

    def record(self, key: str) -> FileRecord | None:
        with self._lock:
            raw = self._data["files"].get(key)
            return FileRecord.from_json(raw) if raw is not None else None

    def _change(self, key: str, **changes: Any) -> FileRecord:
        with self._lock:
            raw = self._data["files"].get(key)
            record = replace(FileRecord.from_json(raw) if raw is not None else FileRecord(), **changes)
            self._data["files"][key] = record.to_json()
            atomic_write_json(self.path, self._data)
            return record

    # ---- the transitions: every write of a file's record is one of these

    def fetched(self, key: str, *, md5: str, size: int, source: str, unpack: bool, stamp: tuple[int, int] | None, repairing: bool) -> None:
        """The file (or archive) is under its final name and matched its md5; a fresh archive is not unpacked yet."""
        more = {} if repairing else {"extracted": False}
        self._change(key, verified=True, md5=md5, size=size, source=source, unpack=unpack, stamp=stamp, **more)

    def unpacked(self, key: str, members: Members, only: frozenset[str] | None, unpacked_bytes: int) -> None:
        """Its members are unpacked (a repair: those named in ``only`` rewritten, the others as recorded)."""
        self._change(key, extracted=True, members=self._merged(key, members, only), damaged=(), unpacked_bytes=unpacked_bytes)

    def _merged(self, key: str, members: Members, only: frozenset[str] | None) -> Members:
        """The member record after unpacking: a repair (``only``) updates the recorded members, a full unpack replaces them."""
        old = self.record(key)
        return {**(old.members if old is not None and only is not None else {}), **members}

    def archive_removed(self, key: str) -> None:
        self._change(key, stamp=None)

    def stream_started(self, key: str, *, md5: str | None, size: int, source: str) -> None:
        self._change(key, unpack=True, streaming=True, md5=md5, size=size, source=source, verified=False, extracted=False)

    def streamed(self, key: str, members: Members, only: frozenset[str] | None, *, md5_checked: bool, unpacked_bytes: int) -> None:
        self._change(key, verified=True, extracted=True, streaming=False, members=self._merged(key, members, only), damaged=(), stamp=None, md5_checked=md5_checked,
                     unpacked_bytes=unpacked_bytes)

    def linked(self, key: str, *, unpack: bool, source: str, members: Members, md5: str | None, size: int | None) -> None:
        self._change(key, linked=True, extracted=unpack, verified=True, unpack=unpack, source=source, members=members, damaged=(),
                     stamp=None, md5=md5, size=size)

    def found_damaged(self, key: str, names: list[str]) -> None:
        """``verify`` found these members damaged (or none): the next stage rewrites just those."""
        self._change(key, damaged=tuple(names))

    def unverified(self, key: str) -> None:
        """A plain file no longer matches: the next stage fetches it again."""
        self._change(key, verified=False)

    def forget(self, key: str) -> None:
        with self._lock:
            if self._data["files"].pop(key, None) is not None:
                atomic_write_json(self.path, self._data)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._data["files"])


def partial_bytes(root: Path, key: str, target: Path | None = None) -> int:
    """Bytes of ``key`` already downloaded (from its progress file) or streamed (from its stream checkpoint), 0 if none."""
    folder = partial_dir(root, target)
    stream = read_json(folder / f"{key}.stream.json")
    if isinstance(stream, dict) and isinstance(stream.get("pos"), int):
        return int(stream["pos"])
    progress = read_json(folder / f"{key}.progress.json")
    if not isinstance(progress, dict):
        return 0
    done = progress.get("done", {})
    return sum(int(v) for v in done.values() if isinstance(v, int)) if isinstance(done, dict) else 0


def file_statuses(root: Path, keys: list[str], target: Path | None = None) -> dict[str, FileStatus]:
    """A read-only look at where each file stands (used by plan and status; writes nothing)."""
    files, _damaged = load_records(work_dir(root) / "state.json")
    statuses = {}
    for key in keys:
        rec = files.get(key) or FileRecord()
        stage = rec.stage
        if stage in (Stage.LINKED, Stage.EXTRACTED):
            statuses[key] = FileStatus(key, stage.value, source=rec.source)
        elif stage is Stage.VERIFIED:
            done = unpacked_so_far(target / key, target) if target is not None and rec.unpack else 0
            statuses[key] = FileStatus(key, stage.value, source=rec.source, unpacked_done_bytes=done)
        elif stage is Stage.PARTIAL:  # a stream: some members unpacked, no archive bytes on disk (status reads its checkpoint)
            statuses[key] = FileStatus(key, stage.value, source=rec.source,
                                       unpacked_done_bytes=streamed_so_far(partial_dir(root, target) / f"{key}.stream.json", target))
        else:
            done = partial_bytes(root, key, target)
            statuses[key] = FileStatus(key, Stage.PARTIAL.value if done else Stage.MISSING.value, partial_bytes=done)
    return statuses


def unpacked_so_far(archive: Path, target: Path) -> int:
    """Bytes of ``archive``'s members already complete under ``target`` (an unpacking that was interrupted: named, or
    held), from its central directory; 0 when it cannot be read."""
    import zipfile

    try:
        with zipfile.ZipFile(archive) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
    except (OSError, zipfile.BadZipFile, ValueError):
        return 0
    from .archive.members import Member, is_held

    done = 0
    for info in infos:
        member = Member(info.filename, target / info.filename, info.file_size, info.CRC)
        if ".." not in info.filename.split("/") and (size_of(member.dest) == info.file_size or is_held(member, archive.name)):
            done += info.file_size
    return done


def streamed_so_far(checkpoint: Path, target: Path | None) -> int:
    """Bytes of the members a stream's checkpoint says are complete (the first ``index`` of its names: held, or named)."""
    saved = read_json(checkpoint)
    if target is None or not isinstance(saved, dict) or not isinstance(saved.get("names"), list) or not isinstance(saved.get("index"), int):
        return 0
    from .archive.members import held_size

    archive = checkpoint.name[: -len(".stream.json")]
    names = [n for n in saved["names"][: saved["index"]] if isinstance(n, str) and ".." not in n.split("/")]
    return sum(held_size(target / n, archive) or size_of(target / n) or 0 for n in names)


def read_timings(root: Path) -> dict[str, Any]:
    """What `provision cache` and the smoke run measured on this machine (``.provision/timings.json``), or {}: only
    measurements of the shape :func:`record_timing` writes (a figure of another shape is as good as none)."""
    found = read_json(work_dir(root) / "timings.json")
    if not isinstance(found, dict):
        return {}
    return {kind: {str(key): figures for key, figures in entries.items() if _timing_ok(figures)}
            for kind, entries in found.items() if kind in ("cache", "epoch") and isinstance(entries, dict)}


def _timing_ok(figures: Any) -> bool:
    if not isinstance(figures, dict):
        return False
    numbers = [figures[k] for k in ("core_s_per_entry", "s_per_sample") if k in figures]
    texts = [figures[k] for k in ("measured_on", "device", "when") if k in figures]
    return (all(isinstance(n, (int, float)) and not isinstance(n, bool) and 0 < n < 1e9 for n in numbers)
            and all(t is None or isinstance(t, str) for t in texts))


def record_timing(root: Path, kind: str, key: str, figures: dict[str, Any]) -> None:
    """Keep one measurement (``kind`` cache or epoch) for the plan's time estimates; written atomically."""
    timings = read_timings(root)
    timings.setdefault(kind, {})[key] = {**figures, "when": time.strftime("%Y-%m-%d %H:%M")}
    atomic_write_json(work_dir(root) / "timings.json", timings, fsync=False)


# ---------------------------------------------------------------- lock


PID_MAX = 1 << 22  # the most Linux allows (pid_max); a lock naming any other number was written by no process of this host


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_pid(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < PID_MAX


def _lock_holder(path: Path) -> dict[str, Any]:
    """What the lock file says of its holder; {} for a torn file or one of another shape (each field shown as text)."""
    if os.path.islink(path):
        return {}
    found = read_json(path)
    if not isinstance(found, dict):
        return {}
    return {k: (v if _is_pid(v) else str(v)[:80]) if k == "pid" else str(v)[:200] for k, v in found.items() if k in ("pid", "host", "since")}


@contextmanager
def run_lock(root: Path) -> Iterator[None]:
    """Hold ``.provision/lock`` for the duration; a stale lock of a dead local process is taken over."""
    path = work_dir(root) / "lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _lock_holder(path)
            same_host = holder.get("host") == me["host"]
            if same_host and (not _is_pid(holder.get("pid")) or not _pid_alive(holder["pid"])) and "pid" in holder:
                path.unlink(missing_ok=True)  # the holder died without cleaning up, or no process could have written it
                continue
            if not holder:  # torn lock file: its writer died between create and write
                found = os.lstat(path)
                if not stat.S_ISREG(found.st_mode):
                    raise LockError(f"{path} is not a lock file provision wrote (a link, a folder or a device)",
                                    hint=f"remove {path} and run again", lock=str(path)) from None
                if time.time() - found.st_mtime > 60:
                    path.unlink(missing_ok=True)
                    continue
            raise LockError(
                f"another provision run is staging into {root} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('since', '?')})",
                hint=f"wait for it to finish; if that process is gone, delete {path}",
                lock=str(path), **{k: v for k, v in holder.items() if k in ("pid", "host", "since")},
            ) from None
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        break
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
