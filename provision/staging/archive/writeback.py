"""Starting the disk's work early: a member written at hundreds of MB/s piles up in the page cache, and the
fsync before its final name then waits for all of it at once, with its core idle (several members ending
together idled both cores of the benchmark's machine for a quarter of a second). Asking the kernel to begin
writing each few MiB as soon as they are written (Linux's ``sync_file_range`` with ``SYNC_FILE_RANGE_WRITE``,
which does not wait) leaves the fsync only the last few MiB. A hint only: where the call is missing or
refused, nothing changes but the wait, and the fsync still makes every byte durable."""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable

WINDOW_BYTES = 8 << 20  # written bytes handed to the disk at a time: small enough that the fsync waits for little
SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _load() -> Callable[[int, int, int], None] | None:
    """The call, looked up on first use (not at import: every command imports this) in the C library the process
    already has (``CDLL(None)``, no search for it on disk)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
    call.restype = ctypes.c_int

    def start(fd: int, offset: int, length: int) -> None:
        call(fd, offset, length, SYNC_FILE_RANGE_WRITE)  # a failure (a filesystem without it) is only a lost hint

    return start


class EarlyWriteback:
    """Hands each full window of a file being written to the disk as soon as it is written (see the module)."""

    def __init__(self, fd: int, window_bytes: int = WINDOW_BYTES) -> None:
        self.fd = fd
        self.window_bytes = window_bytes
        self.started = 0  # bytes from the start of the file whose writing has been asked for

    def written(self, total: int) -> None:
        """``total`` bytes of the file are written (a few KiB of them may still be in a file object's buffer: those
        are left to the fsync, like the bytes after the last full window)."""
        if total - self.started < self.window_bytes or (start := _load()) is None:
            return
        end = total - total % self.window_bytes
        start(self.fd, self.started, end - self.started)
        self.started = end

