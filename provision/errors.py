"""The one exception hierarchy. Each error carries facts and a hint for the user."""

from __future__ import annotations

import errno
import os
from typing import Any


class ProvisionError(Exception):
    """Base class: a message, what to do next (hint), the facts, and an exit code."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, **facts: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.facts = facts

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": type(self).__name__,
            "message": self.message,
            "hint": self.hint,
            "facts": {k: _plain(v) for k, v in self.facts.items()},
            "exit_code": self.exit_code,
        }


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


class ConfigError(ProvisionError):
    """A profile, manifest, flag or --set value is wrong (exit 2)."""

    exit_code = 2


class PreflightError(ProvisionError):
    """A preflight check refused to start (exit 3)."""

    exit_code = 3


class DiskSpaceError(PreflightError):
    """The plan needs more disk than is free."""


class GpuError(PreflightError):
    """A required GPU is missing or too small."""


class OutOfSpaceError(ProvisionError):
    """The disk filled up while a step was running (exit 1; the work so far is kept)."""

    @classmethod
    def disk_full(cls, path: Any, doing: str = "", *, needed: int | None = None, free: int | None = None) -> OutOfSpaceError:
        """The one way to say it: the disk holding ``path`` (a file or a folder about to be written) is full, or (with
        ``needed`` and ``free``) would be; ``doing`` says while doing what."""
        folder = str(path) if os.path.isdir(str(path)) else os.path.dirname(str(path)) or str(path)
        what = f" while {doing}" if doing else ""
        if needed is not None and free is not None:
            message = f"the disk holding {folder} has only {free} bytes free{what}, and {needed} are needed"
        else:
            message = f"the disk holding {folder} is full{what}"
        facts = {k: v for k, v in (("needed", needed), ("free", free)) if v is not None}
        return cls(message, hint="free some space or stage fewer subsets (--subsets); what is staged so far is kept and the next run resumes",
                   path=folder, **facts)


class ChecksumError(ProvisionError):
    """A file's size or md5 does not match the manifest."""


class DownloadError(ProvisionError):
    """A file could not be fetched from any source."""


class ExtractError(ProvisionError):
    """An archive is damaged or hostile (path escape, symlink, size overrun)."""


class CommandError(ProvisionError):
    """An external command (pip, uv, nvidia-smi) failed."""


class LockError(ProvisionError):
    """Another run holds the lock on a data root."""


class BookError(ProvisionError):
    """The book's code cannot be made ready: a clone failed, a fix does not match, a file has the reader's edits."""


class PathError(ProvisionError):
    """A path the input names cannot be used: a name longer than the filesystem allows, a link loop, no permission."""

    HINTS = {
        errno.ENAMETOOLONG: "a name in that path is longer than the filesystem allows (255 bytes a name, 4096 a path): "
                            "choose a shorter one (--root, -c, or the profile key that names it)",
        errno.ELOOP: "links on that path lead round in a loop: point the profile at a real folder",
        errno.EACCES: "this user may not use it: fix its permissions, or choose a folder this user owns",
        errno.EPERM: "this user may not use it: fix its permissions, or choose a folder this user owns",
        errno.EROFS: "it is on a read-only disk: choose a folder on a writable one (--root)",
    }

    @classmethod
    def of(cls, exc: OSError) -> PathError:
        """The error a user sees for an OSError that names its path (``exc.filename``)."""
        made = cls(f"cannot use {exc.filename}: {exc.strerror or exc}",
                   hint=cls.HINTS.get(exc.errno or 0, "check that path (its name, its permissions, its disk); what was staged so far is kept"),
                   path=str(exc.filename), errno=exc.errno)
        if exc.errno == errno.ENAMETOOLONG:
            made.exit_code = 2  # the input names a path that cannot be
        return made
