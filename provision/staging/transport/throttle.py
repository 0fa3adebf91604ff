"""Being polite to a host that throttles: adaptive concurrency per host, rate-limit budgets, and their record.

Zenodo blocks clients that open many downloads at once (403 and an HTML page) and limits guests'
requests per minute (429 with Retry-After, X-RateLimit-* headers on every answer). So each host
gets a gate: at most ``limit`` requests at once, starting at the host's cap, halved when the host
throttles us and grown back by one after each quiet period; paused while a Retry-After runs or its
rate-limit budget is spent. A gate also holds what a transport keeps for its host across requests and
threads (HTTP's one connection pool, sized to the cap), and keeps what happened, for the report: the requests
admitted, and what the transport saw at its sockets (connections open at once, transfers on them at once).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from ..signals import Stopped
from ..stop import StopSignal

QUIET_S = 60.0           # without throttling for this long, a halved limit grows back by one
DEFAULT_PAUSE_S = 5.0    # how long a host is left alone after it throttles us without saying how long
MAX_PAUSE_S = 900.0      # a Retry-After or rate-limit reset further away than this is not believed
HALVE_AT_MOST_EVERY_S = 1.0  # one burst of refusals halves the limit once, not once per refused request


class Closable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=Closable)


@dataclass
class HostRecord:
    """What a host did to us during a run (the report's per-source lines)."""

    host: str
    cap: int
    limit: int
    max_in_flight: int = 0   # requests admitted at once
    requests: int = 0
    throttle_events: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    waited_s: float = 0.0
    # what the transport saw (None where it cannot tell, as for a local folder): a connection counts from its connect
    # to its close, idle in the pool included; a transfer from taking a connection for a request to giving it back
    max_connections: int | None = None
    connections_opened: int | None = None
    max_transfers: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "connections_cap": self.cap, "connections_now": self.limit,
                "connections_used": self.max_connections if self.max_connections is not None else self.max_in_flight,
                "connections_opened": self.connections_opened,
                "transfers_at_once": self.max_transfers if self.max_transfers is not None else self.max_in_flight,
                "requests": self.requests, "throttle_events": self.throttle_events, "throttle_reasons": dict(self.reasons),
                "waited_s": round(self.waited_s, 1)}


