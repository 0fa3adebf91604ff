"""One file fetched as byte-range segments over several connections, resumable after any interruption.

Segments are large (few requests: Zenodo throttles) and their progress is saved beside the
partial file, so a run killed at any moment continues where it was. Only the first request
goes out until the source shows it honours ranges; a source that ignores them answers that
first request with the whole file, which is then taken as it is. The md5 is computed over the
contiguous downloaded prefix while later segments still arrive, from the page cache rather
than a second pass over the disk.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

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
        self.done = self._resume()

    def _resume(self) -> dict[int, int]:
        starts = list(range(0, self.size, self.segment)) or [0]
        saved = read_json(self.progress_path)
        fresh = {s: 0 for s in starts}
        ok = (isinstance(saved, dict) and saved.get("size") == self.size and saved.get("md5") == self.md5
              and size_of(self.part) == self.size)
        if ok and saved.get("segment") != self.segment:
            # segment size changed (other config): keep only the fully contiguous prefix
            prefix = _contiguous({int(k): int(v) for k, v in saved["done"].items()}, int(saved["segment"]), self.size)
            done = {s: max(0, min(prefix - s, min(self.segment, self.size - s))) for s in starts}
        elif ok:
            done = {s: int(saved["done"].get(str(s), 0)) for s in starts}
        else:
            done = fresh
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
        atomic_write_json(self.progress_path, {"size": self.size, "md5": self.md5, "segment": self.segment,
                                               "done": {str(k): v for k, v in self.done.items()}, "source": self.transfer.label}, fsync=False)

    def _length(self, start: int) -> int:
        return min(self.segment, self.size - start)

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
            seg = start - start % self.segment
            while seg < end:
                written = seg + self.done[seg]
                if written < min(end, seg + self._length(seg)):
                    return min(end, max(start, written))
                seg += self.segment
            return end

    def run(self) -> str:
        fd = os.open(self.part, os.O_WRONLY)
        try:
            pending = [s for s in sorted(self.done) if self.done[s] < self._length(s)]
            self.workers_left = len(pending)
            futures = [self.conns.submit(self._segment_worker, fd, s, i == 0) for i, s in enumerate(pending)]
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
        self.progress_path.unlink(missing_ok=True)
        return self.s.finish(self.part, self.final, self.size, self.md5, digest, self.transfer.label)

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
            seg = pos - pos % self.segment
            take = min(n, seg + self._length(seg) - pos)
            self.done[seg] += take
            pos += take
            n -= take

    def _segment_worker(self, fd: int, start: int, lead: bool) -> None:
        try:
            self._fetch_segment(fd, start, lead)
        finally:
            with self.cond:
                self.workers_left -= 1
                self.cond.notify_all()

    def _fetch_segment(self, fd: int, start: int, lead: bool) -> None:
        if not lead:
            while not self.gate.wait(0.2):
                if self.cancel.is_set() or self.s.stop.is_set():
                    return
            if self.whole:
                return
        end = start + self._length(start)
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


def _contiguous(done: dict[int, int], segment: int, size: int) -> int:
    """Bytes from the start of the file that are all downloaded."""
    total = 0
    for start in sorted(done):
        got = done[start]
        total = start + got
        if got < min(segment, size - start):
            return total
    return size
