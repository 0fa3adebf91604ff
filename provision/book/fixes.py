"""The book's compatibility fixes: exact text replacements, judged against the checkout, applied all or nothing.

A fixed file is derived, never recorded: the book's version is the file at the checkout's HEAD, the
fixed version is that with the file's fixes applied in order. The working copy equal to one or the
other says where the file stands; anything else is the reader's own edit, which is never overwritten.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..atomicfile import atomic_write_bytes
from ..errors import BookError, ConfigError
from ..schema import build, set_by_tool
from .checkout import read_committed, read_current


def _parse_relative(value: Any, path: str) -> str:
    posix = PurePosixPath(str(value))
    if not isinstance(value, str) or not value or posix.is_absolute() or ".." in posix.parts:
        raise ValueError(f"{value!r} must be a path inside the book's checkout, like p2ch14/training.py")
    return str(posix)


def _parse_count(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected how many times 'before' occurs (1 or more), got {value!r}")
    return value


@dataclass(frozen=True)
class Fix:
    """Replace ``before`` by ``after`` in ``file``; ``before`` occurs exactly ``count`` times there."""

    id: str
    file: str = field(metadata={"parse": _parse_relative})
    before: str
    after: str
    why: str
    count: int = field(default=1, metadata={"parse": _parse_count})


@dataclass(frozen=True)
class SmokeEntry:
    """One entry point of the smoke run: a module run as ``python -m``, a dataset class to sample, or a notebook whose
    code cells are run in order."""

    name: str
    module: str | None = None
    sample: str | None = None
    notebook: str | None = field(default=None, metadata={"parse": _parse_relative})
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class CacheChapter:
    """What one chapter's prepcache memoizes, and what one entry of it costs on disk (measured on the book's code)."""

    chapter: int
    module: str                         # its dsets module, whose getCtRawCandidate is memoized
    scope: str                          # the cache's folder under data-unversioned/cache/
    width_irc: tuple[int, ...]          # the crop its dataset asks for
    per_series: tuple[str, ...] = ()    # memoized functions its prepcache also calls once per series
    entries_per_scan: float = 0.0       # LUNA16: 551,065 candidates for 888 scans (+ the per-series entries)
    entry_bytes: int = 0                # one entry as the book stores it (a pickled crop, not compressed)
    entry_bytes_compressed: int = 0     # the same with the cache fixes (gzip level 1) on real CT data
    epoch_samples: int = 0              # training samples an epoch draws (0: every candidate), besides validating on a tenth
    training: str = ""                  # the smoke entry whose measured speed stands for this chapter's training


@dataclass(frozen=True)
class BookManifest:
    """``configs/book/<name>.yaml``: the fixes and the smoke run for one book repository."""

    name: str
    fixes: tuple[Fix, ...]
    smoke: tuple[SmokeEntry, ...] = ()
    cache: tuple[CacheChapter, ...] = ()
    path: str = field(default="", metadata={"parse": set_by_tool})

    def files(self) -> list[str]:
        """The files the fixes touch, in the order they are first named."""
        return list(dict.fromkeys(f.file for f in self.fixes))

    def fixes_for(self, file: str) -> list[Fix]:
        return [f for f in self.fixes if f.file == file]


def load_book_manifest(spec: str, configs_dir: Path) -> BookManifest:
    """Read and validate the fixes file (``book.fixes``: relative to configs/, or a path)."""
    from ..yamlfile import read_yaml

    path = Path(spec) if os.path.isabs(spec) else configs_dir / spec
    if not path.is_file():
        raise ConfigError(f"book.fixes: {path} does not exist", hint="set book.fixes to a file under configs/ (book/dlwpt-code.yaml) or a path",
                          key="book.fixes")
    manifest = build(BookManifest, read_yaml(path), path="", origin=lambda p: str(path))
    ids = [f.id for f in manifest.fixes]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    problems = [f"repeated fix ids: {', '.join(repeated)}"] if repeated else []
    problems += [f"fix '{f.id}': 'before' and 'after' are the same" for f in manifest.fixes if f.before == f.after]
    problems += [f"smoke entry '{e.name}': give exactly one of module, sample or notebook" for e in manifest.smoke
                 if [e.module, e.sample, e.notebook].count(None) != 2]
    if problems:
        raise ConfigError(f"{path}: {'; '.join(problems)}", hint="fix the book's fixes file", file=str(path))
    return dataclasses.replace(manifest, path=str(path))


# ---------------------------------------------------------------- judging (pure)


@dataclass(frozen=True)
class FileState:
    """Where one file stands: ``to apply``, ``applied``, ``edited`` (by the reader), ``mismatch`` or ``missing``.

    ``original`` is the book's version (HEAD), ``fixed`` that with the fixes applied; ``problem`` says
    what is wrong for the last three states.
    """

    file: str
    state: str
    fixes: tuple[Fix, ...]
    original: bytes | None = None
    fixed: bytes | None = None
    problem: str = ""


def fixed_text(original: bytes, fixes: Sequence[Fix]) -> tuple[bytes | None, str]:
    """``original`` with ``fixes`` applied in order, or (None, what did not match)."""
    text = original
    for fix in fixes:
        before, after = fix.before.encode(), fix.after.encode()
        found = text.count(before)
        if found != fix.count:
            return None, (f"fix '{fix.id}' expects {fix.count} occurrence(s) of {fix.before.strip()[:60]!r} in {fix.file}, "
                          f"the book's version has {found}")
        text = text.replace(before, after)
    return text, ""


def judge_file(file: str, fixes: Sequence[Fix], original: bytes | None, current: bytes | None) -> FileState:
    """Compare the working copy with the book's version and the fixed version of it."""
    own = tuple(fixes)
    if original is None:
        return FileState(file, "missing", own, problem=f"{file} is not in the checkout's commit")
    fixed, problem = fixed_text(original, fixes)
    if fixed is None:
        return FileState(file, "mismatch", own, original, problem=problem)
    if current == fixed:
        return FileState(file, "applied", own, original, fixed)
    if current == original:
        return FileState(file, "to apply", own, original, fixed)
    what = "was deleted" if current is None else "differs from both the book's version and the fixed one"
    return FileState(file, "edited", own, original, fixed, problem=f"{file} {what} (your own edits?)")


