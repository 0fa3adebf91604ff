"""`provision book --smoke`: does Part 2 work here? Each entry point of the book, for a few batches.

The runs happen in a *view* of the book (``<data.root>/.provision/smoke/``): links to the book's
packages, its annotation CSVs and shipped models, links to a few staged CT series, a
``candidates.csv`` cut down to those series, and a cache, models and tensorboard folder of its own.
So the runs read the reader's staged scans and the book's own code and CSVs, but never fill the
reader's cache or models folder, and the unfiltered annotations still name scans that are not
on disk (as they do when only some subsets are staged). Each entry point runs in a child process
(``smoke_child.py``, with epochs capped) with a deadline; the GPU is used when torch sees one.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import SmokeConfig
from ..errors import BookError
from .checkout import DATA_FOLDER
from .fixes import SmokeEntry

log = logging.getLogger(__name__)
CHILD = Path(__file__).with_name("smoke_child.py")
CODE_FOLDERS = ("util",)  # besides every chapter's package (p2ch*): the first edition's p2ch10-p2ch14, the second's p2ch12-p2ch15
CSV_FOLDER = Path("data") / "part2" / "luna"
MAX_SERIES = 10  # the book validates on every tenth series (sorted), so up to ten keeps the first one as the only validation series
Emit = Callable[[str], None]


@dataclass
class SmokeRow:
    name: str
    outcome: str  # ok | failed | skipped
    seconds: float = 0.0
    last_line: str = ""
    log: str = ""


@dataclass
class SmokeResult:
    rows: list[SmokeRow]
    device: str
    python: str
    series: list[str]
    view: str
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.outcome == "ok" for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "device": self.device, "python": self.python, "series": self.series, "view": self.view,
                "elapsed_s": round(self.elapsed_s, 1), "notes": self.notes, "rows": [asdict(r) for r in self.rows]}


# ---------------------------------------------------------------- choosing the scans (pure)


def staged_series(luna_dir: Path) -> dict[str, tuple[Path, Path]]:
    """uid -> (.mhd, .raw) of every complete scan staged under ``luna_dir``/subsetN/."""
    found = {}
    for mhd in sorted(glob.glob(str(luna_dir / "subset*" / "*.mhd"))):
        raw = Path(mhd[: -len(".mhd")] + ".raw")
        if raw.is_file():
            found[Path(mhd).stem] = (Path(mhd), raw)
    return found


def nodule_kinds(book: Path) -> dict[str, set[bool]]:
    """uid -> the malignancy of its annotated nodules (the book's annotations_with_malignancy.csv)."""
    kinds: dict[str, set[bool]] = defaultdict(set)
    path = book / CSV_FOLDER / "annotations_with_malignancy.csv"
    try:
        with open(path, newline="") as fh:
            for row in list(csv.reader(fh))[1:]:
                kinds[row[0]].add(row[5] == "True")
    except (OSError, IndexError) as exc:
        raise BookError(f"cannot read {path}: {exc}", hint="run `provision book` to get the book's code (with its CSVs) first") from None
    return kinds


def select_series(on_disk: Sequence[str], kinds: dict[str, set[bool]], count: int) -> list[str]:
    """Up to ``count`` staged series, in UID order, that every chapter can train and validate on.

    The book validates on the first series of the sorted list: it gets one with both benign and
    malignant nodules (chapter 14's malignancy metrics divide by each count); the rest are chosen
    so that training sees both kinds too, then filled with other annotated series.
    """
    count = max(2, min(count, MAX_SERIES))
    annotated = sorted(uid for uid in on_disk if kinds.get(uid))
    mixed = [uid for uid in annotated if kinds[uid] >= {True, False}]
    if not annotated:
        return sorted(on_disk)[:count]
    first = mixed[0] if mixed else annotated[0]
    later = [uid for uid in annotated if uid > first]
    chosen, missing = [first], {True, False}
    for uid in later:  # first the series that bring a kind training still lacks
        if len(chosen) < count and kinds[uid] & missing:
            chosen.append(uid)
            missing -= kinds[uid]
    chosen += [uid for uid in later if uid not in chosen][: count - len(chosen)]
    return sorted(chosen)


def cut_candidates(source: Path, dest: Path, series: set[str], negatives: int) -> int:
    """The book's candidates.csv for ``series`` only: every nodule, and the first ``negatives`` others of each."""
    kept = 0
    negatives_seen: dict[str, int] = defaultdict(int)
    with open(source, newline="") as fh, open(dest, "w", newline="") as out:
        reader, writer = csv.reader(fh), csv.writer(out)
        writer.writerow(next(reader))
        for row in reader:
            if row[0] not in series:
                continue
            if row[4] != "1":
                negatives_seen[row[0]] += 1
                if negatives_seen[row[0]] > negatives:
                    continue
            writer.writerow(row)
            kept += 1
    return kept


# ---------------------------------------------------------------- the view


def build_view(view: Path, book: Path, scans: dict[str, tuple[Path, Path]], chosen: Sequence[str], negatives: int) -> None:
    """A fresh view: the book's code, CSVs and models linked, the chosen scans linked, the rest its own."""
    code = [*CODE_FOLDERS, *sorted(p.name for p in book.glob("p2ch*") if p.is_dir())]
    for name in ("data", DATA_FOLDER, "runs", *CODE_FOLDERS, *sorted(p.name for p in view.glob("p2ch*"))):
        path = view / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
    view.mkdir(parents=True, exist_ok=True)
    for name in code:
        if (book / name).is_dir():
            os.symlink(book / name, view / name, target_is_directory=True)
    csv_dir = view / CSV_FOLDER
    csv_dir.mkdir(parents=True)
    for name in ("annotations.csv", "annotations_with_malignancy.csv"):
        os.symlink(book / CSV_FOLDER / name, csv_dir / name)
    candidates = book / CSV_FOLDER / "candidates.csv"
    if not candidates.is_file():
        raise BookError(f"{candidates} is missing", hint="the book's checkout is incomplete: run `provision book` (or git checkout -- data) in it")
    cut_candidates(candidates, csv_dir / "candidates.csv", set(chosen), negatives)
    os.symlink(book / "data" / "part2" / "models", view / "data" / "part2" / "models", target_is_directory=True)
    for uid in chosen:
        mhd, raw = scans[uid]
        subset_dir = view / DATA_FOLDER / "part2" / "luna" / mhd.parent.name
        subset_dir.mkdir(parents=True, exist_ok=True)
        os.symlink(mhd, subset_dir / mhd.name)
        os.symlink(raw, subset_dir / raw.name)
    (view / DATA_FOLDER / "cache").mkdir()


def resolve_args(args: Sequence[str], models: Path) -> tuple[list[str], str | None]:
    """Replace ``{model:GLOB}`` with the newest model saved under ``models``; (args, what is missing)."""
    resolved = []
    for arg in args:
        head, sep, rest = arg.partition("{model:")
        if not sep:
            resolved.append(arg)
            continue
        pattern, _, tail = rest.partition("}")
        matches = sorted(glob.glob(str(models / pattern)), key=os.path.getmtime)
        if not matches:
            return [], f"no model {pattern} was saved by an earlier entry point"
        resolved.append(head + matches[-1] + tail)
    return resolved, None


# ---------------------------------------------------------------- running


def run_smoke(book: Path, luna_dir: Path, entries: Sequence[SmokeEntry], cfg: SmokeConfig, python: str, view: Path,
              emit: Emit | None = None) -> SmokeResult:
    """Run every entry point in order on a view of the staged scans; a failure does not stop the others."""
    say = emit or (lambda line: None)
    started = time.monotonic()
    scans = staged_series(luna_dir)
    if not scans:
        raise BookError(f"no CT scans are staged under {luna_dir}", hint="run `provision stage` (or `provision up`) first")
    chosen = select_series(list(scans), nodule_kinds(book), cfg.series)
    build_view(view, book, scans, chosen, cfg.negatives_per_series)
    logs = view / "logs"
    logs.mkdir(exist_ok=True)
    notes = [f"{len(chosen)} of {len(scans)} staged CT series, from {len({scans[u][0].parent.name for u in chosen})} subset folder(s)"]
    rows: list[SmokeRow] = []
    devices: set[str] = set()
    for entry in entries:
        args, missing = resolve_args(entry.args, view / DATA_FOLDER / "part2" / "models")
        if missing:
            rows.append(SmokeRow(entry.name, "skipped", last_line=missing))
            say(f"smoke: {entry.name}: skipped ({missing})")
            continue
        say(f"smoke: {entry.name} ...")
        row, device = _run_entry(entry, args, cfg, python, view, logs)
        rows.append(row)
        if device:
            devices.add(device)
        say(f"smoke: {entry.name}: {row.outcome} in {row.seconds:.1f} s" + (f" ({row.last_line})" if row.outcome != "ok" else ""))
    shutil.rmtree(view / DATA_FOLDER / "cache", ignore_errors=True)  # the smoke's cache is of no use to the reader
    device = "cuda" if "cuda" in devices else ("cpu" if devices else "unknown")
    return SmokeResult(rows, device, python, chosen, str(view), time.monotonic() - started, notes)


EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit|Failure)\b(:|$)")


