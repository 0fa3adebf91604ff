"""The one small interface every source implements, so resume, verification and extraction are written once."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ...version import __version__
from ..signals import TransientError

BUFFER_BYTES = 1 << 20  # 1 MiB reads and writes
# who asks: Zenodo blocks bare client names and asks for one that identifies the tool (REAL_WORLD.md)
USER_AGENT = f"dlwpt-provision/{__version__} (+https://github.com/dlwpt-provision/dlwpt-provision; data staging for Deep Learning with PyTorch)"

Sink = Callable[[bytes], None]


@dataclass(frozen=True)
class RemoteInfo:
    """What a source says about a file before the transfer."""

    size: int | None
    ranges: bool
    md5: str | None = None


class Transfer(Protocol):
    """One file at one source."""

    label: str

    def info(self) -> RemoteInfo:
        """Size, range support and checksum where known (one cheap request at most)."""
        ...

    def read_range(self, start: int, end: int, sink: Sink, on_open: Callable[[bool], None] | None = None, whole_size: int | None = None) -> None:
        """Deliver bytes [start, end) to ``sink`` in order; raise TransientError/PermanentError/NoRangeSupport.

        ``on_open(ranged)`` is called once the source has answered. With ``whole_size`` (and ``start`` 0), a
        source that ignores ranges may deliver the whole file instead, taken only when it is that long.
        """
        ...

    def read_all(self, sink: Sink, size: int | None = None) -> None:
        """Deliver the whole file from its first byte (for sources without range support); ``size``: what it should be."""
        ...


class Retrier:
    """After each failed try of one transfer: try again, and after how long, or give up (re-raise).

    Ordinary transient errors get ``retries`` tries in a row without progress (a try that delivered
    bytes starts the count again; ``retries * 4`` in all). A host that throttles or blocks us gets a
    time budget instead, ``patience_s`` from the first refusal in a row. A host name that does not resolve, or
    a server that does not answer, gets ``UNRESOLVED_TRIES`` tries: a passing hiccup is ridden out, no network
    fails within seconds (a silent server within a few timeouts). A stalled transfer is no progress.
    """

    UNRESOLVED_TRIES = 3

    def __init__(self, retries: int, base_s: float, patience_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.retries = retries
        self.base_s = base_s
        self.patience_s = patience_s
        self.clock = clock
        self.idle = 0
        self.total = 0
        self.throttled_since: float | None = None
        self.throttled_tries = 0
        self.unresolved = 0

    def after(self, exc: TransientError, progressed: bool = False) -> float:
        """The delay before the next try; raises ``exc`` when it is time to give up on this source."""
        if exc.throttle:
            now = self.clock()
            if self.throttled_since is None:
                self.throttled_since = now
            self.throttled_tries += 1
            if now - self.throttled_since >= self.patience_s:
                exc.reason = f"{exc.reason}; still refused after {(now - self.throttled_since) / 60:.1f} min (data.blocked_patience_min: {self.patience_s / 60:g})"
                raise exc
            return 0.2 + random.random() * 0.8  # the host's gate holds every request back for the pause it asked for
        self.throttled_since = None
        self.throttled_tries = 0
        progressed = progressed and not exc.stalled
        if exc.unreachable in ("unresolved", "silent"):
            self.unresolved += 1
            if self.unresolved >= self.UNRESOLVED_TRIES:
                raise exc
        self.total += 1
        self.idle = 0 if progressed else self.idle + 1
        if self.idle > self.retries or self.total > self.retries * 4:
            raise exc
        return backoff_s(self.idle or 1, exc.retry_after_s, self.base_s)


def read_resuming(transfer: Transfer, start: int, end: int, sink: Sink, retrier: Retrier, note_retry: Callable[[str], None],
                  pause: Callable[[float], None]) -> None:
    """Deliver bytes [start, end) of ``transfer`` to ``sink`` in order, never past ``end``: a dropped connection or an
    answer that ends early continues at the exact byte, after ``pause(delay)`` (which raises to stop), until
    ``retrier`` gives up."""
    pos = start

    def counted(piece: bytes) -> None:
        nonlocal pos
        piece = piece[: end - pos]  # never past the range, whatever a source sends
        sink(piece)
        pos += len(piece)

    while pos < end:
        before = pos
        try:
            transfer.read_range(pos, end, counted)
            if pos == before:
                raise TransientError(f"{transfer.label} ended bytes {pos}-{end - 1} without sending any")
        except TransientError as exc:
            delay = retrier.after(exc, progressed=pos > before)
            note_retry(f"{transfer.label} bytes {pos}-{end - 1}: {exc.reason} (continuing at byte {pos})")
            pause(delay)


def backoff_s(attempt: int, retry_after_s: float | None, base_s: float) -> float:
    """Exponential backoff with jitter; the server's Retry-After wins (capped at two minutes)."""
    if retry_after_s is not None:
        return min(retry_after_s, 120.0)
    return min(base_s * 2 ** (attempt - 1), 30.0) * (0.5 + random.random())
