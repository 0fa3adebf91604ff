"""Final names, given only to what is whole and vouched for.

Members are held under their archive's own temporary names (:func:`.members.held_path`) until the whole archive is
vouched for: its md5 (the manifest's, or the records API's) over every byte, with the directory the members were cut by
its own; or the data set's pinned CRCs. Then :func:`publish` names them together, each scan's header (``.mhd``, what the
book globs) after every other member, so that no header is ever seen without its whole volume beside it, whatever
moment a run is killed at. What is not vouched for is removed with :func:`discard`, which only ever removes the
archive's own temporary files: never a final name, which may be another archive's.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ...errors import ExtractError
from .members import Member, held_path, temporaries, write_error

HEADER_SUFFIX = ".mhd"  # a MetaImage header names its volume (.raw); the book finds scans by their headers


def naming_order(members: Iterable[Member]) -> list[Member]:
    """``members`` in the order they take their names: every header after every other member."""
    return sorted(members, key=lambda m: m.name.lower().endswith(HEADER_SUFFIX))


def publish(members: Iterable[Member], archive: str) -> None:
    """Give ``archive``'s held ``members`` their final names, now that the archive is vouched for: the volumes first,
    the headers last. Each must be held (a member already under its final name is the caller's to leave out)."""
    for member in naming_order(members):
        try:
            os.replace(held_path(member, archive), member.dest)
        except FileNotFoundError:
            raise ExtractError(f"{archive}: member {member.name} is no longer held under {held_path(member, archive).name}",
                               hint="something else removed the tool's temporary files; run stage again to unpack it again",
                               archive=archive, member=member.name) from None
        except OSError as exc:
            raise write_error(exc, member, archive) from None


def discard(members: Iterable[Member], archive: str, target: Path | None = None) -> None:
    """Remove what ``archive`` holds or is writing of ``members`` (its own temporary files, never a final name), and the
    folders that leaves empty, up to ``target``."""
    folders: set[Path] = set()
    for member in members:
        for path in temporaries(member.dest, archive):
            path.unlink(missing_ok=True)
        if target is not None:
            folders.update(p for p in member.dest.parents if p.is_relative_to(target) and p != target)
    for folder in sorted(folders, key=lambda p: -len(p.parts)):
        try:
            folder.rmdir()
        except OSError:  # not empty: something else is in it
            pass
