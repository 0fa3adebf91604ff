"""The steps of ``provision up`` (preflight, install, cuda, data) and the status/verify views.

Each step takes the plan it executes; none decides anything the plan already decided.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .book.cache import ChapterBuild
from .config import Config
from .environment import Environment
from .errors import BookError, ConfigError, DiskSpaceError, GpuError, PreflightError, ProvisionError
from .gpu import GpuReport
from .manifest import FIT, Manifest, ManifestFile, load_manifest
from .planvalues import DataPlan, Plan
from .progress import Console, Progress
from .results import (
    BookResult,
    CacheResult,
    CacheRow,
    FileRow,
    FixRow,
    PinnedArchive,
    PinResult,
    StatusResult,
    UpResult,
    VerifyResult,
    VerifyRow,
)
from .staging.engine import Stager, StageResult
from .staging.state import FileRecord, Inside, StateStore, file_statuses, load_records, partial_bytes, run_lock, work_dir

if TYPE_CHECKING:  # annotations only: the book's and the mirror's code is imported when a command needs it
    from .book.cache import Overlapped
    from .book.smoke import SmokeResult
    from .staging.mirror import MirrorResult

log = logging.getLogger(__name__)


def preflight(plan: Plan, steps: Sequence[str]) -> None:
    """Refuse (exit 3) before anything is written when the plan cannot work."""
    for problem in plan.problems:
        if problem.step not in steps and problem.step != "preflight":
            continue
        cls = ConfigError if problem.exit_code == 2 else DiskSpaceError if problem.step == "data" else PreflightError
        raise cls(problem.message, hint=problem.hint)


def install(plan: Plan, environ: Mapping[str, str], console: Console | None = None) -> None:
    """Create the profile's venv if it asks for one and it is missing, then run the install commands, their output
    shown as it comes."""
    from .install import create_venv, run_install

    console = console or Console()
    if plan.install.create_venv:
        create_venv(plan.install.create_venv)
    if plan.install.commands:
        run_install(plan.install, environ, lambda line: console.say(f"install: {line}"), log.warning)


def check_gpu(config: Config, env: Environment) -> GpuReport:
    from .gpu import check
    from .install import target_python

    return check(config.cuda, colab=env.kind == "colab", kaggle=env.kind == "kaggle", python=target_python(config.requirements.venv, env.python_executable))


def stage(config: Config, plan: Plan, landed: Callable[[str], None] | None = None, console: Console | None = None) -> StageResult:
    """Stage the plan's files, then chapter 15's checkpoints when asked for; ``landed(folder)`` is told each subset folder
    as it is complete (the cache builds it)."""
    assets = plan.assets
    if assets is not None and not (Path(assets.root) / ".git").exists():  # staging them first would block the clone
        raise BookError(f"chapter 15's checkpoints go into the book's {assets.target_dir}, and {assets.root} holds no checkout of its code",
                        hint="get the book's code first: provision book (or provision up with book.enabled: true); or set book.extras: false")
    files = plan.data.files + (assets.files if assets is not None else ())
    remaining = sum(max(0, (f.size or 0) - f.partial_bytes) for f in files if f.stage in ("missing", "partial"))
    progress = (console or Console()).progress(remaining)
    folders = {f.key: f"subset{f.subset}" for f in plan.data.files if f.unpack and f.subset is not None}

    def emit(event: str, **info: Any) -> None:
        progress(event, **info)
        if event == "file_done" and landed is not None and info.get("key") in folders:
            landed(folders[info["key"]])

    try:
        result = Stager(config.data, plan.data, emit=emit).run()
        if assets is not None:
            result = stage_assets(config, assets, result, emit)
        return result
    finally:
        progress.close()


def stage_assets(config: Config, assets: DataPlan, data: StageResult, emit: Callable[..., None]) -> StageResult:
    """Chapter 15's checkpoints into the book's p2ch15/, by the same engine; one result with the data's."""
    from .assets import chosen
    from .book.checkout import exclude_local

    settings = chosen(config)
    assert settings is not None  # the plan has them, so the profile asks for them
    exclude_local(Path(assets.root))  # the checkpoints and the engine's state stay out of `git status`
    done = Stager(settings.config.data, assets, emit=emit).run()
    return dataclasses.replace(data, files=data.files + done.files, elapsed_s=data.elapsed_s + done.elapsed_s, sources=data.sources + done.sources)


