"""One byte range read over several connections at once and handed on in order, in bounded memory.

Stream mode inflates an archive as its bytes arrive, so its reader must see them in order; a per-connection cap
(Zenodo's) would then hold one archive to one connection's rate. Here the range is cut into chunks that up to
``ranges`` workers fetch at once (each over the host's gate, so the host's connection cap still holds), and the
caller's thread hands them to the sink strictly in order. A read starts with one connection and, each time its
reader has to wait for bytes and again each tenth of a second it goes on waiting, opens as many again as are open,
up to ``ranges``: a source faster than the reader gets one or two (each request costs a little), a capped one gets
them all within a few tenths of a second. A chunk is sized by the rate its
connection has shown: about a quarter of a second's bytes, from the smallest that still gives every connection a
share of the range (:func:`chunk_for`) up to four times that, within the budget's chunk. A capped connection keeps
small chunks, so that the last ones of a read end close together; a fast source gets the largest, so that it costs
few requests (each is a round trip and about a millisecond of a core). A chunk is fetched only into a free
buffer of the run's read-ahead budget (:class:`ReadAhead`, shared by every archive streaming at once, its buffers used again and again),
so memory is at most the budget whatever the archives' layout; a chunk is claimed only once its buffer is taken, so
the next chunk in order is always being fetched or already here: no deadlock.

A dropped connection or a short answer in one chunk is retried alone, at the exact byte; bytes reach the sink only in
order and only once; an error that is not retried ends the whole read (the other workers stop at their next piece).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..signals import Stopped
from .protocol import Retrier, Transfer, read_resuming

WAIT_S = 0.1  # how often a waiting thread looks at the stop signal
SMALLEST_CHUNK = 16 * 1024  # only for ranges under 2 MB a connection; a LUNA16 archive gets data.segment_mb chunks
CHUNK_S = 0.25  # a chunk is about this long on its connection at the rate seen (within chunk_for's and the budget's bounds)
GROWTH = 4  # ... and at most this many times the smallest: a damaged chunk costs the bytes fetched ahead, which stay few


class ReadAhead:
    """The run's read-ahead budget: at most ``chunks`` buffers of ``chunk_bytes``, shared by every ordered read, made
    when first needed and used again and again (so memory stays at the budget: no allocation per chunk)."""

    def __init__(self, chunk_bytes: int, chunks: int) -> None:
        self.chunk_bytes = chunk_bytes
        self.chunks = max(1, chunks)
        self._free: list[bytearray] = []
        self._made = 0
        self._cond = threading.Condition()

    @property
    def memory_bytes(self) -> int:
        return self.chunk_bytes * self.chunks

    @property
    def in_use(self) -> int:
        with self._cond:
            return self._made - len(self._free)

    def take(self, size: int, timeout: float) -> bytearray | None:
        """A free buffer of at least ``size`` bytes (at most ``chunk_bytes``), or None when none came free in ``timeout``.
        Buffers are made as large as the reads need, so short archives do not hold the budget's full chunks."""
        with self._cond:
            if not self._free and self._made >= self.chunks and not self._cond.wait_for(lambda: bool(self._free), timeout):
                return None
            if self._free:
                buf = self._free.pop()
                if len(buf) >= size:
                    return buf
            else:
                self._made += 1
        return bytearray(min(max(size, 1), self.chunk_bytes))  # a new one, or a larger one in place of one too small

    def give(self, buf: bytearray) -> None:
        with self._cond:
            self._free.append(buf)
            self._cond.notify()


@dataclass(frozen=True)
class OrderedHooks:
    """A fresh retry policy per chunk, where retries are told, and the run's stop signal."""

    retrier: Callable[[], Retrier]
    note_retry: Callable[[str], None]
    stop: threading.Event