class HostGate:
    """Admission to one host: ``slot()`` around every request; ``throttled`` and ``rate_headers`` from its answers."""

    def __init__(self, host: str, cap: int, stop: threading.Event | None = None, clock: Callable[[], float] = time.monotonic,
                 quiet_s: float = QUIET_S) -> None:
        self.record = HostRecord(host, cap, cap)
        self._cond = threading.Condition()
        self._stop = stop or threading.Event()
        self._clock = clock
        self._quiet_s = quiet_s
        self._in_flight = 0
        self._paused_until = 0.0
        self._last_event: float | None = None
        self._last_change = 0.0
        self._budget: int | None = None       # requests left in the host's rate-limit window, when it told us
        self._budget_reset: float | None = None
        self._open: set[Any] = set()          # responses being read: cut when the run stops
        self._kept: Closable | None = None     # the transport's own for this host (HTTP: its connection pool)
        self._connections = 0
        self._transfers = 0
        if isinstance(stop, StopSignal):
            stop.on_set(self.abort_open)

    def acquire(self) -> None:
        """Wait for a free slot (and the end of any pause); TransientError when the run stops first."""
        start = self._clock()
        with self._cond:
            while True:
                now = self._clock()
                self._grow(now)
                self._refill(now)
                if self._stop.is_set():
                    raise Stopped(f"{self.record.host}: the run is stopping")
                if now >= self._paused_until and self._in_flight < self.record.limit and (self._budget is None or self._budget > 0):
                    break
                wake = self._paused_until if now < self._paused_until else now + 1.0
                if self._budget is not None and self._budget <= 0 and self._budget_reset is not None:
                    wake = max(wake, self._budget_reset)
                self._cond.wait(max(0.01, min(wake - now, 1.0)))
            self._in_flight += 1
            if self._budget is not None:
                self._budget -= 1
            self.record.requests += 1
            self.record.max_in_flight = max(self.record.max_in_flight, self._in_flight)
            self.record.waited_s += max(0.0, self._clock() - start)

    def release(self) -> None:
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()

    def throttled(self, reason: str, retry_after_s: float | None = None) -> None:
        """The host refused us (403, 429, a block page): halve the limit, leave it alone for a while."""
        halved: Closable | None = None
        with self._cond:
            now = self._clock()
            self.record.throttle_events += 1
            self.record.reasons[reason] = self.record.reasons.get(reason, 0) + 1
            if now - self._last_change >= HALVE_AT_MOST_EVERY_S or self._last_event is None:
                self.record.limit = max(1, self.record.limit // 2)
                self._last_change = now
                halved = self._kept
            self._last_event = now
            pause = min(retry_after_s if retry_after_s is not None else DEFAULT_PAUSE_S, MAX_PAUSE_S)
            self._paused_until = max(self._paused_until, now + pause)
            self._cond.notify_all()
        if halved is not None:  # a host that counts connections sees no more than the new limit: the idle ones go now
            halved.close()

    def rate_headers(self, headers: Mapping[str, str], wall_now: float | None = None) -> None:
        """X-RateLimit-Remaining/Reset: spend no more requests than the window has left, then wait for its reset."""
        remaining, reset = headers.get("X-RateLimit-Remaining"), headers.get("X-RateLimit-Reset")
        if remaining is None or not remaining.strip().lstrip("-").isdigit():
            return
        with self._cond:
            now = self._clock()
            reset_in = _seconds_until(reset, wall_now if wall_now is not None else time.time())
            left = int(remaining) - (self._in_flight - 1)  # answers to requests still in flight may not count them yet
            self._budget = left if self._budget is None else min(self._budget, left)
            self._budget_reset = now + min(reset_in if reset_in is not None else DEFAULT_PAUSE_S, MAX_PAUSE_S)
            self._cond.notify_all()

    def _refill(self, now: float) -> None:
        if self._budget_reset is not None and now >= self._budget_reset:
            self._budget = None  # a new window: the next answer tells its budget
            self._budget_reset = None

    def _grow(self, now: float) -> None:
        if self.record.limit < self.record.cap and self._last_event is not None and now - max(self._last_event, self._last_change) >= self._quiet_s:
            self.record.limit += 1
            self._last_change = now

    @contextmanager
    def reading(self, response: Any) -> Iterator[None]:
        """Around the reading of a response's body: a run that stops cuts its connection instead of waiting for the next byte."""
        with self._cond:
            self._open.add(response)
        try:
            if self._stop.is_set():
                raise Stopped(f"{self.record.host}: the run is stopping")
            yield
        finally:
            with self._cond:
                self._open.discard(response)

    def abort_open(self) -> None:
        """Shut down the sockets of every response being read (a blocked read then returns at once)."""
        with self._cond:
            responses = list(self._open)
        for response in responses:
            raw = getattr(response, "raw", None)
            sock = getattr(getattr(raw, "connection", None) or getattr(raw, "_connection", None), "sock", None)
            try:
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def kept(self, make: Callable[[HostGate], C]) -> C:
        """What a transport keeps for this host across requests and threads (HTTP: the one connection pool every
        archive and worker shares), made by ``make`` on first use and closed with the gate."""
        with self._cond:
            if self._kept is None:
                self._kept = make(self)
            return self._kept  # type: ignore[return-value]

    def close(self) -> None:
        """Close what the transport kept (its idle connections go now: a proxy counts them too)."""
        with self._cond:
            kept, self._kept = self._kept, None
        if kept is not None:
            kept.close()

    def connection(self, change: int) -> None:
        """A connection to the host was opened (+1) or closed (-1): the transport's count at its sockets."""
        with self._cond:
            self._connections += change
            rec = self.record
            rec.max_connections = max(rec.max_connections or 0, self._connections)
            rec.connections_opened = (rec.connections_opened or 0) + max(0, change)

    def transfer(self, change: int) -> None:
        """A request took a connection (+1), or gave it back once its answer was read or dropped (-1)."""
        with self._cond:
            self._transfers += change
            self.record.max_transfers = max(self.record.max_transfers or 0, self._transfers)

    @contextmanager
    def slot(self) -> Iterator[HostGate]:
        """Hold one of the host's slots for the duration of a request."""
        self.acquire()
        try:
            yield self
        finally:
            self.release()


def _seconds_until(reset: str | None, wall_now: float) -> float | None:
    """X-RateLimit-Reset as seconds from now: servers send either a Unix time or a number of seconds."""
    if reset is None:
        return None
    try:
        value = float(reset.strip())
    except ValueError:
        return None
    return max(0.0, value - wall_now) if value > 1e9 else max(0.0, value)


class Throttle:
    """The gates of one run, one per host, each starting at ``cap_for(host)`` connections."""

    def __init__(self, cap_for: Callable[[str], int], stop: threading.Event | None = None) -> None:
        self.cap_for = cap_for
        self.stop = stop
        self._gates: dict[str, HostGate] = {}
        self._lock = threading.Lock()

    def gate(self, url: str) -> HostGate:
        host = (urlsplit(url).hostname or url).lower()
        with self._lock:
            if host not in self._gates:
                self._gates[host] = HostGate(host, self.cap_for(host), self.stop)
            return self._gates[host]

    def records(self) -> list[HostRecord]:
        with self._lock:
            return [g.record for g in self._gates.values()]

    def close(self) -> None:
        """The run is over: every host's kept connections are closed (none stays open behind it)."""
        with self._lock:
            gates = list(self._gates.values())
        for g in gates:
            g.close()

    def __enter__(self) -> Throttle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