def book(config: Config, plan: Plan, *, undo: bool = False) -> BookResult:
    """Get the book's code ready: clone it at the pinned commit if needed, link the data, apply the fixes
    (or, with ``undo``, take them back). All or nothing: a fix that does not match, or a file with the
    reader's own edits, stops it before anything is written."""
    from .book import checkout as co
    from .book.fixes import judge_checkout, load_book_manifest, write_states
    from .config import configs_dir
    from .plan import book_problems

    assert plan.book is not None  # build_plan always plans the book
    for problem in book_problems(plan.book):
        raise PreflightError(problem.message, hint=problem.hint)
    where = Path(plan.book.dir)
    cloned = None
    if plan.book.clone:
        if undo:
            raise BookError(f"{where} holds no checkout of the book's code: there are no fixes to take back", hint="run `provision book` first")
        cloned = co.clone(plan.book.repo, plan.book.ref, where)
    if not undo:
        co.link_data(where, Path(config.data.root))
        co.exclude_local(where)
    manifest = load_book_manifest(config.book.fixes, configs_dir())
    states = judge_checkout(manifest, where)
    changed = write_states(where, states, undo=undo)
    rows: list[FixRow] = []
    for s in states:
        done = "undone" if undo and s.file in changed else "applied" if s.file in changed else "already applied" if s.state == "applied" else "not applied"
        rows += [FixRow(fix.id, s.file, done, fix.why) for fix in s.fixes]
    return BookResult(str(where), cloned or co.head_commit(where), cloned is not None, undo, plan.book.repo, str(where / co.DATA_FOLDER),
                      tuple(changed), tuple(rows))


def smoke(config: Config, plan: Plan, env: Environment, console: Console | None = None) -> SmokeResult:
    """Run each of the book's Part 2 entry points for a few batches on the staged scans (see :mod:`provision.book.smoke`)."""

    from .book.fixes import load_book_manifest
    from .book.smoke import run_smoke
    from .config import configs_dir
    from .install import target_python
    from .staging.state import work_dir

    assert plan.book is not None
    manifest = load_book_manifest(config.book.fixes, configs_dir())
    python = target_python(config.requirements.venv, env.python_executable)
    root = Path(config.data.root)
    result = run_smoke(Path(plan.book.dir), Path(plan.data.target_dir), manifest.smoke, config.book.smoke, python,
                       work_dir(root) / "smoke", emit=(console or Console()).say)
    record_epoch_timings(root, result, config.book.smoke.samples, {c.training for c in manifest.cache if c.training},
                         startup=next((e.name for e in manifest.smoke if e.sample), ""))
    return result


def record_epoch_timings(root: Path, result: SmokeResult, samples: int, trainings: set[str], startup: str = "p2ch10 dataset") -> None:
    """Seconds per training sample of each chapter's smoke training run, less the start-up the dataset sample run
    (``startup``) measures (an upper bound: each run also builds its model and reads its scans), for the plan's epoch estimates."""
    from .staging.state import record_timing

    rows = {r.name: r for r in result.rows}
    start = rows[startup].seconds if startup in rows and rows[startup].outcome == "ok" else 0.0
    for name in trainings:
        row = rows.get(name)
        if row is not None and row.outcome == "ok":
            record_timing(root, "epoch", name, {"s_per_sample": max(1e-4, (row.seconds - start) / (2 * samples)), "device": result.device})


