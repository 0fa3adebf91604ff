"""The one small interface every source implements, so resume, verification and extraction are written once."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

BUFFER_BYTES = 1 << 20  # 1 MiB reads and writes

Sink = Callable[[bytes], None]


class TransientError(Exception):
    """Worth retrying (dropped connection, timeout, 5xx, 429); ``retry_after_s`` when the server said."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class PermanentError(Exception):
    """This source cannot deliver this file (404, 401, bad redirect): move on to the next source."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NoRangeSupport(Exception):
    """The source ignores byte ranges: fetch the file whole."""


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

    def read_range(self, start: int, end: int, sink: Sink, on_open: Callable[[bool], None] | None = None, whole_ok: bool = False) -> None:
        """Deliver bytes [start, end) to ``sink`` in order; raise TransientError/PermanentError/NoRangeSupport.

        ``on_open(ranged)`` is called once the source has answered. With ``whole_ok`` (and ``start`` 0), a
        source that ignores ranges delivers the whole file instead of raising NoRangeSupport.
        """
        ...

    def read_all(self, sink: Sink) -> None:
        """Deliver the whole file from its first byte (for sources without range support)."""
        ...


def backoff_s(attempt: int, retry_after_s: float | None, base_s: float) -> float:
    """Exponential backoff with jitter; the server's Retry-After wins (capped at two minutes)."""
    if retry_after_s is not None:
        return min(retry_after_s, 120.0)
    return min(base_s * 2 ** (attempt - 1), 30.0) * (0.5 + random.random())
