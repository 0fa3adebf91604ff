"""Starting the disk's work early, and letting go of what it has written: a member written at hundreds of MB/s
piles up in the page cache, and the fsync before its final name then waits for all of it at once, with its core
idle (several members ending together idled both cores of the benchmark's machine for a quarter of a second).
Asking the kernel to begin writing each few MiB as soon as they are written (Linux's ``sync_file_range`` with
``SYNC_FILE_RANGE_WRITE``, which does not wait) leaves the fsync only the last few MiB.

What is on disk then leaves the page cache (``posix_fadvise`` with ``POSIX_FADV_DONTNEED``): the windows whose
writing was asked for a window earlier, as the member grows, and the whole member after its fsync. The next
member's writes then reuse those pages where they would have taken new ones. On a VM whose host takes freed
memory back (a balloon's free page reporting, as on the benchmark's machine), each new page costs a fault on the
host: writing 3 GB into new pages took 9-10 s of CPU there, and 1 s into reused ones. Elsewhere it keeps the
reader's memory for what comes next (the book's cache, training) rather than for 120 GB that will not fit in it.

Hints only: where a call is missing or refused, nothing changes but the wait and the memory, and the fsync still
makes every byte durable."""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Callable

WINDOW_BYTES = 8 << 20  # written bytes handed to the disk at a time: small enough that the fsync waits for little
SYNC_FILE_RANGE_WAIT_BEFORE = 1
SYNC_FILE_RANGE_WRITE = 2
SYNC_FILE_RANGE_WAIT_AFTER = 4
WRITTEN = SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER  # returns once on disk


@functools.cache
def _load() -> Callable[[int, int, int, int], None] | None:
    """The call ``(fd, offset, length, flags)``, looked up on first use (not at import: every command imports this)
    in the C library the process already has (``CDLL(None)``, no search for it on disk)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
    call.restype = ctypes.c_int

    def sync_range(fd: int, offset: int, length: int, flags: int) -> None:
        call(fd, offset, length, flags)  # a failure (a filesystem without it) is only a lost hint

    return sync_range


def forget(fd: int, offset: int = 0, length: int = 0) -> None:
    """Let the page cache drop the bytes of ``fd`` from ``offset`` (``length`` 0: to the end) that are on disk; the
    kernel keeps any it has not written yet."""
    if hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass  # only a lost hint


class EarlyWriteback:
    """Hands each full window of a file being written to the disk as soon as it is written, and lets the page cache
    drop what is on disk (see the module)."""

    def __init__(self, fd: int, window_bytes: int = WINDOW_BYTES) -> None:
        self.fd = fd
        self.window_bytes = window_bytes
        self.started = 0  # bytes from the start of the file whose writing has been asked for
        self.forgotten = 0  # bytes from the start that are on disk and out of the page cache

    def written(self, total: int) -> None:
        """``total`` bytes of the file are written (a few KiB of them may still be in a file object's buffer: those
        are left to the fsync, like the bytes after the last full window)."""
        if total - self.started < self.window_bytes or (sync_range := _load()) is None:
            return
        end = total - total % self.window_bytes
        sync_range(self.fd, self.started, end - self.started, SYNC_FILE_RANGE_WRITE)
        settled = self.started - self.window_bytes  # asked for a window ago or more: on disk by now, as a rule
        if settled > self.forgotten:
            sync_range(self.fd, self.forgotten, settled - self.forgotten, WRITTEN)  # waits only where the disk lags
            forget(self.fd, self.forgotten, settled - self.forgotten)
            self.forgotten = settled
        self.started = end

    def synced(self) -> None:
        """The file is fsync'd: all of it leaves the page cache."""
        forget(self.fd)
