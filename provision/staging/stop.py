"""The run's stop signal: set once, with the reason and the error that caused it; every transfer, wait and
unpacking loop checks it. Work that ends because of it raises :class:`Stopped`, which is never a cause:
the engine reports the error that set the signal (a full disk, Ctrl-C, a bug), never "stopped"."""

from __future__ import annotations

import threading
from collections.abc import Callable

from .signals import Stopped


class StopSignal(threading.Event):
    """A ``threading.Event`` that remembers why it was set, and by what (the first setter wins)."""

    def __init__(self) -> None:
        super().__init__()
        self.reason = ""
        self.cause: BaseException | None = None
        self._first = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    def set(self, reason: str = "the run is stopping", cause: BaseException | None = None) -> None:
        with self._first:
            first = not self.is_set()
            if first:
                self.reason = reason
                self.cause = cause
            super().set()
            callbacks = list(self._callbacks) if first else []
        for callback in callbacks:
            callback()

    def on_set(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (once) when the signal is set: to cut open connections, say, so no read waits out its timeout."""
        with self._first:
            if not self.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def check(self) -> None:
        """Raise :class:`Stopped` when the run is stopping."""
        if self.is_set():
            raise Stopped(self.reason)
