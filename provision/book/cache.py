"""`provision cache`: fill the book's per-chapter caches for the staged scans, on every core, resumably.

The book memoizes each candidate's crop in a diskcache per chapter (``data-unversioned/cache/part2chNN_raw``),
filled by ``python -m p2chNN.prepcache`` or, slower, by the first epoch. Here each core runs a child in the
book's interpreter (:mod:`.cache_child`) that calls the chapter's own memoized functions with the arguments
the book's dataset uses, one series at a time, so each scan is read once and the book's training then finds
every entry. Which series are complete is kept beside the cache (``.provision-built.json``), written after each
one: a killed build continues with the next series, and a chapter already complete is a no-op. What each
chapter memoizes, and the bytes of one entry measured on the book's code, are data (``cache:`` in the book's
fixes file).
"""

from __future__ import annotations

import errno
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from ..atomicfile import atomic_write_bytes
from ..errors import BookError, ConfigError, OutOfSpaceError
from .checkout import DATA_FOLDER
from .fixes import CacheChapter

CHILD = Path(__file__).with_name("cache_child.py")
BUILT = ".provision-built.json"
NO_SPACE = "No space left on device"
Emit = Callable[[str], None]


@dataclass
class ChapterBuild:
    """One chapter's build: series staged, already complete, built now, failed; entries written; bytes on disk."""

    chapter: int
    scope: str
    path: str
    series: int = 0
    complete_before: int = 0
    built: int = 0
    entries: int = 0
    misses: int = 0
    bytes: int = 0
    seconds: float = 0.0
    failed: list[dict[str, str]] = field(default_factory=list)
    stopped: str = ""  # why the build stopped before every series was done (a full disk)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.stopped

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass(frozen=True)
class DroppedCache:
    """A chapter's cache deleted by --drop: where it was and the bytes freed."""

    chapter: int
    path: str
    bytes: int
    existed: bool


def cache_dir(book: Path, chapter: CacheChapter) -> Path:
    return book / DATA_FOLDER / "cache" / chapter.scope


def chapters_named(available: Sequence[CacheChapter], wanted: Sequence[int]) -> list[CacheChapter]:
    """The chapters asked for, in order; ConfigError for one that has no cache."""
    by_number = {c.chapter: c for c in available}
    unknown = [n for n in wanted if n not in by_number]
    if unknown:
        raise ConfigError(f"chapter {', '.join(map(str, unknown))} has no cache to build (chapters with one: "
                          f"{', '.join(str(c.chapter) for c in available)})", hint="name chapters among those, e.g. --chapters 11")
    return [by_number[n] for n in dict.fromkeys(wanted)]


def staged_series(luna_dir: Path) -> dict[str, str]:
    """uid -> its subset folder's name, for every complete scan (.mhd and .raw) under ``luna_dir``/subsetN/."""
    found = {}
    for folder in sorted(luna_dir.glob("subset*")):
        for mhd in sorted(folder.glob("*.mhd")):
            if mhd.with_suffix(".raw").is_file():
                found[mhd.stem] = folder.name
    return found


def read_built(path: Path) -> dict[str, int]:
    """Series complete in a chapter's cache: uid -> entries (an unreadable record counts as none)."""
    try:
        data = json.loads((path / BUILT).read_text())
        return {str(k): int(v) for k, v in data.get("series", {}).items()}
    except (OSError, ValueError, AttributeError, TypeError, RecursionError, OverflowError):
        return {}


def candidates_per_series(book: Path, series: set[str]) -> dict[str, int] | None:
    """uid -> rows of the book's candidates.csv, for ``series``; None when the checkout has no candidates.csv."""
    import csv

    counts: dict[str, int] = {}
    try:
        with open(book / "data" / "part2" / "luna" / "candidates.csv", newline="") as fh:
            for row in csv.reader(fh):
                if row and row[0] in series:
                    counts[row[0]] = counts.get(row[0], 0) + 1
    except OSError:
        return None
    return counts