def cache(config: Config, plan: Plan, env: Environment, chapters: Sequence[int], *, drop: Sequence[int] = (),
          workers: int | None = None, console: Console | None = None) -> CacheResult:
    """Build the book's caches of ``chapters`` for the staged scans (or, for ``drop``, delete them); see :mod:`provision.book.cache`."""
    from .book import cache as caching
    from .book.fixes import load_book_manifest
    from .config import configs_dir
    from .install import target_python

    assert plan.book is not None
    manifest = load_book_manifest(config.book.fixes, configs_dir())
    book_dir = Path(plan.book.dir)
    if drop:
        return CacheResult(dropped=tuple(caching.drop(book_dir, caching.chapters_named(manifest.cache, drop))))
    if plan.book.clone:
        raise BookError(f"{book_dir} holds no checkout of the book's code, whose functions fill its cache",
                        hint="run `provision book` first (or `provision up` with book.enabled)")
    for problem in plan.problems:
        if problem.step == "cache":
            raise PreflightError(problem.message, hint=problem.hint)
    python = target_python(config.requirements.venv, env.python_executable)
    count = workers or config.book.cache_workers or os.cpu_count() or 1
    say = (console or Console()).say
    if not chapters and manifest.cache:
        chapters = (manifest.cache[0].chapter,)  # the edition's first chapter with a cache
    built = tuple(caching.build(book_dir, chapter, python, count, say) for chapter in caching.chapters_named(manifest.cache, chapters))
    record_cache_timings(Path(config.data.root), built, count)
    return CacheResult(chapters=built)


def record_cache_timings(root: Path, built: Sequence[ChapterBuild], workers: int) -> None:
    """Core-seconds per entry of each chapter built (enough of it to mean something), for the plan's time estimates."""
    from .staging.state import record_timing

    for c in built:
        if c.entries >= 20 and c.seconds > 0:
            record_timing(root, "cache", str(c.chapter), {"core_s_per_entry": c.seconds * workers / c.entries, "measured_on": f"{workers} worker(s)"})


def start_cache(config: Config, plan: Plan, env: Environment, console: Console | None = None) -> Overlapped | None:
    """The caches of book.cache, built subset by subset while the data lands (None when there are none to build, or no
    book); its lines go to ``console``, above the staging bar."""
    from .book import cache as caching
    from .book.fixes import load_book_manifest
    from .config import configs_dir
    from .install import target_python

    if not config.book.cache or plan.book is None or not (Path(plan.book.dir) / ".git").exists():
        return None
    for problem in plan.problems:
        if problem.step == "cache":
            raise PreflightError(problem.message, hint=problem.hint)
    chapters = caching.chapters_named(load_book_manifest(config.book.fixes, configs_dir()).cache, config.book.cache)
    python = target_python(config.requirements.venv, env.python_executable)
    return caching.Overlapped(Path(plan.book.dir), chapters, python, config.book.cache_workers or os.cpu_count() or 1,
                              (console or Console()).say)


def up(config: Config, plan: Plan, env: Environment, environ: Mapping[str, str], steps: Sequence[str],
       console: Console | None = None) -> UpResult:
    """Run the chosen steps in order; stop at the first that fails. The result holds each step's outcome, the exit code,
    and the error that stopped the others (for the command to show, and in --json)."""
    result = UpResult(plan.profile)
    console = console or Console()
    try:
        if "preflight" in steps:
            preflight(plan, steps)
            result.steps.append("preflight")
        if "install" in steps:
            install(plan, environ, console)
            result.installed = tuple(r.requirement for r in plan.install.to_install)
            result.steps.append("install")
        if "cuda" in steps:
            result.gpu = check_gpu(config, env)
            result.steps.append("cuda")
            if not result.gpu.ok:
                first = next(f for f in result.gpu.findings if f.fatal)
                raise GpuError(first.problem, hint=first.fix)
        if "book" in steps and plan.book is not None and plan.book.enabled:
            result.book = book(config, plan)
            result.steps.append("book")
        overlapped = start_cache(config, plan, env, console) if "cache" in steps else None
        try:
            if "data" in steps:
                result.data = stage(config, plan, overlapped.landed if overlapped is not None else None, console)
                result.steps.append("data")
                if not result.data.ok:
                    result.exit_code = 1
        except BaseException:  # Ctrl-C, TERM, a full disk: the cache's children end with the run, what they completed kept
            if overlapped is not None:
                overlapped.stop()
            raise
        if overlapped is not None:
            result.cache = CacheResult(chapters=tuple(overlapped.finish()))
            result.steps.append("cache")
            if not result.cache.ok:
                result.exit_code = 1
    except ProvisionError as exc:
        result.error = exc
        result.exit_code = exc.exit_code
    return result


