"""transport/ordered.py: one range over several connections, handed on in order, in bounded memory."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable

import pytest

from provision.staging.signals import PermanentError, StreamCorrupt, TransientError
from provision.staging.transport.ordered import OrderedHooks, ReadAhead, chunk_for, read_ordered
from provision.staging.transport.protocol import RemoteInfo, Retrier, Sink


class FakeTransfer:
    """Serves ``data`` with random delays (chunks finish out of order); ``faults`` maps a request number to what goes
    wrong in it: "short" (half the bytes, then a dropped connection) or "permanent"."""

    label = "fake"

    def __init__(self, data: bytes, faults: dict[int, str] | None = None, seed: int = 5, delay_s: float | None = None) -> None:
        self.data = data
        self.delay_s = delay_s
        self.faults = faults or {}
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.requests: list[tuple[int, int]] = []
        self.in_flight = 0
        self.in_flight_at_start: list[int] = []  # requests in flight as each one started, its own included
        self.max_in_flight = 0

    def info(self) -> RemoteInfo:
        return RemoteInfo(len(self.data), True)

    def read_range(self, start: int, end: int, sink: Sink, on_open: Callable[[bool], None] | None = None, whole_size: int | None = None) -> None:
        with self.lock:
            n = len(self.requests)
            self.requests.append((start, end))
            self.in_flight += 1
            self.in_flight_at_start.append(self.in_flight)
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            delay = self.rng.random() * 0.01 if self.delay_s is None else self.delay_s
        try:
            time.sleep(delay)
            fault = self.faults.get(n)
            if fault == "permanent":
                raise PermanentError("gone")
            if fault == "short":
                sink(self.data[start : start + (end - start) // 2])
                raise TransientError("dropped")
            for at in range(start, end, 1000):
                sink(self.data[at : min(at + 1000, end)])
        finally:
            with self.lock:
                self.in_flight -= 1

    def read_all(self, sink: Sink, size: int | None = None) -> None:
        sink(self.data)


def hooks(notes: list[str] | None = None, stop: threading.Event | None = None) -> OrderedHooks:
    return OrderedHooks(lambda: Retrier(3, 0.0, 60.0), (notes if notes is not None else []).append, stop or threading.Event())


def test_bytes_arrive_in_order_over_several_connections_in_bounded_memory() -> None:
    data = random.Random(1).randbytes(3_000_000)
    transfer = FakeTransfer(data)
    budget = ReadAhead(64 * 1024, 6)
    got = bytearray()
    held: list[int] = []

    def sink(chunk: memoryview) -> None:
        got.extend(chunk)
        held.append(budget.in_use)  # buffers taken: chunks in memory, the one being handed on included

    read_ordered(transfer, 1000, len(data), sink, ranges=4, budget=budget, hooks=hooks())
    assert bytes(got) == data[1000:], "every byte once, in order"
    assert transfer.max_in_flight >= 2, "several connections at once"
    assert max(held) <= 6, "never more chunks in memory than the budget"
    assert budget.in_use == 0, "every buffer given back"
    smallest = chunk_for(budget, len(data) - 1000, 4)
    asked = sorted(transfer.requests)
    assert asked[0][0] == 1000 and asked[-1][1] == len(data) and all(a[1] == b[0] for a, b in itertools.pairwise(asked)), \
        "one request a chunk: the chunks tile the range"
    assert all(smallest <= e - s <= 64 * 1024 for s, e in asked[:-1]), "no chunk under the smallest nor over the budget's"


def test_a_short_chunk_is_retried_alone_at_the_exact_byte() -> None:
    data = random.Random(2).randbytes(1_000_000)
    transfer = FakeTransfer(data, faults={3: "short"})
    notes: list[str] = []
    got = bytearray()
    read_ordered(transfer, 0, len(data), got.extend, ranges=3, budget=ReadAhead(64 * 1024, 6), hooks=hooks(notes))
    assert bytes(got) == data
    broken = transfer.requests[3]
    resumed = [r for r in transfer.requests[4:] if r[1] == broken[1]]
    assert resumed == [(broken[0] + (broken[1] - broken[0]) // 2, broken[1])], "the rest of that chunk only, from the byte it stopped at"
    assert len(notes) == 1 and "continuing at byte" in notes[0]


def test_an_error_ends_the_read_and_gives_every_slot_back() -> None:
    data = random.Random(3).randbytes(2_000_000)
    budget = ReadAhead(64 * 1024, 8)
    got = bytearray()
    with pytest.raises(PermanentError):
        read_ordered(FakeTransfer(data, faults={5: "permanent"}), 0, len(data), got.extend, ranges=4, budget=budget, hooks=hooks())
    assert len(got) < len(data) and data.startswith(bytes(got)), "what was handed on is a prefix: nothing out of order"
    assert budget.in_use == 0
    assert not [t for t in threading.enumerate() if t.name.startswith("chunk-")], "no worker left behind"


def test_damage_found_by_the_reader_stops_the_workers() -> None:
    data = random.Random(4).randbytes(2_000_000)
    transfer = FakeTransfer(data)
    budget = ReadAhead(64 * 1024, 8)
    fed = 0

    def sink(chunk: memoryview) -> None:
        nonlocal fed
        fed += 1
        if fed == 3:
            raise StreamCorrupt("member x: bad CRC")

    with pytest.raises(StreamCorrupt):
        read_ordered(transfer, 0, len(data), sink, ranges=4, budget=budget, hooks=hooks())
    assert len(transfer.requests) <= 3 + 8, "no chunk fetched beyond the read-ahead after the damage"
    assert budget.in_use == 0


def test_a_stop_ends_a_read_whose_workers_wait() -> None:
    data = random.Random(5).randbytes(500_000)
    stop = threading.Event()
    started = time.monotonic()

    def sink(chunk: memoryview) -> None:
        stop.set()

    with pytest.raises(Exception, match="stopping"):
        read_ordered(FakeTransfer(data), 0, len(data), sink, ranges=2, budget=ReadAhead(64 * 1024, 2), hooks=hooks(stop=stop))
    assert time.monotonic() - started < 5


def test_two_reads_share_one_budget_without_deadlock() -> None:
    data = random.Random(6).randbytes(1_500_000)
    budget = ReadAhead(64 * 1024, 3)
    outs = [bytearray(), bytearray()]
    threads = [threading.Thread(target=read_ordered, args=(FakeTransfer(data, seed=i), 0, len(data), outs[i].extend),
                                kwargs={"ranges": 4, "budget": budget, "hooks": hooks()}) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "both finished"
    assert outs[0] == data and outs[1] == data


def test_connections_open_while_the_reader_waits_for_bytes() -> None:
    data = random.Random(7).randbytes(2_000_000)

    def slow_reader(chunk: memoryview) -> None:
        time.sleep(0.01)

    fast = FakeTransfer(data, delay_s=0.0)
    read_ordered(fast, 0, len(data), slow_reader, ranges=6, budget=ReadAhead(64 * 1024, 12), hooks=hooks())
    assert fast.max_in_flight <= 2, "a source faster than the reader: no more connections than it needs"
    slow = FakeTransfer(data, delay_s=0.03)
    got = bytearray()
    read_ordered(slow, 0, len(data), got.extend, ranges=6, budget=ReadAhead(64 * 1024, 12), hooks=hooks())
    assert bytes(got) == data and slow.max_in_flight == 6, "a slow source: every connection allowed"
    opening = FakeTransfer(data, delay_s=0.3)  # a first answer that is slow to come: the reader waits on
    read_ordered(opening, 0, len(data), bytearray().extend, ranges=8, budget=ReadAhead(64 * 1024, 12), hooks=hooks())
    assert opening.in_flight_at_start[:8] == list(range(1, 9)), \
        f"the first eight requests all open while the first chunk is awaited: {opening.in_flight_at_start[:8]}"


def test_buffers_are_told_apart_by_identity_not_by_their_bytes() -> None:
    """CT data has long runs of zeros: a buffer handed back must be that buffer, not another with equal bytes that a
    worker holds (it would go back to the pool while still being filled)."""
    from provision.staging.transport.ordered import _give_back, _hold, _Read

    budget = ReadAhead(8, 2)
    read = _Read(0, 16, 8, 8)
    first, second = budget.take(8, 0.1), budget.take(8, 0.1)
    assert first is not None and second is not None and first == second and first is not second
    _hold(read, second)  # two workers' buffers, held in the other order than they are handed on
    _hold(read, first)
    _give_back(read, budget, first)
    assert list(read.held.values()) == [second] and read.held[id(second)] is second
    assert budget.in_use == 1 and budget.take(8, 0.1) is first, "the pool got back the buffer that was handed back"


class PacedTransfer(FakeTransfer):
    """Sends each request's bytes at ``rate`` bytes a second, in pieces of 1000 bytes (a capped connection)."""

    def __init__(self, data: bytes, rate: float) -> None:
        super().__init__(data, delay_s=0.0)
        self.rate = rate

    def read_range(self, start: int, end: int, sink: Sink, on_open: Callable[[bool], None] | None = None, whole_size: int | None = None) -> None:
        with self.lock:
            self.requests.append((start, end))
        began = time.monotonic()
        for at in range(start, end, 1000):
            time.sleep(max(0.0, began + (at - start) / self.rate - time.monotonic()))
            sink(self.data[at : min(at + 1000, end)])