def drop(book: Path, chapters: Sequence[CacheChapter]) -> list[DroppedCache]:
    """Delete these chapters' caches (when the reader has moved on); returns what was freed."""
    freed = []
    for chapter in chapters:
        path = cache_dir(book, chapter)
        used = bytes_on_disk(path)
        if path.is_symlink():
            path.unlink()
        else:
            shutil.rmtree(path, ignore_errors=True)
        freed.append(DroppedCache(chapter.chapter, str(path), used, used > 0))
    return freed


def bytes_on_disk(folder: Path) -> int:
    """Bytes a folder takes on disk (blocks, not file lengths), links not followed."""
    used = 0
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            try:
                used += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                continue
    return used


class Children:
    """The children building caches, so that a stop (Ctrl-C, TERM, a failed step of `provision up`) ends them too: the
    series each was building is not recorded complete, and the next build does it again."""

    def __init__(self) -> None:
        self.halted = threading.Event()
        self._procs: set[subprocess.Popen[str]] = set()
        self._lock = threading.Lock()

    def started(self, proc: subprocess.Popen[str]) -> bool:
        """Count ``proc`` in; False (and ``proc`` stopped) when the build is already halted."""
        with self._lock:
            if not self.halted.is_set():
                self._procs.add(proc)
                return True
        _end(proc)
        return False

    def ended(self, proc: subprocess.Popen[str]) -> None:
        with self._lock:
            self._procs.discard(proc)

    def halt(self) -> None:
        """No more series handed out; every child asked to stop (TERM), and killed when it has not within a few seconds."""
        with self._lock:
            self.halted.set()
            procs = list(self._procs)
        for proc in procs:
            _end(proc)


def _end(proc: subprocess.Popen[str], grace_s: float = 5.0) -> None:
    try:
        proc.terminate()
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except OSError:
        pass


