"""The book's part of the reports: its checkout and fixes in the plan, the book step, the smoke table, and the cache
(per chapter in the plan, and what `provision cache` built)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .disk import gb
from .progress import duration
from .results import BookResult, CacheResult

if TYPE_CHECKING:  # annotations only
    from .book.smoke import SmokeResult
    from .cacheplan import CachePlan, ChapterCache
    from .planvalues import BookPlan


def book_plan_text(book: BookPlan, full: bool = True) -> str:
    """The book step of the plan: the checkout, how it reaches the data, and each fix (``full``: with its reason)."""
    from .book.checkout import describe

    step = "`provision up` runs it" if book.enabled else "not part of `provision up` in this profile: run `provision book`"
    lines = [f"book         {book.dir}: {describe(book.head, book.ref)} ({step})"]
    if book.edition:
        lines.append(f"  edition    {book.edition}; {book.other_edition}")
    if book.clone:
        lines.append(f"  clone      {book.repo} at {book.ref[:10]}" + (" (staged data already there is kept)" if book.data_link == "inside" else ""))
    link = {"inside": "data.root is its data-unversioned/", "linked": "data-unversioned/ links to data.root",
            "link": "data-unversioned/ will link to data.root", "conflict": "data-unversioned/ is something else: the book would not find the data"}
    lines.append(f"  data       {link[book.data_link]}")
    lines.append(f"  fixes      {len(book.fixes)} from {book.manifest} (`git diff` in the checkout shows them; `provision book --undo` takes them back)")
    for f in book.fixes:
        lines.append(f"    {f.state:<12} {f.file:<28} {f.id}" + (f": {f.why}" if full else ""))
        if f.problem:
            lines.append(f"    {'':<12} {f.problem}")
    return "\n".join(lines)


def book_text(result: BookResult) -> str:
    head = f"{'cloned' if result.cloned else 'checkout'} {result.dir} at {(result.commit or '?')[:10]}"
    lines = [f"book         {head}" + (f" from {result.repo}" if result.cloned else "")]
    lines += [f"  {row.result:<16} {row.file:<28} {row.id}" for row in result.fixes]
    changed = result.changed_files
    lines.append(f"{'restored' if result.undo else 'changed'} {len(changed)} file(s)" + (f": {', '.join(changed)}" if changed else "; nothing to do") +
                 ("" if result.undo else f"; run Part 2 from {result.dir} (its data: {result.data})"))
    return "\n".join(lines)


def smoke_text(result: SmokeResult) -> str:
    """The smoke table: entry point, result, seconds, and the error's last line."""
    width = max(len(r.name) for r in result.rows) if result.rows else 10
    lines = [f"{'entry point':<{width}}  result   seconds  error"]
    for r in result.rows:
        lines.append(f"{r.name:<{width}}  {r.outcome.upper() if r.outcome != 'ok' else 'ok':<7} {r.seconds:8.1f}  {r.last_line}")
    device = {"cuda": "on the GPU", "cpu": "on the CPU (no GPU visible to torch)"}.get(result.device, "device unknown")
    lines.append(f"{'all entry points ran' if result.ok else 'SOME ENTRY POINTS FAILED'} {device} in {result.elapsed_s:.0f} s; "
                 f"python {result.python}; {'; '.join(result.notes)}")
    lines.append(f"logs: {result.view}/logs/")
    return "\n".join(lines)


def cache_plan_lines(cache: CachePlan | None, subsets: int) -> list[str]:
    """The book's cache per chapter: entries, one entry's measured bytes, the disk a subset takes, and (where measured
    on this machine) how long its build and one training epoch take for the chosen subsets."""
    if cache is None or not cache.chapters:
        return []
    lines = ["", f"cache        {cache.path}: {cache.at_once}" + (f" ({cache.fs_type})" if cache.fs_type else "")]
    for c in cache.chapters:
        mark = "  <- in the reserve" if c.chapter in cache.together and not cache.set_by_hand else ""
        how = "compressed by the book's cache fixes" if c.compressed else "stored raw, as the book does without its cache fixes"
        lines.append(f"  chapter {c.chapter}: {c.entries_per_subset:,} entries a subset x {c.entry_bytes / 1e3:.1f} kB ({how}) = "
                     f"{gb(c.bytes_per_subset)} a subset{mark}")
        if c.build_s_per_subset is not None or c.epoch_s_per_subset is not None:
            lines.append(f"    {chapter_times(c, subsets)}")
    if not any(c.build_s_per_subset is not None or c.epoch_s_per_subset is not None for c in cache.chapters):
        lines.append("  times: not measured on this machine yet (`provision cache` measures a cache build, "
                     "`provision book --smoke` a training epoch; the plan then says what each chapter costs)")
    return lines


def chapter_times(c: ChapterCache, subsets: int) -> str:
    """How long the chapter's cache and one epoch take for these subsets on this machine, from what was measured here."""
    build = f"cache build ~{duration(c.build_s_per_subset * subsets)}" if c.build_s_per_subset is not None else \
        "cache build not measured yet"
    epoch = f"one epoch ~{duration(c.epoch_s_per_subset * subsets + c.epoch_fixed_s)}" if c.epoch_s_per_subset is not None else \
        "one epoch not measured yet"
    return f"{build}; {epoch}" + (f" (measured here: {c.measured_on})" if c.measured_on else "") + f", for {subsets} subset(s)"


def cache_text(result: CacheResult) -> str:
    """Each chapter's cache: series complete of those staged, entries written now, bytes on disk, failures."""
    lines = [f"dropped chapter {d.chapter}'s cache: {gb(d.bytes)} freed ({d.path})" if d.existed
             else f"chapter {d.chapter} has no cache to drop ({d.path})" for d in result.dropped]
    for c in result.chapters:
        if c.built == 0 and not c.failed:
            lines.append(f"cache ch{c.chapter}: complete for the {c.series} staged series; nothing to do ({gb(c.bytes)} in {c.path})")
            continue
        lines.append(f"cache ch{c.chapter}: {c.complete_before + c.built} of {c.series} series ({c.built} built now: {c.entries:,} entries in "
                     f"{c.seconds:.0f} s), {gb(c.bytes)} in {c.path}")
        lines += [f"  FAILED {f['subset']}/{f['series']}: {f['error']}" for f in c.failed]
    if not result.ok:
        lines.append("some series could not be cached (above); the others are, and a rerun tries those again. A scan that "
                     "cannot be read is damaged: `provision verify --full` finds it and `provision stage` unpacks it again")
    return "\n".join(lines)