def mirror(config: Config, plan: Plan, destination: str, *, dry_run: bool, console: Console | None = None) -> MirrorResult:
    """Fill a bucket (gs://BUCKET/PREFIX/) or a folder (Google Drive, a share) with the selected files, verified."""
    from .errors import ConfigError
    from .plan import missing_source_problem
    from .staging.mirror import mirror_for

    if destination.startswith("gs://") and len(destination.rstrip("/")) <= len("gs://"):
        raise ConfigError(f"--to {destination!r} names no bucket", hint="write it as gs://BUCKET/PREFIX/")
    if "://" in destination and not destination.startswith("gs://"):
        raise ConfigError(f"--to {destination!r} is neither a bucket nor a folder", hint="write gs://BUCKET/PREFIX/ or a folder such as /content/drive/MyDrive/luna16/")
    # a folder source that is not there yet is fine when it is the folder being filled: it is written here, not read
    missing = tuple(m for m in plan.data.missing_sources if os.path.abspath(m) != os.path.abspath(destination))
    problem = missing_source_problem(config, missing)
    if problem is not None:
        raise ConfigError(problem.message, hint=problem.hint)
    console = console or Console()
    progress = Progress(0, bar=False, console=console, silent=console.quiet)
    try:
        return mirror_for(config.data, plan.data, destination, emit=progress).run(dry_run)
    finally:
        progress.close()


def pin(config: Config, *, dry_run: bool) -> PinResult:
    """Read each selected archive's members from the sources and write them to ``<manifest>.members.yaml``
    (merged with what it pinned before), so staging can check members against the data set itself."""
    from .atomicfile import atomic_write_text
    from .config import configs_dir
    from .manifest import dump_pins, load_pins, manifest_path, pins_path
    from .staging.probe import pin_members

    manifest = load_manifest(config.data.dataset, configs_dir())
    path = pins_path(manifest_path(config.data.dataset, configs_dir()))
    found = pin_members(config, manifest)
    merged = {key: members for key, (_size, members) in load_pins(path, {f.key for f in manifest.files}).items()}
    changed = sorted(key for key, members in found.items() if merged.get(key) != members)
    merged.update(found)
    if not dry_run and changed:
        atomic_write_text(path, dump_pins(merged))
    return PinResult(str(path), dry_run, tuple(changed), {key: PinnedArchive(len(m), sum(x.size for x in m)) for key, m in found.items()})


def staged_selection(manifest: Manifest, subsets: tuple[int, ...] | str | None, root: Path) -> tuple[ManifestFile, ...]:
    """The files `status` and `verify` look at: the chosen subsets'; under ``fit`` (which the plan resolves by the free
    disk, less once data is staged) those staging has a record of, and the files of no subset (the CSVs), so that the
    subsets the disk left out are not counted as missing."""
    if subsets != FIT:
        return manifest.select(subsets)
    recorded, _ = load_records(work_dir(root) / "state.json")
    return tuple(f for f in manifest.files if f.subset is None or f.key in recorded)


def status(config: Config) -> StatusResult:
    """One row per selected file (missing, partial with percent, verified or extracted) and the book's
    chapter caches with their size on disk, so an old chapter's can be deleted. Writes nothing."""
    from .assets import chosen
    from .config import configs_dir

    manifest = load_manifest(config.data.dataset, configs_dir())
    root = Path(config.data.root)
    rows = status_rows(root, root / manifest.dir, staged_selection(manifest, config.data.subsets, root))
    assets = chosen(config)
    if assets is not None:  # chapter 15's checkpoints, in the book's p2ch15/
        rows += status_rows(assets.root, assets.target, assets.manifest.files)
    return StatusResult(tuple(rows), cache_sizes(root / "cache", cache_needs(config, root / manifest.dir)))


def status_rows(root: Path, target: Path, files: Sequence[ManifestFile]) -> list[FileRow]:
    statuses = file_statuses(root, [f.key for f in files], target) if root.is_dir() else {}
    rows = []
    for f in files:
        st = statuses.get(f.key)
        stage = st.stage if st else "missing"
        percent = round(100 * partial_bytes(root, f.key, target) / f.size, 1) if stage == "partial" and f.size else None
        rows.append(FileRow(f.key, stage, f.size, st.source if st else None, percent))
    return rows