def test_chunks_grow_with_the_rate_seen_and_stay_small_on_a_slow_connection() -> None:
    data = random.Random(6).randbytes(1_200_000)
    budget = ReadAhead(256 * 1024, 8)
    smallest = chunk_for(budget, len(data), 2)
    assert smallest == 37_500
    fast = FakeTransfer(data, delay_s=0.0)
    got = bytearray()
    read_ordered(fast, 0, len(data), got.extend, ranges=2, budget=budget, hooks=hooks())
    sizes = [e - s for s, e in sorted(fast.requests)]
    assert bytes(got) == data and sizes[0] == smallest, "the first chunk is the smallest: no rate is known yet"
    assert max(sizes) == 4 * smallest and len(sizes) < len(data) // smallest / 2, "a fast source: four times the smallest, few requests"
    slow = PacedTransfer(data, rate=400_000.0)  # a quarter of a second is 100 kB
    got = bytearray()
    read_ordered(slow, 0, len(data), got.extend, ranges=2, budget=budget, hooks=hooks())
    sizes = [e - s for s, e in sorted(slow.requests)]
    assert bytes(got) == data and all(size <= 150_000 for size in sizes), f"a slow connection keeps chunks of about a quarter second: {sizes}"
    assert budget.in_use == 0


def test_chunks_scale_down_for_short_ranges() -> None:
    budget = ReadAhead(4 << 20, 16)
    assert chunk_for(budget, 7 << 30, 8) == 4 << 20, "a LUNA16 archive: the full chunk"
    assert chunk_for(budget, 2 << 20, 8) == 16 * 1024, "a small archive: small chunks, so every connection gets some"
    assert chunk_for(budget, 100_000, 8) == 16 * 1024, "never under 16 KiB"
    assert budget.memory_bytes == 64 << 20
