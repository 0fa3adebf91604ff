"""One file fetched as byte-range segments over several connections, resumable after any interruption.

Segments are large (few requests: Zenodo throttles) and their progress is saved beside the
partial file, so a run killed at any moment continues where it was. Only the first request
goes out until the source shows it honours ranges; a source that ignores them answers that
first request with the whole file, which is then taken as it is. Until the others ask, a
follower that knows the file's layout may move their bounds (an archive's to member headers:
a member is then unpacked from the start of a segment while the segment lands, instead of
from a head that lands with a segment's last bytes). The md5 is computed over the contiguous
downloaded prefix while later segments still arrive, from the page cache rather than a
second pass over the disk.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OutOfSpaceError
from ..planvalues import FilePlan
from .context import FileResult
from .signals import Stopped, TransientError
from .state import atomic_write_json, read_json, size_of
from .stop import StopSignal
from .transport.protocol import BUFFER_BYTES, Retrier, Transfer


@dataclass(frozen=True)
class SegmentContext:
    """What a segmented download needs from the run: two settings, a retry policy, the stop event, where
    to report bytes, and the step that verifies the finished file and gives it its name."""

    segment_min_bytes: int
    connections: int
    retrier: Callable[[], Retrier]
    stop: StopSignal
    emit: Callable[..., None]
    finish: Callable[[Path, Path, int | None, str | None, str, str], str]

log = logging.getLogger(__name__)
# how much a killed run may have to fetch again: a quarter second of download
PROGRESS_SAVE_INTERVAL_S = 0.25


class SegmentedDownload:
    """One file fetched as byte-range segments in parallel, resumable from its progress file."""

    def __init__(self, job: SegmentContext, f: FilePlan, transfer: Transfer, part: Path, progress_path: Path, final: Path,
                 size: int, md5: str | None, result: FileResult, conns: ThreadPoolExecutor) -> None:
        self.s = job
        self.f = f
        self.transfer = transfer
        self.part = part
        self.progress_path = progress_path
        self.final = final
        self.size = size
        self.md5 = md5
        self.result = result
        self.conns = conns
        # big segments keep the request count low (Zenodo throttles; each request costs a round trip), two a connection:
        # four made the last ones, which end together, hold fewer members still to unpack (tight benchmark: 89% of the line
        # -> 91%) but cost as much in requests on the main one (94% -> 93%); a LUNA16 archive over Zenodo's 4: 840 MB each
        self.segment = max(job.segment_min_bytes, -(-size // max(1, job.connections * 2)))
        self.cond = threading.Condition()
        self.cancel = threading.Event()
        # only the first request goes out until the source has shown it honours ranges; otherwise that
        # first answer carries the whole file and the other segments are never requested
        self.gate = threading.Event()
        self.answered = threading.Event()  # the first answer came (or none will)
        self.held = False  # the gate opens when a follower says so (it reads the directory first, on a connection of its own)
        self.whole = False
        self.errors: list[BaseException] = []
        self.workers_left = 0  # the md5 follower stops waiting once no worker is left to deliver bytes
        self._saved_at = 0.0
        self._lay_out(self._resume())
        self._queue: list[int] = []  # the segments after the first still to be asked for, taken in turn once the gate opens

    def _resume(self) -> dict[int, int]:
        """The segments and their progress: as the progress file saved them (whatever their bounds: another segment
        size, or moved to member headers), or fresh ones over a new, empty partial file."""
        saved = read_json(self.progress_path)
        done = None
        if (isinstance(saved, dict) and saved.get("size") == self.size and saved.get("md5") == self.md5
                and size_of(self.part) == self.size):
            done = _saved_segments(saved, self.size)
        if done is None:
            done = {s: 0 for s in _even_starts(self.size, self.segment)}
            with open(self.part, "wb") as fh:
                fh.truncate(self.size)
        if any(done.values()):
            log.info("%s: resuming with %d of %d bytes", self.f.key, sum(done.values()), self.size)
        return done

    def _save(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._saved_at < PROGRESS_SAVE_INTERVAL_S:
            return
        self._saved_at = now
        # no fsync: the data itself is not fsync'd either; after a power cut the md5 check catches any gap
        atomic_write_json(self.progress_path, {"size": self.size, "md5": self.md5, "starts": self.starts,
                                               "done": {str(k): v for k, v in self.done.items()}, "source": self.transfer.label}, fsync=False)

    def _lay_out(self, done: dict[int, int]) -> None:
        """Take ``done`` (the bytes written from each segment's start, in start order) as the segments."""
        self.done = done
        self.starts = list(done)
        self._ends = dict(zip(self.starts, [*self.starts[1:], self.size], strict=True))

    def _length(self, start: int) -> int:
        return self._ends[start] - start

    def _segment_of(self, pos: int) -> int:
        return self.starts[bisect.bisect_right(self.starts, pos) - 1]

    def align(self, heads: Iterable[int]) -> bool:
        """Move the bounds of the segments not yet asked for to the nearest of ``heads`` (an archive's member headers)
        within half a segment; the first segment, asked for already, keeps its end. Only before the gate opens, on a
        download whose first request is for the first segment and that has written nothing beyond it (a resumed one
        keeps its saved bounds); the new bounds are saved at once, so a run killed from here on resumes with them.
        Whether they moved."""
        with self.cond:
            if (self.gate.is_set() or self.whole or len(self.starts) < 3
                    or any(self.done[s] for s in self.starts[1:]) or self._queue != self.starts[1:]):
                return False
            marks = sorted({h for h in heads if self.starts[1] < h < self.size})
            starts = self.starts[:2]
            for even in self.starts[2:]:
                at = bisect.bisect_left(marks, even)
                near = [h for h in marks[max(0, at - 1):at + 1] if abs(h - even) <= self.segment // 2]
                bound = min(near, key=lambda h: abs(h - even)) if near else even
                if bound > starts[-1]:
                    starts.append(bound)
            if starts == self.starts:
                return False
            self._lay_out({s: self.done[0] if s == 0 else 0 for s in starts})
            self._queue = starts[1:]
            self._save(force=True)
            return True

    def honours_ranges(self, halt: threading.Event) -> bool:
        """Whether the source honours byte ranges, once its first answer is in (False when the download or ``halt``
        ends first, or nothing was left to fetch)."""
        while not self.answered.wait(0.1):
            if halt.is_set() or self.cancel.is_set() or self.s.stop.is_set():
                return False
        return not self.whole and not self.cancel.is_set()

    def hold_others(self) -> Callable[[], None]:
        """Keep the segments after the first from asking until the returned call (made once the source has answered):
        a follower's own request then gets one of the host's connections before they take them all."""
        self.held = True
        return self.gate.set

    def landed(self, start: int, end: int) -> int:
        """Up to which byte the file is written from ``start`` on, without a gap (``end`` at most; the bytes may lie in
        several segments)."""
        with self.cond:
            at = bisect.bisect_right(self.starts, start) - 1
            while at < len(self.starts) and self.starts[at] < end:
                seg = self.starts[at]
                written = seg + self.done[seg]
                if written < min(end, self._ends[seg]):
                    return min(end, max(start, written))
                at += 1
            return end

    def run(self) -> str:
        fd = os.open(self.part, os.O_WRONLY)
        try:
            pending = [s for s in self.starts if self.done[s] < self._length(s)]
            self.workers_left = len(pending)
            self._queue = pending[1:]
            futures = [self.conns.submit(self._segment_worker, fd, pending[0] if i == 0 else None) for i in range(len(pending))]
            try:
                digest = self._hash_following()
            finally:
                if self.errors or self.s.stop.is_set():
                    self.cancel.set()
                self.answered.set()  # whoever waits for the first answer (nothing was left to ask for) waits no longer
                self.gate.set()
                for fut in futures:
                    fut.exception()
                with self.cond:
                    self._save(force=True)
        finally:
            os.close(fd)
        if self.errors:
            raise self.errors[0]
        # the progress file goes only once the file has its name: a run killed before then finds every byte in
        named = self.s.finish(self.part, self.final, self.size, self.md5, digest, self.transfer.label)
        self.progress_path.unlink(missing_ok=True)
        return named

    def _hash_following(self) -> str:
        """md5 of the file, read as its contiguous prefix grows (from the page cache, not a second disk pass)."""
        hasher = hashlib.md5()
        hashed = 0
        view = memoryview(bytearray(BUFFER_BYTES))  # read into again and again: small enough to stay in the cache for the md5
        # unbuffered: a buffered reader could serve bytes it read before the download wrote them
        with open(self.part, "rb", buffering=0) as reader:
            while hashed < self.size:
                with self.cond:
                    # the bytes before ``hashed`` are all written (done counts only grow): look on from there
                    while (not self.errors and not self.s.stop.is_set() and self.workers_left > 0
                           and self.landed(hashed, self.size) <= hashed):
                        self.cond.wait(0.5)
                    if self.errors or self.s.stop.is_set():
                        raise self.errors[0] if self.errors else Stopped("the run is stopping")
                    upto = self.landed(hashed, self.size)
                    if upto <= hashed:  # every worker has returned, yet bytes are missing: never wait for them
                        raise TransientError(f"{self.transfer.label} delivered {upto} of {self.size} bytes in order")
                while hashed < upto:
                    got = os.preadv(reader.fileno(), [view[: min(len(view), upto - hashed)]], hashed)
                    if not got:
                        raise TransientError(f"{self.part.name} ends at byte {hashed}, before its {self.size} bytes")
                    hasher.update(view[:got])
                    hashed += got
        return hasher.hexdigest()

    def _opened(self, ranged: bool) -> None:
        self.whole = not ranged
        self.answered.set()
        if not ranged or not self.held:
            self.gate.set()

    def _account(self, pos: int, n: int) -> None:
        """Credit ``n`` bytes written at ``pos`` to the segments they fall in (a whole-file answer spans them all)."""
        while n > 0:
            seg = self._segment_of(pos)
            take = min(n, self._ends[seg] - pos)
            self.done[seg] += take
            pos += take
            n -= take

    def _segment_worker(self, fd: int, lead: int | None) -> None:
        """Fetch the first segment (``lead``), or once the gate opens the next segment still to be asked for."""
        try:
            if lead is not None:
                self._fetch_segment(fd, lead, lead=True)
            elif self._through_gate():
                with self.cond:
                    start = self._queue.pop(0) if self._queue else None
                if start is not None:
                    self._fetch_segment(fd, start, lead=False)
        finally:
            with self.cond:
                self.workers_left -= 1
                self.cond.notify_all()

    def _through_gate(self) -> bool:
        """Wait until the others may ask; False when there is nothing for them to do (stopping, or a whole-file answer)."""
        while not self.gate.wait(0.2):
            if self.cancel.is_set() or self.s.stop.is_set():
                return False
        return not self.whole

    def _fetch_segment(self, fd: int, start: int, lead: bool) -> None:
        end = self._ends[start]
        retrier = self.s.retrier()
        try:
            while not self.cancel.is_set() and not self.s.stop.is_set():
                pos = start + self.done[start]
                if pos >= end:
                    return
                before = pos

                def sink(chunk: bytes) -> None:
                    nonlocal pos
                    if self.cancel.is_set() or self.s.stop.is_set():
                        raise _Cancelled()
                    try:
                        os.pwrite(fd, chunk, pos)
                    except OSError as exc:
                        if exc.errno == 28:
                            raise OutOfSpaceError.disk_full(self.part) from None
                        raise
                    with self.cond:
                        self._account(pos, len(chunk))
                        self.result.bytes_fetched += len(chunk)
                        self._save()
                        self.cond.notify_all()
                    pos += len(chunk)
                    self.s.emit("bytes", n=len(chunk), key=self.f.key)

                try:
                    self.transfer.read_range(pos, end, sink, on_open=self._opened if lead else None,
                                             whole_size=self.size if lead and pos == 0 else None)
                    if pos == before and not self.whole:
                        raise TransientError(f"{self.transfer.label} ended bytes {pos}-{end - 1} without sending any")
                except TransientError as exc:
                    delay = retrier.after(exc, progressed=pos > before)
                    with self.cond:
                        self.result.retries.append(f"{self.transfer.label} bytes {pos}-{end - 1}: {exc.reason}")
                    if self.cancel.wait(delay):
                        return
                if self.whole:
                    return
        except _Cancelled:
            return
        except BaseException as exc:  # noqa: BLE001 - handed to the driver, which re-raises it
            with self.cond:
                self.errors.append(exc)
                self.cond.notify_all()
            if isinstance(exc, OutOfSpaceError):
                self.s.stop.set(exc.message, exc)
            self.cancel.set()
            self.answered.set()
            self.gate.set()


class _Cancelled(Exception):
    pass


def _even_starts(size: int, step: int) -> list[int]:
    """The starts of segments of ``step`` bytes over a file of ``size`` (one empty segment for an empty file)."""
    return list(range(0, size, step)) or [0]


def _saved_segments(saved: dict[str, Any], size: int) -> dict[int, int] | None:
    """The segments a progress file saved, each start with its bytes written; None when they make no sense for a file
    of ``size`` bytes. An older file saved one segment size (``segment``) instead of the bounds (``starts``)."""
    try:
        if isinstance(saved.get("starts"), list):
            starts = [int(s) for s in saved["starts"]]
        else:
            step = int(saved["segment"])
            starts = _even_starts(size, step) if step > 0 else []
        got = saved["done"]
        if (not isinstance(got, dict) or not starts or starts[0] != 0 or starts[-1] >= max(size, 1)
                or any(b <= a for a, b in zip(starts, starts[1:], strict=False))):
            return None
        ends = [*starts[1:], size]
        done = {s: int(got.get(str(s), 0)) for s in starts}
        if any(not 0 <= done[s] <= e - s for s, e in zip(starts, ends, strict=True)):
            return None
        return done
    except (KeyError, TypeError, ValueError):
        return None