def cache_needs(config: Config, luna_dir: Path) -> dict[str, tuple[int, int, bool]]:
    """Per chapter cache folder: (entries built, entries the staged scans need, whether that need is exact: counted in the
    book's candidates.csv, else estimated from LUNA16's average)."""
    from .book import cache as caching
    from .book.checkout import book_dir
    from .book.fixes import load_book_manifest
    from .config import configs_dir

    chapters = load_book_manifest(config.book.fixes, configs_dir()).cache
    staged = caching.staged_series(luna_dir)
    per_series = caching.candidates_per_series(book_dir(config.book.dir, config.data.root), set(staged))
    needs = {}
    for chapter in chapters:
        built = caching.read_built(Path(config.data.root) / "cache" / chapter.scope)
        done = sum(n for uid, n in built.items() if uid in staged)
        if per_series is not None:
            needed = sum(per_series.get(uid, 0) for uid in staged) + len(chapter.per_series) * len(staged)
        else:
            needed = round(chapter.entries_per_scan * len(staged))
        needs[chapter.scope] = (done, needed, per_series is not None)
    return needs


def cache_sizes(cache_root: Path, needs: Mapping[str, tuple[int, int, bool]] | None = None) -> tuple[CacheRow, ...]:
    """The book's caches (data-unversioned/cache/part2chNN_raw, one per chapter), their bytes on disk, and (``needs``)
    the entries `provision cache` built of those the staged scans need."""
    from .book.cache import bytes_on_disk

    folders = sorted(p for p in cache_root.glob("*") if p.is_dir()) if cache_root.is_dir() else []
    return tuple(CacheRow(folder.name, str(folder), bytes_on_disk(folder), *(needs or {}).get(folder.name, (None, None, None)))
                 for folder in folders)


def verify(config: Config, *, full: bool) -> VerifyResult:
    """Check staged files: member presence and sizes, and with ``full`` their CRCs (or md5 for plain files).

    Damaged members are recorded, so the next ``stage`` rewrites just those.
    """
    from .assets import chosen
    from .config import configs_dir

    manifest = load_manifest(config.data.dataset, configs_dir())
    root = Path(config.data.root)
    rows = verify_rows(root, root / manifest.dir, staged_selection(manifest, config.data.subsets, root), full)
    assets = chosen(config)
    if assets is not None:  # chapter 15's checkpoints, in the book's p2ch15/
        rows += verify_rows(assets.root, assets.target, assets.manifest.files, full)
    return VerifyResult(tuple(rows), full)


def verify_rows(root: Path, target: Path, files: Sequence[ManifestFile], full: bool) -> list[VerifyRow]:
    """One row per file under ``root`` (its state) and ``target`` (where it lands); damaged members are recorded."""
    from .staging.archive.extract import crc_of
    from .staging.fetch import md5_of

    rows = []
    if not (work_dir(root) / "state.json").is_file():
        return [VerifyRow(f.key, "missing") for f in files]
    with run_lock(root):
        state = StateStore(root)
        inside = Inside(target)
        for f in files:
            rec = state.record(f.key) or FileRecord()
            missing: list[str] = []
            damaged: list[str] = []
            if rec.extracted:
                for name, (size, crc) in sorted(rec.members.items()):
                    path = inside.path(name)
                    if path is None:  # a link on the way leads out of the data folder: never read, written again by stage
                        damaged.append(name)
                        continue
                    try:
                        actual = os.stat(path).st_size  # through the link, for a subset linked from a copy
                    except OSError:
                        missing.append(name)
                        continue
                    # a copy's scans without pinned members have no CRC to compare: their size was checked against the header
                    if actual != size or (full and crc is not None and crc_of(path) != crc):
                        damaged.append(name)
                state.found_damaged(f.key, damaged)
                stage = rec.stage.value
            elif rec.verified:
                path = target / f.key
                stage = rec.stage.value
                if not path.exists():
                    missing.append(f.key)
                elif os.stat(path).st_size != rec.size or (full and md5_of(path) != rec.md5):
                    damaged.append(f.key)
                    state.unverified(f.key)
            else:
                stage = "missing"
            rows.append(VerifyRow(f.key, stage, tuple(missing), tuple(damaged)))
    return rows
