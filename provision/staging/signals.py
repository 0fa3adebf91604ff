"""What staging's parts tell each other: retry, try the next source, fetch again, stream no further, stop.

An internal family: every one of these is caught inside the staging engine and turned into a file's outcome,
and what reaches the user is a :class:`provision.errors.ProvisionError` (with its hint) built from it. They share
``reason`` (and, like those errors, ``message``), so whatever reports one says the same thing.
"""

from __future__ import annotations


class StagingSignal(Exception):
    """The base: a reason, in words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    @property
    def message(self) -> str:
        return self.reason


class TransientError(StagingSignal):
    """Worth retrying (dropped connection, timeout, 5xx, 429); ``retry_after_s`` when the server said.

    ``throttle``: the host refused us on purpose (403, 429, a block page). Such a source is retried
    patiently, for a time budget rather than a number of tries.
    """

    def __init__(self, reason: str, retry_after_s: float | None = None, throttle: bool = False, unreachable: str = "",
                 stalled: bool = False) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s
        self.throttle = throttle
        # "unresolved" (no such host name: no network or DNS), "refused" (no connection), "silent" (no answer in time)
        self.unreachable = unreachable
        self.stalled = stalled  # bytes came, but too few to count as progress


class PermanentError(StagingSignal):
    """This source cannot deliver this file (404, 401, bad redirect): move on to the next source."""


class NotTheFile(PermanentError):
    """The source answered with something else than the file (an HTML page, a body of the wrong length)."""


class CopyDamaged(PermanentError):
    """An unpacked copy lacks scans or holds damaged ones: that subset comes from the next source."""


class NoRangeSupport(StagingSignal):
    """The source ignores byte ranges: fetch the file whole."""


class Damaged(StagingSignal):
    """The bytes arrived damaged: fetch them again (once more at the same source, then the next)."""


class ChecksumMismatch(Damaged):
    """The bytes arrived, but their size or md5 is not the data set's."""


class StreamCorrupt(Damaged):
    """The stream contradicts the central directory or a CRC: the bytes were damaged on the way."""


class CannotStream(StagingSignal):
    """This archive cannot be unpacked as a stream (encrypted or unusual members): stage it whole."""


class Stopped(StagingSignal):
    """This piece of work ended because the run is stopping (for the reason the stop signal holds); never a cause."""
