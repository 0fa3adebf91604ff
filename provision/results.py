"""What the commands hand back: typed, frozen results that the reports render and ``--json`` writes (``to_dict``).
The JSON keeps its shape: optional figures appear only where they apply."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .book.cache import ChapterBuild, DroppedCache

if TYPE_CHECKING:
    from .errors import ProvisionError
    from .gpu import GpuReport
    from .staging.engine import StageResult


def _without_none(raw: dict[str, Any], optional: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in raw.items() if not (k in optional and v is None)}


@dataclass(frozen=True)
class FileRow:
    """One file of the data set, as `status` sees it (``percent`` for a partial one)."""

    key: str
    stage: str
    size: int | None
    source: str | None
    percent: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return _without_none(asdict(self), ("percent",))


@dataclass(frozen=True)
class CacheRow:
    """One chapter's cache folder: its bytes on disk and, for the chapters the book's fixes file knows, its entries."""

    name: str
    path: str
    bytes: int
    entries_built: int | None = None
    entries_needed: int | None = None
    needed_exact: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return _without_none(asdict(self), ("entries_built", "entries_needed", "needed_exact"))


@dataclass(frozen=True)
class StatusResult:
    files: tuple[FileRow, ...]
    caches: tuple[CacheRow, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"files": [f.to_dict() for f in self.files], "caches": [c.to_dict() for c in self.caches]}


@dataclass(frozen=True)
class VerifyRow:
    key: str
    stage: str
    missing: tuple[str, ...] = ()
    damaged: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.stage != "missing" and not self.missing and not self.damaged


@dataclass(frozen=True)
class VerifyResult:
    files: tuple[VerifyRow, ...]
    full: bool

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "full": self.full, "files": [{**asdict(r), "missing": list(r.missing), "damaged": list(r.damaged)}
                                                            for r in self.files]}


@dataclass(frozen=True)
class FixRow:
    id: str
    file: str
    result: str  # applied | already applied | undone | not applied
    why: str


@dataclass(frozen=True)
class BookResult:
    """The book step: where the checkout is, at which commit, whether it was cloned now, and what each fix did."""

    dir: str
    commit: str | None
    cloned: bool
    undo: bool
    repo: str
    data: str
    changed_files: tuple[str, ...]
    fixes: tuple[FixRow, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"ok": True, **asdict(self), "changed_files": list(self.changed_files), "fixes": [asdict(f) for f in self.fixes]}


@dataclass(frozen=True)
class CacheResult:
    """`provision cache`: the chapters built (or, with --drop, the caches deleted)."""

    chapters: tuple[ChapterBuild, ...] = ()
    dropped: tuple[DroppedCache, ...] = ()

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.chapters)

    def to_dict(self) -> dict[str, Any]:
        return {"dropped": [asdict(d) for d in self.dropped], "chapters": [c.to_dict() for c in self.chapters], "ok": self.ok}


@dataclass(frozen=True)
class PinnedArchive:
    members: int
    unpacked_bytes: int


@dataclass(frozen=True)
class PinResult:
    """`provision pin`: the pins file, the archives read (members, unpacked bytes) and those whose pins changed."""

    path: str
    dry_run: bool
    changed: tuple[str, ...]
    archives: dict[str, PinnedArchive]

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "dry_run": self.dry_run, "changed": list(self.changed),
                "archives": {key: asdict(a) for key, a in sorted(self.archives.items())}}


@dataclass
class UpResult:
    """`provision up`: each step's result as it completes (None: not run), the error that stopped the rest, the exit code."""

    profile: str
    installed: tuple[str, ...] | None = None
    gpu: GpuReport | None = None
    book: BookResult | None = None
    data: StageResult | None = None
    cache: CacheResult | None = None
    error: ProvisionError | None = None
    exit_code: int = 0
    steps: list[str] = field(default_factory=list)  # the steps that ran, in order

    def to_dict(self) -> dict[str, Any]:
        steps: dict[str, Any] = {}
        for step in self.steps:
            if step == "preflight":
                steps[step] = {"ok": True}
            elif step == "install":
                steps[step] = {"ok": True, "installed": list(self.installed or ())}
            elif step == "cuda" and self.gpu is not None:
                steps[step] = self.gpu.to_dict()
            elif step == "book" and self.book is not None:
                steps[step] = self.book.to_dict()
            elif step == "data" and self.data is not None:
                steps[step] = self.data.to_dict()
            elif step == "cache" and self.cache is not None:
                steps[step] = self.cache.to_dict()
        out: dict[str, Any] = {"profile": self.profile, "steps": steps, "exit_code": self.exit_code}
        if self.error is not None:
            out["error"] = self.error.to_dict()
        return out
