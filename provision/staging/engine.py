"""The staging engine: fetch each selected file from the first source that delivers it, verify, unpack, record.

Concurrency: ``files_in_flight`` file drivers, each holding its slot until its archive is
unpacked (this bounds the archives on disk, as the disk plan assumes); all drivers share one
pool of ``connections`` segment workers (see :mod:`.segments`). In stream mode each driver
reads one archive as an ordered stream instead (see :mod:`.stream`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from ..config import DataConfig
from ..errors import ChecksumError, DownloadError, ExtractError, OutOfSpaceError, ProvisionError
from ..plan import DataPlan, FileLocation, FilePlan
from . import extract as extracting
from .local import LocalTransfer, try_hardlink
from .segments import SegmentedDownload
from .state import StateStore, partial_dir, run_lock, size_of
from .throttle import Throttle
from .transfer import BUFFER_BYTES, NoRangeSupport, NotTheFile, PermanentError, Retrier, Transfer, TransientError
from .zenodo import ZenodoRecords

log = logging.getLogger(__name__)
T = TypeVar("T")
Emit = Callable[..., None]
MD5_MISMATCH_TRIES_PER_SOURCE = 2


@dataclass
class FileResult:
    key: str
    outcome: str = "pending"  # already staged | staged | linked | repaired | failed
    source: str | None = None
    bytes_fetched: int = 0
    retries: list[str] = field(default_factory=list)
    members: int = 0
    error: str | None = None
    hint: str | None = None
    checked: str = "md5"  # what vouches for the bytes: the archive's md5, or (parallel ranges) its members' CRCs against ...


@dataclass
class StageResult:
    files: list[FileResult]
    elapsed_s: float
    root: str
    target_dir: str
    sources: list[dict[str, Any]] = field(default_factory=list)  # per host: connections used, throttling, waiting

    @property
    def ok(self) -> bool:
        return all(f.outcome != "failed" for f in self.files)

    @property
    def bytes_fetched(self) -> int:
        return sum(f.bytes_fetched for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "elapsed_s": round(self.elapsed_s, 3), "bytes_fetched": self.bytes_fetched,
                "root": self.root, "target_dir": self.target_dir, "sources": self.sources, "files": [asdict(f) for f in self.files]}


class ChecksumMismatch(Exception):
    pass


@dataclass(frozen=True)
class Need:
    """What a file still needs: fetching, and which members to (re)write (None = all not yet done)."""

    fetch: bool
    extract: bool
    only: frozenset[str] | None = None
    reason: str = ""


def stat_stamp(path: Path) -> dict[str, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def decide(f: FilePlan, rec: dict[str, Any] | None, target: Path) -> Need | None:
    """What ``f`` still needs, from its state record and a quick look at the disk (None: nothing)."""
    final = target / f.key
    if not rec or (f.md5 and rec.get("md5") and rec["md5"] != f.md5):
        return Need(fetch=True, extract=f.unpack, reason="not staged yet")
    if rec.get("linked"):  # from an unpacked copy: linking again is cheap, so any broken link means all of it
        broken = [name for name, (size, _crc) in rec.get("members", {}).items() if size_of(target / name) != size]
        return Need(fetch=True, extract=f.unpack, reason=f"{len(broken)} link(s) to the copy broken") if broken or rec.get("damaged") else None
    archive_ok = rec.get("verified") and rec.get("stamp") is not None and stat_stamp(final) == rec.get("stamp")
    if not f.unpack:
        return None if archive_ok else Need(fetch=True, extract=False, reason="missing or changed since it was verified")
    if rec.get("extracted"):
        members = rec.get("members", {})
        bad = {name for name, (size, _crc) in members.items() if size_of(target / name) != size}
        bad |= set(rec.get("damaged", []))
        if not bad:
            return None
        return Need(fetch=not archive_ok, extract=True, only=frozenset(bad), reason=f"{len(bad)} member(s) missing or damaged")
    if archive_ok:
        return Need(fetch=False, extract=True, reason="downloaded, not yet unpacked")
    return Need(fetch=True, extract=True, reason="not staged yet")


class Stager:
    """Runs the data step for one plan. ``emit(event, **info)`` receives progress events."""

    def __init__(self, data: DataConfig, plan: DataPlan, emit: Emit | None = None) -> None:
        self.cfg = data
        self.plan = plan
        self.root = Path(plan.root)
        self.target = Path(plan.target_dir)
        self._emit_lock = threading.Lock()
        self._emit = emit or (lambda event, **info: None)
        self.abort = threading.Event()
        self.mode = plan.mode
        self.throttle = Throttle(data.host_connections, data.connections, stop=self.abort)
        self._zenodo = ZenodoRecords(data.zenodo_url, data.timeout_s, self.throttle)

    def emit(self, event: str, **info: Any) -> None:
        with self._emit_lock:
            self._emit(event, **info)

    # ------------------------------------------------------------ the run

    def run(self) -> StageResult:
        start = time.monotonic()
        self.target.mkdir(parents=True, exist_ok=True)
        with run_lock(self.root):
            state = StateStore(self.root)
            results = {f.key: FileResult(f.key) for f in self.plan.files}
            work: list[tuple[FilePlan, Need]] = []
            for f in self.plan.files:
                rec = state.record(f.key)
                need = decide(f, rec, self.target)
                if need is None:
                    results[f.key].outcome = "already staged"
                    results[f.key].source = (rec or {}).get("source")
                else:
                    work.append((f, need))
            fatal: list[BaseException] = []
            with ThreadPoolExecutor(max(1, self.cfg.connections), thread_name_prefix="conn") as conns, \
                    ThreadPoolExecutor(self._drivers(), thread_name_prefix="file") as drivers:
                futures: list[tuple[FilePlan, Future[None]]] = [
                    (f, drivers.submit(self._stage_file, f, need, state, results[f.key], conns)) for f, need in work
                ]
                for f, fut in futures:
                    try:
                        fut.result()
                    except OutOfSpaceError as exc:
                        self.abort.set()
                        fatal.append(exc)
                        _fail(results[f.key], exc)
                    except ProvisionError as exc:
                        _fail(results[f.key], exc)
                        self.emit("file_failed", key=f.key, message=f"{f.key}: FAILED: {exc.message}")
                    except OSError as exc:  # a disk or permission problem of this file's: its failure, not a traceback
                        where = f" ({exc.filename})" if exc.filename else ""
                        _fail(results[f.key], ProvisionError(f"{f.key}: {exc.strerror or exc}{where}",
                                                             hint="check that data.root is writable and its disk healthy; run again to continue"))
                        self.emit("file_failed", key=f.key, message=f"{f.key}: FAILED: {exc.strerror or exc}{where}")
                    except BaseException as exc:
                        self.abort.set()
                        fatal.append(exc)
            if fatal:
                raise fatal[0]
        return StageResult([results[f.key] for f in self.plan.files], time.monotonic() - start, str(self.root), str(self.target),
                           [r.to_dict() for r in self.throttle.records()])

    def _drivers(self) -> int:
        """Files handled at once: in stream mode each archive is one ordered stream, so one per connection."""
        if self.mode == "stream":
            return max(1, self.cfg.connections // self.plan.stream_ranges)
        return max(1, self.plan.files_in_flight)

    def _stage_file(self, f: FilePlan, need: Need, state: StateStore, result: FileResult, conns: ThreadPoolExecutor) -> None:
        if self.abort.is_set():
            raise OutOfSpaceError.stopped()
        if need.fetch and f.locations and f.locations[0].kind == "unpacked":
            rest = self._link_from_copies(f, state, result)
            if not rest:
                noun = "file" if result.members == 1 else "files"
                self.emit("file_done", key=f.key, message=f"{f.key}: linked from the unpacked copy {result.source} ({result.members} {noun})")
                return
            f = replace(f, locations=rest)
        final = self.target / f.key
        repairing = need.only is not None
        # stream mode; and any repair whose archive is gone fetches just the damaged members' bytes
        if f.unpack and need.fetch and (self.mode == "stream" or repairing):
            streamed = self._stream(f, need, state, result)
            if streamed:
                self.emit("file_done", key=f.key, message=f"{f.key}: {result.outcome} from {result.source} ({result.members} members unpacked while downloading)")
                return
        if need.fetch:
            if repairing:  # the whole archive again: bytes the plan did not count
                self.emit("expect", key=f.key, n=f.size or 0)
            source, md5 = self._fetch(f, final, result, conns)
            fields: dict[str, Any] = {"verified": True, "md5": md5, "size": os.stat(final).st_size, "source": source,
                                      "unpack": f.unpack, "stamp": stat_stamp(final)}
            if not repairing:
                fields["extracted"] = False
            state.update(f.key, **fields)
            result.source = source
        else:
            result.source = (state.record(f.key) or {}).get("source")
        if need.extract:
            members = self._extract(f, final, need, result)
            state.update(f.key, extracted=True, members=self._members(state, f.key, members, need), damaged=[],
                         unpacked_bytes=sum(m.size for m in members))
            if not self.cfg.keep_archives:
                final.unlink(missing_ok=True)
                state.update(f.key, stamp=None)
        result.outcome = "repaired" if repairing else "staged"
        what = f"{result.members} members unpacked" if need.extract else "verified"
        self.emit("file_done", key=f.key, message=f"{f.key}: {result.outcome} from {result.source} ({what})")

    # ------------------------------------------------------------ unpacked copies

    def _link_from_copies(self, f: FilePlan, state: StateStore, result: FileResult) -> tuple[FileLocation, ...]:
        """Link ``f`` from the unpacked copies that lead its sources; returns the sources left to try (none: linked)."""
        from .copies import CopyDamaged, CopyFile, check_against_pins, link_files, scan_files

        for i, loc in enumerate(f.locations):
            if loc.kind != "unpacked":
                return f.locations[i:]
            try:
                if f.unpack:
                    files = scan_files(Path(loc.url), f.subset or 0)
                    pins = {m.name: (m.size, m.crc) for m in f.pinned}
                    crcs = check_against_pins(files, pins, f.subset or 0, loc.url) if pins else {}
                else:
                    got = md5_of(Path(loc.url))
                    if f.md5 and got != f.md5:
                        raise CopyDamaged(f"the copy's {loc.url} has md5 {got}, the data set's {f.key} has {f.md5}")
                    files, crcs = [CopyFile(f.key, Path(loc.url), os.stat(loc.url).st_size)], {}
            except (CopyDamaged, OSError) as exc:
                reason = getattr(exc, "reason", None) or f"{loc.url}: {exc}"
                result.retries.append(f"{reason}; trying the next source")
                self.emit("retry", key=f.key, message=f"{f.key}: {reason}; trying the next source")
                continue
            link_files(files, self.target)
            members = {c.name: [c.size, crcs.get(c.name)] for c in files}
            state.update(f.key, linked=True, extracted=f.unpack, verified=True, unpack=f.unpack, source=loc.url, members=members,
                         damaged=[], stamp=None, md5=f.md5, size=f.size)
            result.source, result.members, result.outcome = loc.url, len(files), "linked"
            result.checked = "members against the data set's pins" if crcs else ("each scan against its header" if f.unpack else "md5")
            return ()
        raise DownloadError(f"{f.key}: no unpacked copy holds it intact and no other source is configured: " + "; ".join(result.retries),
                            hint="add a download source after the copy (data.sources: [kaggle, zenodo])", key=f.key)

    # ------------------------------------------------------------ fetching

    @staticmethod
    def transfer_for(loc: FileLocation, cfg: DataConfig, throttle: Throttle | None = None) -> Transfer:
        """The transfer that reads ``loc`` (imports for the source kind happen only here)."""
        if loc.kind == "local":
            return LocalTransfer(loc.url)
        if loc.kind in ("http", "zenodo"):
            from .http import HttpTransfer

            return HttpTransfer(loc.url, cfg.timeout_s, throttle.gate(loc.url) if throttle else None)
        if loc.kind == "gs":
            from .gcs import GcsTransfer

            try:
                return GcsTransfer(loc.url, cfg.timeout_s, cfg.gcs.project, cfg.gcs.anonymous, cfg.gcs.user_project)
            except Exception as exc:  # noqa: BLE001 - a client that cannot start is one failed source
                raise PermanentError(f"cannot open {loc.url}: {type(exc).__name__}: {exc}") from None
        raise PermanentError(f"no transfer for source kind {loc.kind}")

    def _expected(self, f: FilePlan, loc: FileLocation) -> tuple[int | None, str | None]:
        size, md5 = f.size, f.md5
        if (size is None or md5 is None) and loc.kind == "zenodo" and f.record:
            api_size, api_md5 = self._zenodo.lookup(f.record, f.key)
            size = size if size is not None else api_size
            md5 = md5 or api_md5
        return size, md5

    def _stream(self, f: FilePlan, need: Need, state: StateStore, result: FileResult) -> bool:
        """Stage an archive in stream mode; False when it cannot be streamed (then archive mode takes over)."""
        from .stream import CannotStream, StreamCorrupt, StreamOutcome, check_layout_against_pins, check_streamable_size, read_layout, stream_archive

        def attempt(loc: FileLocation) -> StreamOutcome:
            size, md5 = self._expected(f, loc)
            transfer, size, md5, ranges = self._open(f, loc, size, md5, result)
            if size is None or not ranges:
                raise CannotStream(f"{loc.url} does not serve byte ranges or a size")
            layout = self._with_retries(lambda: read_layout(transfer, size, self.target, f.key),
                                        f"{f.key}: reading the directory at {loc.url}", result)
            if not f.unpacked_estimated:
                check_streamable_size(layout, f.unpacked_bytes, f.key)
            if f.pinned:
                check_layout_against_pins(layout, f.pinned, loc.url)
            if need.only is None:
                state.update(f.key, unpack=True, streaming=True, md5=md5, size=size, source=loc.url, verified=False, extracted=False)
            def starting(members: int, to_write: int, to_fetch: int) -> None:
                if need.only is not None:  # a repair: bytes the plan did not count
                    self.emit("expect", key=f.key, n=to_fetch)
                self.emit("unpack", key=f.key, members=members, bytes=to_write)

            return stream_archive(
                transfer, layout, only=need.only, expected_md5=md5, retrier=self.retrier, sleep=self._sleep,
                on_bytes=lambda n: self._count(result, f.key, n), note_retry=result.retries.append,
                stop=self.abort, free_bytes=self._free_bytes, parallel=self.plan.stream_ranges,
                on_start=starting, on_member=lambda m: self.emit("unpacked", key=f.key, n=m.size),
            )

        try:
            source, outcome = self._from_sources(f, result, attempt, damaged=StreamCorrupt)
        except (CannotStream, NoRangeSupport) as exc:
            result.retries.append(f"{f.key} cannot be streamed ({exc}): staging it as an archive")
            return False
        state.update(f.key, verified=True, extracted=True, streaming=False, members=self._members(state, f.key, outcome.members, need),
                     damaged=[], stamp=None, md5_checked=outcome.md5 is not None, unpacked_bytes=sum(m.size for m in outcome.members))
        if outcome.md5 is None and need.only is None:
            result.checked = "members against the data set's pins" if f.pinned else "members against the archive's own directory (archive md5 not checked)"
        result.source = source
        result.members = outcome.written
        result.outcome = "repaired" if need.only is not None else "staged"
        return True

    @staticmethod
    def _members(state: StateStore, key: str, members: list[extracting.Member], need: Need) -> dict[str, list[int]]:
        """The member record after unpacking: a repair updates the recorded members, a full unpack replaces them."""
        recorded = (state.record(key) or {}).get("members", {}) if need.only is not None else {}
        recorded.update({m.name: [m.size, m.crc] for m in members})
        return recorded

    def _count(self, result: FileResult, key: str, n: int) -> None:
        result.bytes_fetched += n
        self.emit("bytes", n=n, key=key)

    def _free_bytes(self) -> int:
        st = os.statvfs(self.target)
        return st.f_bavail * st.f_frsize

    def _fetch(self, f: FilePlan, final: Path, result: FileResult, conns: ThreadPoolExecutor) -> tuple[str, str]:
        """Bring ``f`` to ``final`` verified; return (source label, md5)."""

        def attempt(loc: FileLocation) -> str:
            size, md5 = self._expected(f, loc)
            return self._download(f, loc, final, size, md5, result, conns)

        return self._from_sources(f, result, attempt, damaged=ChecksumMismatch)

    def _from_sources(self, f: FilePlan, result: FileResult, attempt: Callable[[FileLocation], T],
                      damaged: type[Exception]) -> tuple[str, T]:
        """Try ``attempt`` at each source in order: damaged bytes get one more try at the same source,
        a failing source is abandoned for the next. Returns (source, what ``attempt`` returned)."""
        if not f.locations:
            raise DownloadError(f"{f.key}: no configured source can serve it", hint="add a source to data.sources (zenodo needs a record in the manifest)", key=f.key)
        failures: list[str] = []
        refused = False  # a host blocked or throttled us, or answered with a web page
        for loc in f.locations:
            for _ in range(MD5_MISMATCH_TRIES_PER_SOURCE):
                try:
                    return loc.url, attempt(loc)
                except damaged as exc:
                    result.retries.append(str(exc))
                    self.emit("retry", key=f.key, message=f"{f.key}: {exc}; fetching it again")
                    failures.append(f"{loc.url}: {exc}")
                except (PermanentError, TransientError) as exc:
                    refused = refused or isinstance(exc, NotTheFile) or getattr(exc, "throttle", False)
                    result.retries.append(f"{loc.url}: gave up: {exc.reason}")
                    self.emit("retry", key=f.key, message=f"{f.key}: source {loc.url} failed ({exc.reason}); trying the next source")
                    failures.append(f"{loc.url}: {exc.reason}")
                    break
                if self.abort.is_set():
                    break
        expected_md5 = f.md5 or "unknown"
        if failures and all("md5" in x for x in failures):
            raise ChecksumError(
                f"{f.key}: every source delivered a wrong checksum (expected md5 {expected_md5}): " + "; ".join(failures),
                hint="the manifest's md5 or the sources are wrong; check the data set's record",
                key=f.key, expected=expected_md5,
            )
        hint = "check the network and data.sources, then run again: what was fetched is kept"
        if refused:
            hint = ("the server refused this network (blocked, rate-limited, or a web page instead of the file): run again later "
                    "(what was fetched is kept), with fewer connections (data.host_connections) or more patience "
                    "(data.blocked_patience_min); or mirror the data once to a bucket (provision mirror --to gs://BUCKET/luna16/) "
                    "or copy it to a folder, and put that first in data.sources")
        raise DownloadError(f"{f.key} could not be fetched: " + "; ".join(failures), hint=hint, key=f.key)

    def _download(self, f: FilePlan, loc: FileLocation, final: Path, size: int | None, md5: str | None,
                  result: FileResult, conns: ThreadPoolExecutor) -> str:
        pdir = partial_dir(self.root)
        pdir.mkdir(parents=True, exist_ok=True)
        part = pdir / f"{f.key}.part"
        progress_path = pdir / f"{f.key}.progress.json"
        if loc.kind == "local" and size is not None:
            linked = self._try_link(loc.url, part, final, size, md5)
            if linked is not None:
                return linked
        transfer, size, md5, ranges = self._open(f, loc, size, md5, result)
        if size is None or not ranges:
            return self._download_whole(f, transfer, part, progress_path, final, size, md5, result)
        try:
            return SegmentedDownload(self, f, transfer, part, progress_path, final, size, md5, result, conns).run()
        except NoRangeSupport:
            result.retries.append(f"{loc.url} ignores byte ranges: fetching it whole")
            return self._download_whole(f, transfer, part, progress_path, final, size, md5, result)

    def _open(self, f: FilePlan, loc: FileLocation, size: int | None, md5: str | None,
              result: FileResult) -> tuple[Transfer, int | None, str | None, bool]:
        """The transfer for ``loc``, with size, md5 and range support; a copy that differs from the manifest is refused."""
        transfer = self.transfer_for(loc, self.cfg, self.throttle)
        ranges = True  # with a known size, the first ranged answer tells whether the source honours ranges
        if size is None or loc.kind == "gs":  # a bucket's metadata is one cheap call and carries the md5
            info = self._with_retries(transfer.info, f"{f.key}: asking {loc.url} for the size", result)
            if md5 and info.md5 and info.md5 != md5:
                raise PermanentError(f"{loc.url} holds md5 {info.md5}, the manifest says {md5}: the copy there differs from the data set")
            if size is not None and info.size is not None and info.size != size:
                raise PermanentError(f"{loc.url} holds {info.size} bytes, the manifest says {size}")
            size, ranges = info.size, info.ranges
            md5 = md5 or info.md5
        return transfer, size, md5, ranges

    def _try_link(self, src: str, part: Path, final: Path, size: int, md5: str | None) -> str | None:
        """Hard-link a local source file (same filesystem), verify it, and give it its final name."""
        part.unlink(missing_ok=True)
        if size_of(Path(src)) != size or not try_hardlink(src, str(part)):
            return None
        got = md5_of(part)
        if md5 and got != md5:
            part.unlink(missing_ok=True)
            raise ChecksumMismatch(f"md5 of {src} is {got}, expected {md5}")
        os.replace(part, final)
        return got

    def _download_whole(self, f: FilePlan, transfer: Transfer, part: Path, progress_path: Path, final: Path,
                        size: int | None, md5: str | None, result: FileResult) -> str:
        """For sources without ranges: one stream from byte 0, hashed as it arrives; a retry starts over."""
        progress_path.unlink(missing_ok=True)
        digest = self._with_retries(lambda: self._stream_once(f, transfer, part, size, result), f"{transfer.label} (whole file, from its start)", result)
        return self._finish(part, final, size, md5, digest, transfer.label)

    def _stream_once(self, f: FilePlan, transfer: Transfer, part: Path, size: int | None, result: FileResult) -> str:
        """One whole-file pass, hashed as it arrives; on failure the bytes it counted are taken back."""
        hasher = hashlib.md5()
        written = 0

        def sink(chunk: bytes) -> None:
            nonlocal written
            if self.abort.is_set():
                raise OutOfSpaceError.stopped()
            _write(out, chunk, part)
            hasher.update(chunk)
            written += len(chunk)
            result.bytes_fetched += len(chunk)
            self.emit("bytes", n=len(chunk), key=f.key)

        try:
            with open(part, "wb") as out:
                transfer.read_all(sink, size)
        except TransientError:
            self.emit("bytes", n=-written, key=f.key)
            raise
        return hasher.hexdigest()

    def _finish(self, part: Path, final: Path, size: int | None, md5: str | None, got_md5: str, label: str) -> str:
        got_size = os.stat(part).st_size
        if (size is not None and got_size != size) or (md5 and got_md5 != md5):
            part.unlink(missing_ok=True)
            (part.parent / (part.name[: -len(".part")] + ".progress.json")).unlink(missing_ok=True)
            raise ChecksumMismatch(f"md5 mismatch from {label}: got {got_md5} ({got_size} bytes), expected {md5} ({size} bytes)")
        with open(part, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(part, final)
        return got_md5

    def retrier(self) -> Retrier:
        """The retry policy for one transfer: tries for ordinary errors, minutes of patience for a throttling host."""
        return Retrier(self.cfg.retries, self.cfg.backoff_s, self.cfg.blocked_patience_min * 60)

    def _with_retries(self, call: Callable[[], T], what: str, result: FileResult) -> T:
        retrier = self.retrier()
        while True:
            try:
                return call()
            except TransientError as exc:
                delay = retrier.after(exc)
                result.retries.append(f"{what}: {exc.reason}")
                self._sleep(delay)

    def _sleep(self, seconds: float) -> None:
        if self.abort.wait(seconds):
            raise OutOfSpaceError.stopped()

    # ------------------------------------------------------------ unpacking

    def _extract(self, f: FilePlan, final: Path, need: Need, result: FileResult) -> list[extracting.Member]:
        count = 0

        def done(member: extracting.Member) -> None:
            nonlocal count
            count += 1
            self.emit("unpacked", key=f.key, n=member.size)

        try:
            members = extracting.extract(
                final, self.target,
                only=need.only,
                free_bytes=self._free_bytes,
                workers=self.cfg.extract_workers or (os.cpu_count() or 1),
                on_member=done,
                stop=self.abort,
                on_start=lambda members, size: self.emit("unpack", key=f.key, members=members, bytes=size),
            )
        except ExtractError:
            final.unlink(missing_ok=True)  # a damaged archive must be fetched again
            raise
        result.members = count
        return members


def _fail(result: FileResult, exc: ProvisionError) -> None:
    result.outcome = "failed"
    result.error = exc.message
    result.hint = exc.hint


def _write(out: Any, chunk: bytes, path: Path) -> None:
    try:
        out.write(chunk)
    except OSError as exc:
        if exc.errno == 28:
            raise OutOfSpaceError.disk_full(path) from None
        raise


def md5_of(path: Path) -> str:
    hasher = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(BUFFER_BYTES * 4):
            hasher.update(chunk)
    return hasher.hexdigest()