def chunk_for(budget: ReadAhead, length: int, ranges: int) -> int:
    """The smallest chunk of a read: the budget's chunk, smaller for a short range so that its connections all get a
    share (16 KiB at least). A faster source gets larger ones (see the module)."""
    return max(1, min(budget.chunk_bytes, max(SMALLEST_CHUNK, length // (16 * max(1, ranges)))))


class _Read:
    """The shared state of one ordered read: the chunks claimed so far, the chunks fetched, the rate seen, the first
    error."""

    def __init__(self, start: int, end: int, smallest: int, largest: int) -> None:
        self.end = end
        self.smallest = smallest
        self.largest = max(smallest, largest)
        self.bounds: list[tuple[int, int]] = []  # the chunks claimed so far, in order: a chunk's size is set when claimed
        self.next_start = start
        self.rate = 0.0  # bytes a second on one connection, over the last chunks (0: none measured yet)
        self.ready: dict[int, bytearray] = {}
        self.held: dict[int, bytearray] = {}  # buffers taken from the budget and not yet given back, by identity
        self.error: BaseException | None = None
        self.over = threading.Event()
        self.cond = threading.Condition()

    def chunk_bytes(self) -> int:
        """The size the next chunk would have: CHUNK_S at the rate seen, within the read's bounds."""
        with self.cond:
            return self._size()

    def _size(self) -> int:
        return max(self.smallest, min(self.largest, int(self.rate * CHUNK_S)))

    def claim(self, room: int) -> int | None:
        """The next chunk's index (its bytes in ``bounds``), at most ``room`` bytes; None when none is left."""
        with self.cond:
            if self.over.is_set() or self.next_start >= self.end:
                return None
            size = max(1, min(room, self._size()))
            self.bounds.append((self.next_start, min(self.end, self.next_start + size)))
            self.next_start = self.bounds[-1][1]
            return len(self.bounds) - 1

    def measured(self, nbytes: int, seconds: float) -> None:
        """A connection brought ``nbytes`` in ``seconds`` (after its first piece, so without the request's round trip)."""
        with self.cond:
            rate = nbytes / max(seconds, 1e-6)
            self.rate = rate if self.rate == 0 else (self.rate + rate) / 2

    def fail(self, exc: BaseException) -> None:
        with self.cond:
            if self.error is None:
                self.error = exc
            self.over.set()
            self.cond.notify_all()


def read_ordered(transfer: Transfer, start: int, end: int, sink: Callable[[memoryview], None], *, ranges: int, budget: ReadAhead,
                 hooks: OrderedHooks) -> None:
    """Deliver bytes [start, end) of ``transfer`` to ``sink`` in order, fetched over up to ``ranges`` connections. The
    sink gets a view of a buffer that is used again once it returns: it must copy what it keeps."""
    smallest = chunk_for(budget, end - start, ranges)
    read = _Read(start, end, smallest, min(budget.chunk_bytes, GROWTH * smallest))
    most = max(1, min(ranges, -(-(end - start) // smallest)))
    workers: list[threading.Thread] = []

    def another() -> None:
        """More connections, while the reader waits for bytes and fewer than ``ranges`` are open: as many again as are
        open, so that a capped source has them all after a few waits."""
        for _ in range(min(max(1, len(workers)), most - len(workers))):
            workers.append(threading.Thread(target=_work, args=(transfer, read, budget, hooks), name=f"chunk-{len(workers)}", daemon=True))
            workers[-1].start()

    another()
    try:
        index, at = 0, start
        while at < end:
            buf = _next_chunk(read, index, hooks.stop, another)
            first, last = read.bounds[index]
            sink(memoryview(buf)[: last - first])
            _give_back(read, budget, buf)
            index, at = index + 1, last
    except BaseException as exc:
        read.fail(exc)
        raise
    finally:
        read.over.set()
        for w in workers:
            w.join()
        with read.cond:  # buffers fetched but never handed on go back too
            for buf in read.held.values():
                budget.give(buf)
            read.held.clear()
            read.ready.clear()


def _hold(read: _Read, buf: bytearray) -> None:
    with read.cond:
        read.held[id(buf)] = buf


def _give_back(read: _Read, budget: ReadAhead, buf: bytearray) -> None:
    with read.cond:
        del read.held[id(buf)]  # by identity: two buffers may hold equal bytes
    budget.give(buf)


def _next_chunk(read: _Read, index: int, stop: threading.Event, starved: Callable[[], None]) -> bytearray:
    """Chunk ``index`` once it is here; ``starved`` is called when the reader has to wait for it, and again each
    WAIT_S it goes on waiting."""
    with read.cond:
        if index not in read.ready and read.error is None:
            starved()
        while index not in read.ready:
            if read.error is not None:
                raise read.error
            if stop.is_set():
                raise Stopped("the run is stopping")
            if not read.cond.wait(WAIT_S):
                starved()  # still waiting a while on: a slow source, which more connections help
        return read.ready.pop(index)


def _work(transfer: Transfer, read: _Read, budget: ReadAhead, hooks: OrderedHooks) -> None:
    """Take a buffer, claim the next chunk, fetch it whole into the buffer (retrying at the exact byte), hand it over;
    until no chunk is left."""
    while not read.over.is_set():
        buf = budget.take(read.chunk_bytes(), WAIT_S)
        if buf is None:
            continue
        index = read.claim(len(buf))
        if index is None:
            budget.give(buf)
            return
        _hold(read, buf)
        try:
            _fetch(transfer, *read.bounds[index], buf, read, hooks)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader's thread, which raises it
            read.fail(exc)
            return
        with read.cond:
            read.ready[index] = buf
            read.cond.notify_all()


def _fetch(transfer: Transfer, start: int, end: int, buf: bytearray, read: _Read, hooks: OrderedHooks) -> None:
    """Bytes [start, end) into the start of ``buf``."""
    view = memoryview(buf)
    got = 0
    first_at, first_bytes = 0.0, 0

    def collect(piece: bytes) -> None:
        nonlocal got, first_at, first_bytes
        if read.over.is_set() or hooks.stop.is_set():
            raise Stopped("the run is stopping")
        view[got : got + len(piece)] = piece
        got += len(piece)
        if not first_bytes:
            first_at, first_bytes = time.monotonic(), got

    def pause(delay: float) -> None:
        if read.over.wait(delay) or hooks.stop.is_set():
            raise Stopped("the run is stopping")

    read_resuming(transfer, start, end, collect, hooks.retrier(), hooks.note_retry, pause)
    if got > first_bytes:
        read.measured(got - first_bytes, time.monotonic() - first_at)
