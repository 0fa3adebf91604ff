"""The run's stop signal: set once, with the reason and the error that caused it; every transfer, wait and
unpacking loop checks it. Work that ends because of it raises :class:`Stopped`, which is never a cause:
the engine reports the error that set the signal (a full disk, Ctrl-C, a bug), never "stopped"."""

from __future__ import annotations

import threading


class Stopped(Exception):
    """This piece of work ended because the run is stopping (for the reason the signal holds). Internal to staging."""


class StopSignal(threading.Event):
    """A ``threading.Event`` that remembers why it was set, and by what (the first setter wins)."""

    def __init__(self) -> None:
        super().__init__()
        self.reason = ""
        self.cause: BaseException | None = None
        self._first = threading.Lock()

    def set(self, reason: str = "the run is stopping", cause: BaseException | None = None) -> None:
        with self._first:
            if not self.is_set():
                self.reason = reason
                self.cause = cause
        super().set()

    def check(self) -> None:
        """Raise :class:`Stopped` when the run is stopping."""
        if self.is_set():
            raise Stopped(self.reason)
