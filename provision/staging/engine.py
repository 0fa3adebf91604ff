"""The staging engine: for each selected file, decide what it still needs, then have it fetched, verified,
unpacked (or linked) and recorded, several files at once.

Concurrency: ``files_in_flight`` file drivers, each holding its slot until its archive is
unpacked (this bounds the archives on disk, as the disk plan assumes); all drivers share one
pool of ``connections`` segment workers (see :mod:`.segments`). In stream mode each driver
reads one archive as ordered ranges instead (see :mod:`.stream`). Where each step lives:
:mod:`.fallback` (trying the sources in order), :mod:`.fetch` (a verified file under its final
name), :mod:`.unpack` (unpacking, streaming, linking copies), :mod:`.context` (what they share).
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..config import DataConfig
from ..errors import OutOfSpaceError, PreflightError, ProvisionError
from ..planvalues import DataPlan, FilePlan
from .context import Emit, FileResult, StageContext
from .fetch import fetch
from .signals import Stopped
from .state import FileRecord, Inside, StateStore, run_lock, size_of, stat_stamp, work_dir
from .unpack import UnpackWhileLanding, extract_file, link_from_copies, member_sizes, stream_file

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    files: list[FileResult]
    elapsed_s: float
    root: str
    target_dir: str
    sources: list[dict[str, Any]] = field(default_factory=list)  # per host: connections used, throttling, waiting

    @property
    def ok(self) -> bool:
        return all(f.outcome in ("already staged", "staged", "linked", "repaired") for f in self.files)

    @property
    def bytes_fetched(self) -> int:
        return sum(f.bytes_fetched for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "elapsed_s": round(self.elapsed_s, 3), "bytes_fetched": self.bytes_fetched,
                "root": self.root, "target_dir": self.target_dir, "sources": self.sources, "files": [asdict(f) for f in self.files]}


@dataclass(frozen=True)
class Need:
    """What a file still needs: fetching, and which members to (re)write (None = all not yet done)."""

    fetch: bool
    extract: bool
    only: frozenset[str] | None = None
    reason: str = ""


def decide(f: FilePlan, rec: FileRecord | None, target: Path) -> Need | None:
    """What ``f`` still needs, from its state record and a quick look at the disk (None: nothing)."""
    final = target / f.key
    if rec is None or (f.md5 and rec.md5 and rec.md5 != f.md5):
        return Need(fetch=True, extract=f.unpack, reason="not staged yet")
    inside = Inside(target)
    if rec.linked:  # from an unpacked copy: linking again is cheap, so any broken link means all of it
        broken = [name for name, (size, _crc) in rec.members.items() if _size_inside(inside, name) != size]
        return Need(fetch=True, extract=f.unpack, reason=f"{len(broken)} link(s) to the copy broken") if broken or rec.damaged else None
    archive_ok = rec.verified and rec.stamp is not None and stat_stamp(final) == rec.stamp
    if not f.unpack:
        return None if archive_ok else Need(fetch=True, extract=False, reason="missing or changed since it was verified")
    if rec.extracted:
        bad = {name for name, (size, _crc) in rec.members.items() if _size_inside(inside, name) != size}
        bad |= set(rec.damaged)
        if not bad:
            return None
        return Need(fetch=not archive_ok, extract=True, only=frozenset(bad), reason=f"{len(bad)} member(s) missing or damaged")
    if archive_ok:
        return Need(fetch=False, extract=True, reason="downloaded, not yet unpacked")
    return Need(fetch=True, extract=True, reason="not staged yet")


def _size_inside(inside: Inside, name: str) -> int | None:
    path = inside.path(name)
    return size_of(path) if path is not None else None


class Stager:
    """Runs the data step for one plan. ``emit(event, **info)`` receives progress events."""

    def __init__(self, data: DataConfig, plan: DataPlan, emit: Emit | None = None) -> None:
        self.ctx = StageContext(data, plan, emit)
        self.cfg = data
        self.plan = plan

    def run(self) -> StageResult:
        ctx = self.ctx
        start = time.monotonic()
        for folder in (work_dir(ctx.root), ctx.target):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise PreflightError(f"cannot create {folder}: {exc.strerror}", hint="point data.root (--root) at a folder on a writable disk",
                                     path=str(folder)) from None
        with run_lock(ctx.root), ctx.throttle:  # the hosts' connections are closed with the run, none kept open behind it
            state = StateStore(ctx.root)
            results = {f.key: FileResult(f.key) for f in self.plan.files}
            work: list[tuple[FilePlan, Need]] = []
            for f in self.plan.files:
                rec = state.record(f.key)
                need = decide(f, rec, ctx.target)
                if need is None:
                    results[f.key].outcome = "already staged"
                    results[f.key].source = rec.source if rec is not None else None
                else:
                    work.append((f, need))
            with ThreadPoolExecutor(max(1, self.plan.connections), thread_name_prefix="conn") as conns, \
                    ThreadPoolExecutor(max(1, self.plan.files_at_once), thread_name_prefix="file") as drivers:
                futures: list[tuple[FilePlan, Future[None]]] = [
                    (f, drivers.submit(self._stage_file, f, need, state, results[f.key], conns)) for f, need in work
                ]
                for f, fut in futures:
                    self._settle(f, fut, results[f.key])
            if ctx.stop.cause is not None:
                raise ctx.stop.cause  # what stopped the run (a full disk, Ctrl-C, a bug), never the files it stopped
        return StageResult([results[f.key] for f in self.plan.files], time.monotonic() - start, str(ctx.root), str(ctx.target),
                           [r.to_dict() for r in ctx.throttle.records()])

    def _settle(self, f: FilePlan, fut: Future[None], result: FileResult) -> None:
        """Wait for one file's work and record how it ended. A full disk, Ctrl-C or a bug stops the whole run, with
        that error as its cause; the files it stopped end as "stopped", never as failures of their own."""
        ctx = self.ctx
        try:
            fut.result()
        except Stopped:
            result.outcome = "stopped"
            result.error = f"stopped before it was complete: {ctx.stop.reason}"
        except OutOfSpaceError as exc:
            _fail(result, exc)
            ctx.stop.set(exc.message, exc)
        except ProvisionError as exc:
            _fail(result, exc)
            ctx.emit("file_failed", key=f.key, message=f"{f.key}: FAILED: {exc.message}")
        except OSError as exc:  # a disk or permission problem of this file's: its failure, not a traceback
            where = f" ({exc.filename})" if exc.filename else ""
            _fail(result, ProvisionError(f"{f.key}: {exc.strerror or exc}{where}",
                                         hint="check that data.root is writable and its disk healthy; run again to continue"))
            ctx.emit("file_failed", key=f.key, message=f"{f.key}: FAILED: {exc.strerror or exc}{where}")
        except BaseException as exc:  # noqa: BLE001 - Ctrl-C or a bug: the run stops, and run() raises it
            ctx.stop.set("interrupted" if isinstance(exc, KeyboardInterrupt) else f"{f.key}: {type(exc).__name__}: {exc}", exc)

    def _stage_file(self, f: FilePlan, need: Need, state: StateStore, result: FileResult, conns: ThreadPoolExecutor) -> None:
        ctx = self.ctx
        ctx.stop.check()
        if need.fetch and f.locations and f.locations[0].kind == "unpacked":
            rest = link_from_copies(ctx, f, state, result)
            if not rest:
                noun = "file" if result.members == 1 else "files"
                ctx.emit("file_done", key=f.key, message=f"{f.key}: linked from the unpacked copy {result.source} ({result.members} {noun})")
                return
            f = replace(f, locations=rest)
        final = ctx.target / f.key
        repairing = need.only is not None
        # stream mode; and any repair whose archive is gone fetches just the damaged members' bytes
        if f.unpack and need.fetch and (self.plan.mode == "stream" or repairing):
            if stream_file(ctx, f, need.only, state, result):
                ctx.emit("file_done", key=f.key, message=f"{f.key}: {result.outcome} from {result.source} ({result.members} members unpacked while downloading)")
                return
        # archive mode unpacks members as their bytes land (a repair writes only some, once the archive is whole)
        landing = UnpackWhileLanding(ctx, f, result) if need.fetch and need.extract and not repairing and self.cfg.unpack_while_downloading else None
        try:
            if need.fetch:
                if repairing:  # the whole archive again: bytes the plan did not count
                    ctx.emit("expect", key=f.key, n=f.size or 0)
                source, md5 = fetch(ctx, f, final, result, conns, landing)
                state.fetched(f.key, md5=md5, size=os.stat(final).st_size, source=source, unpack=f.unpack, stamp=stat_stamp(final),
                              repairing=repairing)
                result.source = source
            else:
                result.source = rec.source if (rec := state.record(f.key)) is not None else None
            members = ((landing.finish(final) if landing is not None else None) or extract_file(ctx, f, final, need.only, result)
                       if need.extract else [])
        finally:
            if landing is not None:  # whatever failed on the way, no member is still being written behind it (a no-op after finish)
                landing.abandon(damaged=False)
        if need.extract:
            state.unpacked(f.key, member_sizes(members), need.only, sum(m.size for m in members))
            if not self.plan.keeps(f):
                final.unlink(missing_ok=True)
                state.archive_removed(f.key)
        result.outcome = "repaired" if repairing else "staged"
        what = f"{result.members} members unpacked" if need.extract else "verified"
        ctx.emit("file_done", key=f.key, message=f"{f.key}: {result.outcome} from {result.source} ({what})")


def _fail(result: FileResult, exc: ProvisionError) -> None:
    result.outcome = "failed"
    result.error = exc.message
    result.hint = exc.hint