class _Record:
    """The chapter's record of complete series, saved after each one (atomically): what a killed build resumes from."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.series = read_built(path)
        self.lock = threading.Lock()

    def add(self, uid: str, entries: int) -> None:
        with self.lock:
            self.series[uid] = entries
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path / BUILT, json.dumps({"series": self.series}, sort_keys=True).encode())


def build(book: Path, chapter: CacheChapter, python: str, workers: int, emit: Emit | None = None,
          only: set[str] | None = None, progress_every_s: float = 10.0, children: Children | None = None) -> ChapterBuild:
    """Build one chapter's cache for the staged series (``only``: just these) with ``workers`` children. Interrupted
    (Ctrl-C, TERM), the children are stopped before the interrupt goes on; what they completed is recorded."""
    say = emit or (lambda line: None)
    children = children or Children()
    start = time.monotonic()
    path = cache_dir(book, chapter)
    staged = staged_series(book / DATA_FOLDER / "part2" / "luna")
    wanted = {uid: sub for uid, sub in staged.items() if only is None or uid in only}
    record = _Record(path)
    result = ChapterBuild(chapter.chapter, chapter.scope, str(path), series=len(wanted))
    todo = [uid for uid in sorted(wanted) if uid not in record.series]
    result.complete_before = len(wanted) - len(todo)
    if todo:
        if not (book / "data" / "part2" / "luna" / "candidates.csv").is_file():
            raise BookError(f"{book} has no data/part2/luna/candidates.csv", hint="run `provision book` to get the book's code first")
        writable(path, chapter.chapter)
        say(f"cache ch{chapter.chapter}: {len(todo)} of {len(wanted)} series to build with {workers} worker(s) in {path}")
        work = _Work(todo, wanted, record, result, say, progress_every_s, children.halted)
        threads = [threading.Thread(target=_drive, args=(book, chapter, python, work.next_uid, work.done, children), daemon=True)
                   for _ in range(max(1, min(workers, len(todo))))]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        except BaseException:
            children.halt()
            for t in threads:
                if t.ident is not None:
                    t.join(10.0)
            raise
        result.bytes = bytes_on_disk(path)
    result.seconds = time.monotonic() - start
    if result.stopped:
        raise OutOfSpaceError(
            f"the disk filled up while building chapter {chapter.chapter}'s cache: {result.complete_before + result.built} of "
            f"{len(wanted)} series are in it ({result.bytes / 1e9:.1f} GB), and the cache built so far is usable",
            hint="free some space and run `provision cache` again (it continues), drop another chapter's cache (--drop), "
                 "or stage fewer subsets", path=str(path))
    return result


def writable(path: Path, chapter: int) -> None:
    """The chapter's cache folder exists and takes a file, before any child starts: a folder that cannot be written is
    one clear error, not a failure of every series (nor a traceback of the thread that records them)."""
    probe = path / f".provision-probe-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise OutOfSpaceError.disk_full(path, f"starting chapter {chapter}'s cache") from None
        why = {errno.EEXIST: "something that is not a folder is in its place", errno.ENOTDIR: "something on its path is not a folder",
               errno.EROFS: "its disk is read-only", errno.EACCES: "this user may not write there",
               errno.EPERM: "this user may not write there"}.get(exc.errno or 0, exc.strerror or str(exc))
        raise BookError(f"chapter {chapter}'s cache cannot be written in {path}: {why}",
                        hint=f"make {path} a folder on a writable disk that this user owns (move away what is there), or build "
                             "another chapter's cache (--chapters); the series already cached are kept", path=str(path)) from None


class _Work:
    """The series still to build, handed out one at a time to the children, and what each child reports of one."""

    def __init__(self, todo: list[str], wanted: dict[str, str], record: _Record, result: ChapterBuild, say: Emit,
                 progress_every_s: float, halted: threading.Event) -> None:
        self.todo, self.wanted, self.record, self.result, self.say = todo, wanted, record, result, say
        self.halted = halted
        self.queue: Iterator[str] = iter(todo)
        self.lock = threading.Lock()
        self.started = self.last_said = time.monotonic()
        self.every_s = progress_every_s

    def next_uid(self) -> str | None:
        with self.lock:
            return None if self.result.stopped or self.halted.is_set() else next(self.queue, None)

    def done(self, line: dict[str, Any]) -> None:
        with self.lock:
            result, uid = self.result, line["series"]
            if self.halted.is_set() and "error" in line:  # a child stopped by the halt: not a failure of its series
                return
            if "error" in line:
                where = self.wanted.get(uid, "?")
                result.failed.append({"series": uid, "subset": where, "error": line["error"]})
                self.say(f"cache ch{result.chapter}: {where}/{uid}: FAILED: {line['error']} (the build goes on with the others)")
                if NO_SPACE in line["error"]:
                    result.stopped = "the disk filled up"
                return
            self.record.add(uid, int(line["entries"]))
            result.built += 1
            result.entries += int(line["entries"])
            result.misses += int(line.get("misses", 0))
            now = time.monotonic()
            if now - self.last_said >= self.every_s or result.built == len(self.todo):
                self.last_said = now
                self.say(progress_line(result, len(self.todo), now - self.started))


class Overlapped:
    """Chapters' caches built subset by subset as the data lands, in a thread of their own, while the next subsets
    download and unpack: the reader waits for the longer of the two, not their sum. ``landed(folder)`` is called as a
    subset's folder is complete; ``finish()`` waits, then builds whatever was staged before (already there)."""

    def __init__(self, book: Path, chapters: Sequence[CacheChapter], python: str, workers: int, emit: Emit | None = None) -> None:
        self.book, self.chapters, self.python, self.workers = book, list(chapters), python, workers
        self.emit = emit
        self.luna = book / DATA_FOLDER / "part2" / "luna"
        self.builds: dict[int, ChapterBuild] = {}
        self.error: BaseException | None = None
        self.children = Children()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="cache", daemon=True)
        self._thread.start()

    def landed(self, folder: str) -> None:
        self._queue.put(folder)

    def _run(self) -> None:
        while (folder := self._queue.get()) is not None:
            if self.error is not None:
                continue
            uids = {mhd.stem for mhd in (self.luna / folder).glob("*.mhd")}
            self._build(uids)

    def _build(self, only: set[str] | None) -> None:
        try:
            for chapter in self.chapters:
                self._merge(build(self.book, chapter, self.python, self.workers, self.emit, only=only, children=self.children))
        except BaseException as exc:  # noqa: BLE001 - handed to finish()
            self.error = exc

    def _merge(self, part: ChapterBuild) -> None:
        whole = self.builds.setdefault(part.chapter, ChapterBuild(part.chapter, part.scope, part.path))
        whole.built += part.built
        whole.entries += part.entries
        whole.misses += part.misses
        whole.failed += part.failed
        whole.seconds += part.seconds

    def stop(self) -> None:
        """The run stops (Ctrl-C, TERM, a step failed): no more series, every child ended, what is complete kept."""
        self.children.halt()
        self._queue.put(None)
        self._thread.join(15.0)

    def finish(self) -> list[ChapterBuild]:
        """Wait for the subsets queued so far, then cover every staged series (those staged by an earlier run too)."""
        self._queue.put(None)
        try:
            self._thread.join()
        except BaseException:  # Ctrl-C, TERM while waiting: the children end too
            self.stop()
            raise
        if self.error is None:
            self._build(None)
        if self.error is not None:
            raise self.error
        for chapter in self.chapters:
            done = self.builds[chapter.chapter]
            done.series = len(staged_series(self.luna))
            done.complete_before = done.series - done.built - len(done.failed)
            done.bytes = bytes_on_disk(cache_dir(self.book, chapter))
        return [self.builds[c.chapter] for c in self.chapters]