def judge(manifest: BookManifest, read_original: Callable[[str], bytes | None], read_current: Callable[[str], bytes | None]) -> list[FileState]:
    """Every fixed file's state, from readers of the book's version and of the working copy."""
    return [judge_file(file, manifest.fixes_for(file), read_original(file), read_current(file)) for file in manifest.files()]


def judge_checkout(manifest: BookManifest, checkout: Path) -> list[FileState]:
    """Every fixed file's state in ``checkout``: its HEAD blob against the working copy."""
    return judge(manifest, lambda f: read_committed(checkout, f), lambda f: read_current(checkout, f))


# ---------------------------------------------------------------- applying


def check_all(states: Sequence[FileState], undo: bool) -> None:
    """Refuse before writing anything when a fix does not match or a file has the reader's edits."""
    broken = [s for s in states if s.state in ("mismatch", "missing")]
    if broken:
        raise BookError(
            "the book's fixes do not match its code: " + "; ".join(s.problem for s in broken),
            hint="the checkout is at another commit than the fixes were written for: check book.ref, "
                 "or update the fixes file (book.fixes); nothing was changed",
            files=[s.file for s in broken],
        )
    edited = [s for s in states if s.state == "edited"]
    if edited:
        verb = "take back the fixes in" if undo else "fix"
        raise BookError(
            f"will not {verb} files you changed: " + "; ".join(s.problem for s in edited),
            hint="your edits are kept and nothing was changed; to start over from the book's version: "
                 f"git -C <book dir> checkout -- {' '.join(s.file for s in edited)}",
            files=[s.file for s in edited],
        )


def write_states(checkout: Path, states: Sequence[FileState], undo: bool = False) -> list[str]:
    """Write the fixed (or, with ``undo``, the book's) version of each file that needs it; returns those files."""
    check_all(states, undo)
    changed = []
    for s in states:
        if (s.state == "to apply" and not undo) or (s.state == "applied" and undo):
            content = s.original if undo else s.fixed
            assert content is not None  # check_all let only judged files through
            path = checkout / s.file
            atomic_write_bytes(path, content, mode=os.stat(path).st_mode & 0o7777 if path.exists() else 0o644)
            changed.append(s.file)
    return changed
