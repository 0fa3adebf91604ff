"""One byte range read over several connections at once and handed on in order, in bounded memory.

Stream mode inflates an archive as its bytes arrive, so its reader must see them in order; a per-connection cap
(Zenodo's) would then hold one archive to one connection's rate. Here the range is cut into chunks that up to
``ranges`` workers fetch at once (each over the host's gate, so the host's connection cap still holds), and the
caller's thread hands them to the sink strictly in order. A chunk is fetched only when a slot of the run's read-ahead
budget is free (:class:`ReadAhead`, shared by every archive streaming at once), so memory is at most the budget
whatever the archives' layout, and the next chunk in order is always being fetched or already here: no deadlock.

A dropped connection or a short answer in one chunk is retried alone, at the exact byte; bytes reach the sink only in
order and only once; an error that is not retried ends the whole read (the other workers stop at their next piece).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..signals import Stopped, TransientError
from .protocol import Retrier, Sink, Transfer

WAIT_S = 0.1  # how often a waiting thread looks at the stop signal
SMALLEST_CHUNK = 16 * 1024  # only for ranges under 2 MB a connection; a LUNA16 archive gets data.segment_mb chunks


@dataclass
class ReadAhead:
    """The run's read-ahead budget: ``chunks`` slots of ``chunk_bytes``, shared by every ordered read."""

    chunk_bytes: int
    chunks: int

    def __post_init__(self) -> None:
        self.slots = threading.BoundedSemaphore(max(1, self.chunks))

    @property
    def memory_bytes(self) -> int:
        return self.chunk_bytes * self.chunks


@dataclass(frozen=True)
class OrderedHooks:
    """A fresh retry policy per chunk, where retries are told, and the run's stop signal."""

    retrier: Callable[[], Retrier]
    note_retry: Callable[[str], None]
    stop: threading.Event


def chunk_for(budget: ReadAhead, length: int, ranges: int) -> int:
    """The budget's chunk, smaller for a short range so that its connections all get a share (16 KiB at least)."""
    return max(1, min(budget.chunk_bytes, max(SMALLEST_CHUNK, length // (16 * max(1, ranges)))))


class _Read:
    """The shared state of one ordered read: the next chunk to claim, the chunks fetched, the first error."""

    def __init__(self, start: int, end: int, chunk_bytes: int) -> None:
        self.bounds = [(s, min(s + chunk_bytes, end)) for s in range(start, end, chunk_bytes)]
        self.claimed = 0
        self.ready: dict[int, bytes] = {}
        self.slots_held = 0
        self.error: BaseException | None = None
        self.over = threading.Event()
        self.cond = threading.Condition()

    def claim(self) -> int | None:
        with self.cond:
            if self.over.is_set() or self.claimed >= len(self.bounds):
                return None
            self.claimed += 1
            return self.claimed - 1

    def fail(self, exc: BaseException) -> None:
        with self.cond:
            if self.error is None:
                self.error = exc
            self.over.set()
            self.cond.notify_all()


def read_ordered(transfer: Transfer, start: int, end: int, sink: Sink, *, ranges: int, budget: ReadAhead, hooks: OrderedHooks) -> None:
    """Deliver bytes [start, end) of ``transfer`` to ``sink`` in order, fetched over up to ``ranges`` connections."""
    read = _Read(start, end, chunk_for(budget, end - start, ranges))
    workers = [threading.Thread(target=_work, args=(transfer, read, budget, hooks), name=f"chunk-{i}", daemon=True)
               for i in range(max(1, min(ranges, len(read.bounds))))]
    for w in workers:
        w.start()
    try:
        for index in range(len(read.bounds)):
            sink(_next_chunk(read, index, hooks.stop))
            with read.cond:  # fed: its slot goes back (memory is the slots, the chunk being fed included)
                read.slots_held -= 1
            budget.slots.release()
    except BaseException as exc:
        read.fail(exc)
        raise
    finally:
        read.over.set()
        for w in workers:
            w.join()
        with read.cond:  # chunks fetched but never handed on give their slots back
            for _ in range(read.slots_held):
                budget.slots.release()
            read.slots_held = 0
            read.ready.clear()


def _next_chunk(read: _Read, index: int, stop: threading.Event) -> bytes:
    with read.cond:
        while index not in read.ready:
            if read.error is not None:
                raise read.error
            if stop.is_set():
                raise Stopped("the run is stopping")
            read.cond.wait(WAIT_S)
        return read.ready.pop(index)


def _work(transfer: Transfer, read: _Read, budget: ReadAhead, hooks: OrderedHooks) -> None:
    """Take a slot, claim the next chunk, fetch it whole (retrying at the exact byte), hand it over; until none is left."""
    while not read.over.is_set():
        if not budget.slots.acquire(timeout=WAIT_S):
            continue
        index = read.claim()
        if index is None:
            budget.slots.release()
            return
        with read.cond:
            read.slots_held += 1
        try:
            data = _fetch(transfer, *read.bounds[index], read, hooks)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader's thread, which raises it
            read.fail(exc)
            return
        with read.cond:
            read.ready[index] = data
            read.cond.notify_all()


def _fetch(transfer: Transfer, start: int, end: int, read: _Read, hooks: OrderedHooks) -> bytes:
    buf = bytearray()
    retrier = hooks.retrier()

    def collect(piece: bytes) -> None:
        if read.over.is_set() or hooks.stop.is_set():
            raise Stopped("the run is stopping")
        buf.extend(piece)

    while len(buf) < end - start:
        before = len(buf)
        try:
            transfer.read_range(start + before, end, collect)
            if len(buf) == before:
                raise TransientError(f"{transfer.label} ended bytes {start + before}-{end - 1} without sending any")
        except TransientError as exc:
            delay = retrier.after(exc, progressed=len(buf) > before)
            hooks.note_retry(f"{transfer.label} bytes {start + len(buf)}-{end - 1}: {exc.reason} (continuing at byte {start + len(buf)})")
            if read.over.wait(delay) or hooks.stop.is_set():
                raise Stopped("the run is stopping") from None
    return bytes(buf)
