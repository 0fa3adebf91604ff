"""The Plan: every decision of a run, computed from the config, the manifest and facts, without side effects.

:mod:`provision.facts` does the (read-only) looking around; ``make_plan`` is a pure function of
its arguments. ``provision plan`` prints the result; ``provision up`` carries it out.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

from .cacheplan import LUNA_SCANS_PER_SUBSET, CachePlan, plan_cache
from .config import Config
from .disk import GB, DiskItem, DiskPlan, DiskRules, gb, plan_disk
from .environment import FsFacts
from .install import InstallPlan, TorchIndex, index_options, plan_install, read_requirements, target_python, torch_index
from .manifest import FIT, Manifest, ManifestFile, format_subsets
from .planvalues import (  # noqa: E402 - the values this planner fills in, re-exported for its callers
    KAGGLE_WORKING,
    KAGGLE_WORKING_BYTES,
    BookFacts,
    BookPlan,
    CopyFacts,
    DataPlan,
    Facts,
    FileLocation,
    FilePlan,
    FixPlan,
    GpuExpectations,
    Plan,
    Problem,
    RemoteFacts,
    WayPlan,
)
from .schema import did_you_mean
from .sources import Source
from .staging.state import FileStatus
from .torch_wheels import INDEX_BASE, choose, gpus_from_smi
from .ways import choose as choose_way
from .ways import plan_ways, read_ahead_chunks, streams_at_once


def make_plan(config: Config, manifest: Manifest, facts: Facts) -> Plan:
    """Compute the whole plan from its inputs. Pure: reads and writes nothing. With ``data.subsets: fit``, the subsets
    are as many as fit, from the lowest, with every reserve counted (the book's cache too)."""
    plan = _make_plan(config, manifest, facts)
    if config.data.subsets != FIT:
        return plan
    disk = plan.disk[0]
    every = format_subsets(manifest.subsets)
    if disk.fits or not disk.fitting_subsets:
        why = f"all of {every} fit" if disk.fits else "not even one subset fits"
        return replace(plan, data=replace(plan.data, subsets_reason=f"data.subsets is fit: {why}"))
    chosen = replace(config, data=replace(config.data, subsets=disk.fitting_subsets))
    fitted = _make_plan(chosen, manifest, facts)
    fitting = format_subsets(disk.fitting_subsets)
    left_out = format_subsets(tuple(n for n in manifest.subsets if n not in disk.fitting_subsets))
    where = disk.path if disk.path == disk.probe else f"{disk.path} (measured at {disk.probe})"
    note = (f"staging subsets {fitting} of {every}, the ones that fit: all of them need {gb(disk.needed_bytes)} free at {where}, "
            f"with the book's cache, and {gb(disk.free_bytes)} is free, so subsets {left_out} are left out. To stage all of them, "
            f"point --root at a disk with {gb(disk.needed_bytes)} free (e.g. --root /BIG/dlwpt-code/data-unversioned: the book's code goes "
            "in the folder above it), or make that much room here, and run again with --subsets all, which refuses rather than stage fewer")
    return replace(fitted, data=replace(fitted.data, subsets_reason=f"data.subsets is fit: {fitting} of {every} "
                                                                   f"fit in {gb(disk.free_bytes)} free, with the book's cache",
                                        subsets_left_out=note))


def _make_plan(config: Config, manifest: Manifest, facts: Facts) -> Plan:
    from packaging.specifiers import SpecifierSet

    env = facts.environment
    python_ok = SpecifierSet(config.python).contains(env.python_version, prereleases=True)
    assets = plan_assets(facts)
    together = assets_items(facts, assets, same_disk=True)
    data, disk, cache, archive_way = plan_staging(config, manifest, facts, together)
    book = plan_book(config, facts.book) if facts.book is not None else None
    problems = []
    if not python_ok:
        problems.append(Problem("preflight", f"Python {env.python_version} does not satisfy the profile's python: '{config.python}'",
                                "use a newer Python (e.g. python3.11 -m venv .venv) and run again from it"))
    problem = missing_source_problem(config, data.missing_sources)
    problems += [problem] if problem else []
    problems += staging_problems(config, facts, data, disk, cache, archive_way, together)
    apart = assets_disk(facts, assets)
    if apart is not None and not apart.fits:
        problems.append(Problem("data", f"not enough disk space at {apart.path} for chapter 15's checkpoints: they need "
                                        f"{gb(apart.needed_bytes)} free but only {gb(apart.free_bytes)} is free",
                                "free some space there, or name fewer in book.sam (vit_b is the smallest), or set book.extras: false"))
    if book is not None and book.enabled:
        problems += book_problems(book)
    return Plan(
        profile=config.name,
        config_files=config.files,
        environment=env,
        python_ok=python_ok,
        python_requirement=config.python,
        install=plan_requirements(config, facts),
        gpu=GpuExpectations(config.cuda.required, config.cuda.min_memory_gb, config.cuda.min_compute_capability),
        data=data,
        disk=(disk,) if apart is None else (disk, apart),
        problems=tuple(problems),
        book=book,
        cache=cache,
        assets=assets,
    )


def plan_assets(facts: Facts) -> DataPlan | None:
    """Chapter 15's checkpoints, planned as a data set of their own (their sources, their stages; provision/assets.py)."""
    if facts.assets is None:
        return None
    chosen = facts.assets.assets
    return plan_data(chosen.config, chosen.manifest, replace(facts, statuses=facts.assets.statuses, remote={}, copies={}))


def assets_items(facts: Facts, assets: DataPlan | None, *, same_disk: bool) -> list[DiskItem]:
    """The checkpoints' bytes still to write, for the disk plan of the data when they go to the same filesystem
    (``same_disk``), or for one of their own."""
    if facts.assets is None or assets is None or (facts.assets.fs.device == facts.data_fs.device) != same_disk:
        return []
    return [disk_item(f) for f in assets.files]


def assets_disk(facts: Facts, assets: DataPlan | None) -> DiskPlan | None:
    """The checkpoints' disk plan when they go to another filesystem than the data (a book.dir elsewhere)."""
    items = assets_items(facts, assets, same_disk=False)
    if facts.assets is None or not items:
        return None
    fs = facts.assets.fs
    return plan_disk(items, path=fs.path, probe=fs.probe, free_bytes=fs.free_bytes,
                     rules=DiskRules(reserve_bytes=0, margin_bytes=0, keep_archives=False, files_in_flight=1))


def plan_requirements(config: Config, facts: Facts) -> InstallPlan:
    """What to install, with which command, from which index; and the venv to make first."""
    from .install import choose_installer

    install = plan_install(
        read_requirements(config.requirements.files, config.requirements.packages),
        installed=facts.installed,
        skip_satisfied=config.requirements.skip_satisfied,
        installer=choose_installer(config.requirements.installer),
        target_python=target_python(config.requirements.venv, facts.environment.python_executable),
        torch_from=lambda requirement: torch_index(config.requirements.torch_index, lambda: auto_torch_index(facts, requirement)),
        environ=facts.environ,
        options=index_options(config.requirements.find_links, config.requirements.no_index),
    )
    if config.requirements.venv and not facts.target_exists:
        install = replace(install, create_venv=config.requirements.venv)
    return install


def plan_staging(config: Config, manifest: Manifest, facts: Facts, more: Sequence[DiskItem] = ()) -> tuple[DataPlan, DiskPlan, CachePlan, bool]:
    """Every staging decision: the files and their sources, the way (mode, files and ranges at once) that fits, the
    disk it needs (with ``more`` written to the same disk: chapter 15's checkpoints), the cache it keeps room for; and
    whether that way is archive mode (a stream might fit instead)."""
    data = plan_data(config, manifest, facts)
    cache = cache_plan(config, manifest, facts)
    connections = connections_to(config, data)
    ways = plan_ways([disk_item(f) for f in data.files] + list(more), disk_rules(config, stream=False, cache_bytes_per_subset=cache.bytes_per_subset),
                     config.data.mode, config.data.stream_ranges, path=config.data.root, probe=facts.data_fs.probe,
                     free_bytes=facts.data_fs.free_bytes, connections=connections, cores=facts.cores,
                     landing=config.data.unpack_while_downloading)
    way, reason = choose_way(config.data.mode, ways, any(f.unpack for f in data.files))
    fastest = min(w.seconds for w in ways) or 1.0
    at_once = streams_at_once(connections, way.stream_ranges, facts.cores) if way.mode == "stream" else max(1, way.files_in_flight)
    chunk, chunks = read_ahead_chunks(config.data.stream_read_ahead_mb << 20, config.data.segment_mb << 20, connections)
    read_ahead = chunk * chunks if way.mode == "stream" and way.stream_ranges > 1 else 0
    data = replace(data, mode=way.mode, mode_reason=reason, files_in_flight=way.files_in_flight, stream_ranges=way.stream_ranges,
                   files_at_once=at_once, stream_read_ahead_bytes=read_ahead, stream_chunk_bytes=chunk if read_ahead else 0,
                   ways=tuple(WayPlan(w.label, w.mode, w.files_in_flight, w.stream_ranges, w.disk.needed_bytes, w.fits,
                                      round(w.seconds / fastest, 2), w is way) for w in ways))
    return data, way.disk, cache, way.mode == "archive"


def staging_problems(config: Config, facts: Facts, data: DataPlan, disk: DiskPlan, cache: CachePlan, archive_way: bool,
                     more: Sequence[DiskItem] = ()) -> list[Problem]:
    """What stops the data and cache steps: an unusable data.root, too little disk, Kaggle's output limit, a network cache."""
    problems = []
    if facts.root_problem:
        problems.append(Problem("data", f"data.root cannot hold the data: {facts.root_problem}", "point data.root (--root) at a folder on a writable disk"))
    elif not disk.fits:
        streaming = disk_for(config, data.files, facts.data_fs, stream=True, cache_bytes_per_subset=cache.bytes_per_subset,
                             more=more) if archive_way else None
        problems.append(disk_problem(disk, streaming, cache))
    elif facts.environment.kind == "kaggle" and Path(config.data.root).is_relative_to(KAGGLE_WORKING) and disk.needed_bytes > KAGGLE_WORKING_BYTES:
        problems.append(Problem(
            "data", f"{KAGGLE_WORKING} keeps at most {KAGGLE_WORKING_BYTES // GB} GB (Kaggle's output limit; the disk does not show it): "
                    f"staging into {config.data.root} needs {gb(disk.needed_bytes)}",
            "stage on the scratch disk instead: --root /kaggle/tmp/dlwpt-code/data-unversioned (the kaggle profile's default)",
        ))
    if cache.problem:
        problems.append(Problem("cache", cache.problem, "put data.root on this machine's own disk (on Colab: under /content; on a VM: "
                                "its boot or local SSD), where the book's code reads its data and writes its cache; keep archives "
                                "on the share instead: provision mirror --to DIR/, then stage from it"))
    return problems


SOURCE_NAMES = ("zenodo", "kaggle")


def missing_source_problem(config: Config, missing: tuple[str, ...]) -> Problem | None:
    """A folder source that is no folder: with no name, URL or folder it can be, it is a typo (exit 2), or a folder not
    mounted; either way nothing can come from it, and the plan says so instead of trying it for every file."""
    indexes = [i for i, s in enumerate(config.data.sources) if s.kind == "local" and s.location in missing]
    if not indexes:
        return None
    said = "; ".join(f"data.sources[{i}] {config.data.sources[i].location} is no folder here"
                     f"{did_you_mean(os.path.basename(config.data.sources[i].location.rstrip('/')), SOURCE_NAMES)}" for i in indexes)
    return Problem("data", f"{said}, nor one of the source names ({', '.join(SOURCE_NAMES)}) or a URL",
                   "fix it in data.sources (or --set 'data.sources=[...]'): zenodo, kaggle, kaggle:DIR, unpacked:DIR, https://HOST/DIR/, "
                   "gs://BUCKET/PREFIX/, or a folder that exists: mount it first (on Colab: drive.mount), or fill it with "
                   "provision mirror --to DIR", exit_code=2)


def plan_book(config: Config, found: BookFacts) -> BookPlan:
    """The book step's decisions: clone or not, how the data is reached, each fix's state."""
    if found.checkout.head is None:
        fixes = tuple(FixPlan(f.id, f.file, "after clone", f.why) for f in found.manifest.fixes)
    else:
        fixes = tuple(FixPlan(f.id, s.file, s.state, f.why, s.problem) for s in found.states for f in s.fixes)
    from .book import editions

    chosen, found_number = editions.of(config.book), config.book.found_edition
    other = editions.other(chosen)
    return BookPlan(config.book.enabled, found.checkout.dir, config.book.repo, config.book.ref, found.checkout.head,
                    found.checkout.data_link, fixes, found.manifest.path, found.checkout.foreign,
                    edition=f"{chosen.label}, from {config.book.edition_from}",
                    found_edition=editions.EDITIONS[found_number].label if found_number not in (None, chosen.number) else "",
                    other_edition=f"--edition {other.number} (or book.edition: {other.number}) for {other.label}")


def book_problems(book: BookPlan) -> list[Problem]:
    """What would stop the book step, found before anything is written."""
    problems = []
    if book.foreign:
        problems.append(Problem("book", f"{book.dir} is not a checkout of the book's code but holds other files: {', '.join(book.foreign[:5])}",
                                "move them away, or set book.dir to an empty folder (data.root is then linked into it)"))
    if book.found_edition:
        problems.append(Problem("book", f"{book.dir} holds {book.found_edition}, and the profile asks for {book.edition.split(', from ')[0]}",
                                f"keep working with the checkout: {book.other_edition.split(' for ')[0]}; or set book.dir to another folder "
                                "for this edition (the staged data can stay where it is: data.root is linked into it)"))
    if book.data_link == "conflict":
        problems.append(Problem("book", f"{book.dir}/data-unversioned exists and is not data.root: the book's code would not find the staged data",
                                "set data.root to that folder, or move it away so that a link to data.root can take its place"))
    broken = [f for f in book.fixes if f.state in ("mismatch", "missing")]
    if broken:
        problems.append(Problem("book", "the book's fixes do not match its code: " + "; ".join(dict.fromkeys(f.problem for f in broken)),
                                "check book.ref (the checkout is at another commit) or the fixes file (book.fixes)"))
    edited = sorted({f.file for f in book.fixes if f.state == "edited"})
    if edited:
        problems.append(Problem("book", f"files the fixes would change have your own edits: {', '.join(edited)}",
                                f"they are never overwritten; to start over from the book's version: git -C {book.dir} checkout -- {' '.join(edited)}"))
    return problems


def auto_torch_index(facts: Facts, requirement: str) -> TorchIndex:
    """The wheel index that fits the GPUs, the driver and Python (see :mod:`provision.torch_wheels`)."""
    from packaging.requirements import Requirement as Parsed

    gpus, driver, cuda = gpus_from_smi(dict(facts.nvidia_smi) if facts.nvidia_smi else None)
    table = facts.wheels
    if table is None or (driver is None and cuda is None):
        return TorchIndex(INDEX_BASE + "cpu", "", "no NVIDIA driver found (nvidia-smi): CPU build")
    python = ".".join(facts.environment.python_version.split(".")[:2])
    choice = choose(table, gpus, driver, cuda, python, str(Parsed(requirement).specifier))
    return TorchIndex(choice.url, choice.torch_bound, choice.reason)


def file_url(source: Source, file: ManifestFile, zenodo_url: str) -> str:
    """The URL (or path) of ``file`` at ``source``."""
    if source.kind == "zenodo":
        if not file.record:
            raise ValueError(f"{file.key} has no Zenodo record in the manifest")
        return f"{zenodo_url.rstrip('/')}/records/{file.record}/files/{quote(file.key)}?download=1"
    if source.kind == "local":
        return os.path.join(source.location, file.key)
    if source.kind == "unpacked":
        raise ValueError("an unpacked copy's files are found by looking into it (see staging.copies)")
    return source.location + quote(file.key)


def plan_data(config: Config, manifest: Manifest, facts: Facts) -> DataPlan:
    root = Path(config.data.root)
    target = root / manifest.dir
    files = []
    for f in manifest.select(config.data.subsets):
        remote = facts.remote.get(f.key, RemoteFacts())
        size = f.size if f.size is not None else remote.size
        unpacked = f.unpacked_size if f.unpacked_size is not None else remote.unpacked_size
        estimated = f.unpack and unpacked is None and size is not None
        if estimated:
            unpacked = int(size * manifest.unpack_ratio)  # type: ignore[operator]
        status = facts.statuses.get(f.key, FileStatus(f.key, "missing"))
        locations = []
        for source in config.data.sources:
            if source.is_copy:
                copy = facts.copies.get(source.location, CopyFacts({}, {}))
                found = copy.subsets.get(f.subset) if f.unpack and f.subset is not None else copy.plain.get(f.key)
                if found:
                    locations.append(FileLocation("unpacked", found))
                continue
            try:
                locations.append(FileLocation(source.kind, file_url(source, f, config.data.zenodo_url)))
            except ValueError:
                continue  # e.g. zenodo for a file without a record
        lacking = any(s.is_copy for s in config.data.sources) and not any(loc.kind == "unpacked" for loc in locations)
        files.append(FilePlan(
            key=f.key,
            record=f.record,
            subset=f.subset,
            size=size,
            md5=f.md5 or remote.md5,
            unpack=f.unpack,
            unpacked_bytes=unpacked if f.unpack else None,
            unpacked_estimated=estimated,
            locations=tuple(locations),
            dest=str(target if f.unpack else target / f.key),
            stage=status.stage,
            partial_bytes=status.partial_bytes,
            unpacked_done_bytes=status.unpacked_done_bytes,
            bucket_status=remote.bucket_status,
            pinned=f.pinned,
            not_in_copies=lacking,
        ))
    return DataPlan(
        dataset=manifest.name,
        manifest=manifest.path,
        root=str(root),
        target_dir=str(target),
        mode=config.data.mode,
        subsets=config.data.subsets,
        sources=tuple(s.label for s in config.data.sources),
        files=tuple(files),
        connections=config.data.connections,
        files_in_flight=config.data.files_in_flight,
        keep_archives=config.data.keep_archives,
        missing_sources=facts.missing_folders,
    )


def disk_item(f: FilePlan) -> DiskItem:
    """Bytes still to be written for one file, given how far it already got."""
    size = f.size or 0
    if f.stage in ("extracted", "linked") or (f.stage == "verified" and not f.unpack) or f.from_copy:
        return DiskItem(f.key, f.subset, 0, 0, unpack=f.unpack)
    remaining = 0 if f.stage == "verified" else max(0, size - f.partial_bytes)
    unpacked = max(0, (f.unpacked_bytes or 0) - f.unpacked_done_bytes) if f.unpack else 0  # what an interrupted unpack wrote is there
    return DiskItem(
        f.key, f.subset, remaining, unpacked,
        unpack=f.unpack, unpacked_estimated=f.unpacked_estimated, size_known=f.size is not None,
    )


def cache_plan(config: Config, manifest: Manifest, facts: Facts) -> CachePlan:
    """The book's cache: its measured size per chapter, compressed when the book's cache fixes are (or will be) applied."""
    chapters = facts.book.manifest.cache if facts.book is not None else ()
    disk_fix = next((s.state for s in facts.book.states if s.file == "util/disk.py"), None) if facts.book is not None else None
    compressed = disk_fix == "applied" or (config.book.enabled and disk_fix in (None, "to apply"))
    archives = [f for f in manifest.files if f.unpack and f.members]
    scans = sum(f.members or 0 for f in archives) / 2 / len(archives) if archives else LUNA_SCANS_PER_SUBSET
    return plan_cache(chapters, build=config.book.cache, compressed=compressed, scans_per_subset=scans, set_gb=config.data.cache_gb_per_subset,
                      path=str(Path(config.data.root) / "cache"), fs_type=facts.cache_fs_type, timings=facts.timings, cores=facts.cores)


def disk_rules(config: Config, stream: bool, cache_bytes_per_subset: int) -> DiskRules:
    return DiskRules(
        reserve_bytes=int(config.data.reserve_gb * GB),
        cache_bytes_per_subset=cache_bytes_per_subset,
        margin_bytes=int(config.data.margin_gb * GB),
        keep_archives=config.data.keep_archives,
        files_in_flight=config.data.files_in_flight,
        stream=stream,
    )


def disk_for(config: Config, files: tuple[FilePlan, ...], fs: FsFacts, stream: bool, cache_bytes_per_subset: int,
             more: Sequence[DiskItem] = ()) -> DiskPlan:
    """The disk plan for staging ``files`` (and ``more``) onto the filesystem ``fs`` in one mode."""
    return plan_disk([disk_item(f) for f in files] + list(more), path=config.data.root, probe=fs.probe, free_bytes=fs.free_bytes,
                     rules=disk_rules(config, stream, cache_bytes_per_subset))


def connections_to(config: Config, data: DataPlan) -> int:
    """Connections staging will really use: data.connections, or less where the first source's host is capped (Zenodo: 4)."""
    from urllib.parse import urlsplit

    first = next((loc for f in data.files for loc in f.locations[:1]), None)
    if first is None or first.kind not in ("http", "zenodo"):
        return config.data.connections
    return config.data.connections_to(urlsplit(first.url).hostname or "")


def disk_problem(disk: DiskPlan, stream: DiskPlan | None = None, cache: CachePlan | None = None) -> Problem:
    where = disk.path if disk.path == disk.probe else f"{disk.path} (measured at {disk.probe})"
    message = (
        f"not enough disk space at {where}: staging needs {gb(disk.needed_bytes)} free "
        f"but only {gb(disk.free_bytes)} is free ({gb(disk.shortfall_bytes)} short)"
    )
    ways = []
    if disk.fitting_subsets:
        ways.append(f"{disk.fitting_text()}: stage fewer with --subsets {format_subsets(disk.fitting_subsets)}")
    elif disk.fitting_subsets == ():
        ways.append(disk.fitting_text())
    if stream is not None and stream.fits:
        ways.insert(0, f"unpacking while downloading needs only {gb(stream.needed_bytes)}: use --set data.mode=stream")
    ways.append("point data.root (--root) at a bigger disk")
    if disk.fitting_without_reserve:
        ways.append(f"without the reserve, subsets {format_subsets(disk.fitting_without_reserve)} would fit "
                    "(but the book's cache then has no room: it grows with the subsets staged)")
    if disk.cache_bytes:
        per_subset = disk.cache_bytes / disk.subsets
        lower = (disk.cache_bytes - disk.shortfall_bytes) / disk.subsets / GB
        example = f", e.g. --set data.cache_gb_per_subset={lower:.1f}" if lower > 0.05 else ""
        ways.append(f"keep less room for the book's cache (now {gb(disk.cache_bytes)}: {per_subset / GB:.1f} GB for each of {disk.subsets} "
                    f"subsets, what one chapter's cache measures; data.cache_gb_per_subset sets it){example}")
        if cache is not None and cache.chapters and not any(c.compressed for c in cache.chapters) and not cache.set_by_hand:
            ways.append("let the book's cache fixes compress it, about 2.5x smaller: provision book (or book.enabled: true)")
    extra = disk.reserve_bytes - disk.cache_bytes
    if extra:
        lower_extra = int((extra - disk.shortfall_bytes) // GB)
        example = f", e.g. --set data.reserve_gb={lower_extra}" if lower_extra > 0 else ""
        ways.append(f"lower data.reserve_gb (now {extra / GB:g} GB kept free besides the cache){example}")
    if disk.estimated:
        ways.append("the unpacked size is an estimate; `provision plan --probe` reads the exact figure")
    return Problem("data", message, "; ".join(ways))
