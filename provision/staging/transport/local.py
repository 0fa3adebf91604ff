"""A local directory as a source (a mounted disk, a colleague's copy)."""

from __future__ import annotations

import os
from collections.abc import Callable

from ..signals import PermanentError
from .protocol import BUFFER_BYTES, RemoteInfo, Sink


class LocalTransfer:
    def __init__(self, path: str) -> None:
        self.path = path
        self.label = path

    def info(self) -> RemoteInfo:
        try:
            return RemoteInfo(size=os.stat(self.path).st_size, ranges=True)
        except OSError as exc:
            raise PermanentError(f"{self.path}: {exc.strerror}") from None

    def read_range(self, start: int, end: int, sink: Sink, on_open: Callable[[bool], None] | None = None, whole_size: int | None = None) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise PermanentError(f"{self.path}: {exc.strerror}") from None
        if on_open is not None:
            on_open(True)
        try:
            pos = start
            while pos < end:
                chunk = os.pread(fd, min(BUFFER_BYTES * 4, end - pos), pos)
                if not chunk:
                    raise PermanentError(f"{self.path} ended at byte {pos}, before {end}")
                sink(chunk)
                pos += len(chunk)
        finally:
            os.close(fd)

    def read_all(self, sink: Sink, size: int | None = None) -> None:
        self.read_range(0, os.stat(self.path).st_size, sink)


def try_hardlink(src: str, dest: str) -> bool:
    """Hard-link ``src`` to ``dest`` when both are on one filesystem; False when that is not possible."""
    try:
        if os.stat(src).st_dev != os.stat(os.path.dirname(dest)).st_dev:
            return False
        os.link(src, dest)
        return True
    except OSError:
        return False