def error_line(lines: Sequence[str]) -> str:
    """The exception's own line of a traceback (its message may go on over more lines), else the last line."""
    found = next((line for line in reversed(lines) if EXCEPTION_LINE.match(line)), None)
    return (found or (lines[-1] if lines else "")).strip()


def child_command(entry: SmokeEntry, args: Sequence[str], cfg: SmokeConfig, python: str) -> list[str]:
    command = [python, str(CHILD), "--samples", str(cfg.samples)]
    if entry.sample:
        return [*command, "--sample", entry.sample]
    if entry.notebook:
        return [*command, "--notebook", entry.notebook]
    return [*command, "--module", str(entry.module), "--", "--num-workers", str(cfg.num_workers), *args]


def _end_session(proc: subprocess.Popen[bytes]) -> None:
    """The child and every process of its session (the DataLoader's workers), killed; gone already is as good."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _run_entry(entry: SmokeEntry, args: Sequence[str], cfg: SmokeConfig, python: str, view: Path, logs: Path) -> tuple[SmokeRow, str | None]:
    log_path = logs / (entry.name.replace(" ", "_").replace(",", "") + ".log")
    start = time.monotonic()
    with open(log_path, "w") as out:
        try:
            # a session of its own, so a timeout also ends the DataLoader's worker processes
            proc = subprocess.Popen(child_command(entry, args, cfg, python), cwd=view, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"})
        except OSError as exc:
            return SmokeRow(entry.name, "failed", 0.0, f"cannot start {python}: {exc.strerror}", str(log_path)), None
        try:
            code = proc.wait(timeout=cfg.timeout_s)
        except subprocess.TimeoutExpired:
            _end_session(proc)
            return SmokeRow(entry.name, "failed", time.monotonic() - start, f"timed out after {cfg.timeout_s:.0f} s", str(log_path)), None
        except BaseException:  # Ctrl-C or TERM: its session has no terminal to be told, so it is ended here, workers and all
            _end_session(proc)
            raise
    seconds = time.monotonic() - start
    lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    device = None
    if lines:
        try:
            device = json.loads(lines[-1]).get("device")
        except (ValueError, AttributeError):
            device = None
    if code != 0:
        return SmokeRow(entry.name, "failed", seconds, error_line(lines) or f"exit {code}", str(log_path)), device
    return SmokeRow(entry.name, "ok", seconds, "", str(log_path)), device
