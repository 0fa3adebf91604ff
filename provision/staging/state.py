"""What has been staged: an atomic JSON state file, partial-download progress, and the run lock.

All of it lives in ``<data.root>/.provision/``, on the same filesystem as the data, so
temporary files can be renamed into place atomically.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..atomicfile import atomic_write_bytes
from ..environment import existing_ancestor
from ..errors import LockError, OutOfSpaceError
from ..plan import FileStatus

STATE_VERSION = 1


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
            raise OutOfSpaceError(
                f"the disk holding {path.parent} is full (while saving {path.name})",
                hint="free some space or stage fewer subsets (--subsets); what was fetched is kept and the next run resumes",
                path=str(path.parent),
            ) from None
        raise


def stat_stamp(path: Path) -> dict[str, int] | None:
    """Size and modification time: a verified file whose stamp still matches need not be hashed again."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def size_of(path: Path) -> int | None:
    """The file's size, or None when it does not exist."""
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def read_json(path: Path) -> Any:
    """The parsed file, or None when it is missing or unreadable (a torn file is as good as none)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


class StateStore:
    """The state file of one data root. Thread-safe; every update is written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = work_dir(root) / "state.json"
        self._lock = threading.Lock()
        loaded = read_json(self.path)
        if not isinstance(loaded, dict) or loaded.get("version") != STATE_VERSION:
            loaded = {"version": STATE_VERSION, "files": {}}
        self._data: dict[str, Any] = loaded

    def record(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            rec = self._data["files"].get(key)
            return json.loads(json.dumps(rec)) if rec is not None else None

    def update(self, key: str, **fields: Any) -> None:
        with self._lock:
            rec = self._data["files"].setdefault(key, {})
            rec.update(fields)
            atomic_write_json(self.path, self._data)

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
    state = read_json(work_dir(root) / "state.json")
    files: Mapping[str, Any] = state.get("files", {}) if isinstance(state, dict) else {}
    statuses = {}
    for key in keys:
        rec = files.get(key) or {}
        if rec.get("linked"):
            statuses[key] = FileStatus(key, "linked", source=rec.get("source"))
        elif rec.get("extracted") or (rec.get("verified") and not rec.get("unpack")):
            statuses[key] = FileStatus(key, "extracted" if rec.get("unpack") else "verified", source=rec.get("source"))
        elif rec.get("verified"):
            done = unpacked_so_far(target / key, target) if target is not None and rec.get("unpack") else 0
            statuses[key] = FileStatus(key, "verified", source=rec.get("source"), unpacked_done_bytes=done)
        elif rec.get("streaming"):  # stream mode: some members unpacked, the archive never stored
            # no archive bytes on disk (status shows how far the stream got, from its checkpoint)
            statuses[key] = FileStatus(key, "partial", source=rec.get("source"), unpacked_done_bytes=streamed_so_far(partial_dir(root, target) / f"{key}.stream.json", target))
        else:
            done = partial_bytes(root, key, target)
            statuses[key] = FileStatus(key, "partial" if done else "missing", partial_bytes=done)
    return statuses


def unpacked_so_far(archive: Path, target: Path) -> int:
    """Bytes of ``archive``'s members already complete under ``target`` (an unpacking that was interrupted), from its
    central directory; 0 when it cannot be read."""
    import zipfile

    try:
        with zipfile.ZipFile(archive) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
    except (OSError, zipfile.BadZipFile, ValueError):
        return 0
    done = 0
    for info in infos:
        if ".." not in info.filename.split("/") and size_of(target / info.filename) == info.file_size:
            done += info.file_size
    return done


def streamed_so_far(checkpoint: Path, target: Path | None) -> int:
    """Bytes of the members a stream's checkpoint says are complete (the first ``index`` of its names)."""
    saved = read_json(checkpoint)
    if target is None or not isinstance(saved, dict) or not isinstance(saved.get("names"), list) or not isinstance(saved.get("index"), int):
        return 0
    names = [n for n in saved["names"][: saved["index"]] if isinstance(n, str) and ".." not in n.split("/")]
    return sum(size_of(target / n) or 0 for n in names)


def read_timings(root: Path) -> dict[str, Any]:
    """What `provision cache` and the smoke run measured on this machine (``.provision/timings.json``), or {}."""
    found = read_json(work_dir(root) / "timings.json")
    return found if isinstance(found, dict) else {}


def record_timing(root: Path, kind: str, key: str, figures: dict[str, Any]) -> None:
    """Keep one measurement (``kind`` cache or epoch) for the plan's time estimates; written atomically."""
    timings = read_timings(root)
    timings.setdefault(kind, {})[key] = {**figures, "when": time.strftime("%Y-%m-%d %H:%M")}
    atomic_write_json(work_dir(root) / "timings.json", timings, fsync=False)


# ---------------------------------------------------------------- lock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
            holder = read_json(path) or {}
            same_host = holder.get("host") == me["host"]
            if same_host and isinstance(holder.get("pid"), int) and not _pid_alive(holder["pid"]):
                path.unlink(missing_ok=True)  # the holder died without cleaning up
                continue
            if not holder:  # torn lock file: its writer died between create and write
                age = time.time() - path.stat().st_mtime
                if age > 60:
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