def progress_line(result: ChapterBuild, todo: int, elapsed: float) -> str:
    rate = result.built / elapsed if elapsed > 0 else 0.0
    eta = f", about {(todo - result.built) / rate:.0f} s left" if rate > 0 and result.built < todo else ""
    return (f"cache ch{result.chapter}: {result.built} of {todo} series, {result.entries:,} entries, "
            f"{rate * 60:.1f} series/min{eta}")


def _drive(book: Path, chapter: CacheChapter, python: str, next_uid: Callable[[], str | None], done: Callable[[dict[str, Any]], None],
           children: Children) -> None:
    """One child: start it, hand it series one at a time, pass on what it says; a child that dies fails its series."""
    command = [python, str(CHILD), "--module", chapter.module, "--width", ",".join(map(str, chapter.width_irc)),
               "--per-series", ",".join(chapter.per_series)]
    log = book / DATA_FOLDER / "cache" / f".provision-ch{chapter.chapter}-{threading.get_ident()}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as errors:
        try:
            proc = subprocess.Popen(command, cwd=book, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True, bufsize=1,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
        except OSError as exc:
            done({"series": "-", "error": f"cannot start {python}: {exc.strerror}"})
            return
        assert proc.stdin is not None and proc.stdout is not None
        if not children.started(proc):
            return
        try:
            if _read(proc.stdout) is None:  # the "ready" line: the book's modules imported, its CSVs read
                done({"series": "-", "error": f"the book's code did not start: {_tail(log)}"})
                return
            while (uid := next_uid()) is not None:
                proc.stdin.write(uid + "\n")
                proc.stdin.flush()
                line = _read(proc.stdout)
                if line is None:
                    done({"series": uid, "error": f"the worker died: {_tail(log)}"})
                    return
                done(line)
        except BrokenPipeError:
            done({"series": "-", "error": f"the worker died: {_tail(log)}"})
        finally:
            _close(proc.stdin)
            proc.wait()
            children.ended(proc)
    log.unlink(missing_ok=True)


def _close(stdin: IO[str]) -> None:
    try:
        stdin.close()
    except BrokenPipeError:  # a child that was stopped, or died, with a line still buffered for it
        pass


def _read(stream: IO[str]) -> dict[str, Any] | None:
    """The child's next JSON line (other lines, the book's own logging, are skipped); None at its end."""
    for line in stream:
        line = line.strip()
        if line.startswith("{"):
            try:
                return dict(json.loads(line))
            except ValueError:
                continue
    return None


def _tail(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no output"
    return lines[-1][-300:] if lines else "no output"
