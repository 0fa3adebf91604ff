"""`provision clean`: remove the staged data of some subsets, or all of it, and nothing else.

What goes is decided from the state records alone (``plan_clean``, which writes nothing): each recorded member of the
chosen files (and its archive's temporary files beside them: members held until the archive was vouched for), the
archive while the record says it is on disk, and the file's partial downloads. Each is checked before
it is named for removal and again before it is removed: a name that climbs out of the data set's folder, a folder on
the way that is a link leading elsewhere, or an entry that is not what staging made there (a link where it wrote a file,
a file where it linked a copy's scan, a folder) is left alone and said. A linked scan loses its link, never the file the
link leads to (a Kaggle input is read-only and not ours). Folders are removed only when emptied.
"""

from __future__ import annotations

import os
import stat
import zipfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .manifest import Manifest, ManifestFile, format_subsets, parse_subsets
from .staging.archive.members import TMP_SUFFIX, temporaries
from .staging.state import DamagedRecord, FileRecord, StateStore, partial_dir, read_json, run_lock, work_dir

PARTIAL_SUFFIXES = (".part", ".progress.json", ".stream.json")  # a file's partial download and its checkpoints


@dataclass(frozen=True)
class Removal:
    """One entry to remove: its path, what staging made there (file or link) and its bytes (a link's own: ~0)."""

    path: str
    kind: str  # file | link
    bytes: int
    key: str
    folder: str  # the folder it must lie in: the data set's, or the partial downloads'


@dataclass(frozen=True)
class CleanPlan:
    """What `provision clean` removes, what it leaves and why, and the records it then forgets."""

    root: str
    target: str
    subsets: str
    keys: tuple[str, ...]                  # the files whose records are forgotten
    removals: tuple[Removal, ...]
    refused: tuple[str, ...] = ()          # entries a record names that are left alone, with the reason
    done: bool = False
    folders_removed: tuple[str, ...] = field(default=())

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.removals)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bytes": self.bytes}


def chosen_files(manifest: Manifest, subsets_text: str | None) -> tuple[str, tuple[ManifestFile, ...]]:
    """The files ``--subsets`` names: ``all`` is every file of the data set (its CSVs too), numbers their archives only."""
    if subsets_text is None:
        raise ConfigError("clean needs --subsets: which subsets' staged data to remove",
                          hint="name them: provision clean --subsets 0-1 (or --subsets all for everything staged); --dry-run shows what would go")
    try:
        subsets = parse_subsets(subsets_text, "--subsets")
    except ValueError as exc:
        raise ConfigError(str(exc), hint="write e.g. --subsets 0-1, 0,2,5 or all", key="--subsets") from None
    if isinstance(subsets, str):
        raise ConfigError(f"--subsets {subsets_text} chooses by free disk, which says nothing of what to remove",
                          hint="name the subsets to remove: --subsets 0-1, or all", key="--subsets")
    if subsets is None:
        return "all", manifest.files
    manifest.select(subsets)  # an unknown subset number is refused by name
    return format_subsets(subsets), tuple(f for f in manifest.files if f.subset in set(subsets))


def plan_clean(root: Path, manifest: Manifest, subsets_text: str | None) -> CleanPlan:
    """What removing the chosen files' staged data takes; reads the state and the folder, writes nothing."""
    label, files = chosen_files(manifest, subsets_text)
    target = root / manifest.dir
    raw_records = _raw_records(root)
    refused: list[str] = []
    if not _inside(target, root):
        refused.append(f"{target} leads out of the data root {root} (a link): nothing under it is removed")
        return CleanPlan(str(root), str(target), label, (), (), tuple(refused))
    removals: list[Removal] = []
    keys: list[str] = []
    partial = partial_dir(root, target)
    for f in files:
        raw = raw_records.get(f.key)
        record = _record(raw)
        partials = [partial / f"{f.key}{suffix}" for suffix in PARTIAL_SUFFIXES]
        names = _recorded_names(f, record, target, partial)
        if record is None and isinstance(raw, dict) and isinstance(raw.get("members"), dict):
            names += [n for n in raw["members"] if isinstance(n, str) and n not in names]  # a damaged record: each name is judged
        for name in names:
            removal = _removal(target, name, f.key, "link" if record is not None and record.linked else "file", refused)
            if removal is not None:
                removals.append(removal)
        for held in _temporaries(target, names, f.key):  # members held until their archive was vouched for, and half-written ones
            removal = _removal(target, held, f.key, "file", [])
            if removal is not None:
                removals.append(removal)
        for path in partials:
            if os.path.lexists(path):
                removal = _removal(partial, path.name, f.key, "file", refused)
                if removal is not None:
                    removals.append(removal)
        if record is not None or any(r.key == f.key for r in removals):
            keys.append(f.key)
    return CleanPlan(str(root), str(target), label, tuple(keys), tuple(removals), tuple(refused))


def _raw_records(root: Path) -> dict[str, Any]:
    """The state file's records as they are, read only (a damaged state is set aside by staging, never by a dry run)."""
    path = work_dir(root) / "state.json"
    loaded = None if os.path.islink(path) else read_json(path)
    files = loaded.get("files") if isinstance(loaded, dict) else None
    return files if isinstance(files, dict) else {}


def _record(raw: Any) -> FileRecord | None:
    try:
        return FileRecord.from_json(raw) if raw is not None else None
    except DamagedRecord:
        return None


def _temporaries(target: Path, names: Iterable[str], key: str) -> list[str]:
    """The names of ``key``'s own temporary files under ``target`` (links not followed): members held until their archive
    was vouched for and half-written ones, found by the name each carries (its archive's key, the tool's suffix), and
    those beside the members ``names`` lists (a long name's temporary carries a hash instead)."""
    found: dict[str, None] = {}
    mark = f".{key}."
    for folder, _dirs, files in os.walk(target):  # os.walk does not descend into links
        for name in files:
            if name.startswith(".") and mark in name and name.endswith(TMP_SUFFIX):
                found[(Path(folder) / name).relative_to(target).as_posix()] = None
    for name in names:
        parts = name.split("/")
        if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            continue
        dest = target.joinpath(*parts)
        if _inside(dest.parent, target):
            found.update(dict.fromkeys(p.relative_to(target).as_posix() for p in temporaries(dest, key)))
    return list(found)


def _recorded_names(f: ManifestFile, record: FileRecord | None, target: Path, partial: Path) -> list[str]:
    """The names under the data set's folder that staging wrote for ``f``: its members (recorded, or complete so far
    in a stream's checkpoint or in an archive whose unpacking was cut short), and the file itself while it is kept."""
    names: dict[str, None] = {}
    if record is not None:
        names.update(dict.fromkeys(record.members))
        if record.verified and (record.stamp is not None or not record.unpack):
            names[f.key] = None  # a plain file, or an archive kept on disk
    saved = read_json(partial / f"{f.key}.stream.json")
    if isinstance(saved, dict) and isinstance(saved.get("names"), list) and isinstance(saved.get("index"), int):
        names.update(dict.fromkeys(n for n in saved["names"][: saved["index"]] if isinstance(n, str)))
    if record is not None and record.verified and record.unpack and not record.extracted and _is_file(target / f.key):
        try:
            with zipfile.ZipFile(target / f.key) as zf:
                names.update(dict.fromkeys(i.filename for i in zf.infolist() if not i.is_dir()))
        except (OSError, zipfile.BadZipFile, ValueError):
            pass
    return list(names)


def _removal(folder: Path, name: str, key: str, made: str, refused: list[str]) -> Removal | None:
    """The entry ``folder/name`` if it is one staging made there and lies under ``folder``; else None, the reason in ``refused``."""
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        refused.append(f"{key}: the record names {name!r}, which is not a path inside {folder}: ignored")
        return None
    path = folder.joinpath(*parts)
    if not _inside(path.parent, folder):
        refused.append(f"{path}: a folder on its way is a link leading out of {folder}: left alone")
        return None
    try:
        st = os.lstat(path)
    except OSError:
        return None  # already gone: nothing to remove
    kind = "link" if stat.S_ISLNK(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"
    if kind != made:
        what = {"link": "a link", "file": "a file", "other": "neither a file nor a link"}[kind]
        refused.append(f"{path}: staging {'linked' if made == 'link' else 'wrote'} it, but it is now {what}: left alone")
        return None
    return Removal(str(path), kind, st.st_size if kind == "file" else 0, key, str(folder))


def carry_out(plan: CleanPlan, root: Path) -> CleanPlan:
    """Remove what the plan names, each entry checked again just before (under the run lock, so no staging runs
    meanwhile), then the folders it emptied; forget the records, so `status` and the next `up` see the files missing."""
    refused = list(plan.refused)
    removed: list[Removal] = []
    folders: set[Path] = set()
    with run_lock(root):
        for r in plan.removals:
            path = Path(r.path)
            if _removal(Path(r.folder), path.relative_to(r.folder).as_posix(), r.key, r.kind, refused) is None:
                continue
            os.unlink(path)  # a link goes, never what it leads to
            removed.append(r)
            folders.add(path.parent)
        emptied = _remove_empty(folders, Path(plan.target), root)
        state = StateStore(root)
        for key in plan.keys:
            state.forget(key)
    return CleanPlan(plan.root, plan.target, plan.subsets, plan.keys, tuple(removed), tuple(refused), True, tuple(emptied))


def _remove_empty(folders: Iterable[Path], target: Path, root: Path) -> list[str]:
    """Remove each folder that emptying left empty, and its emptied parents, up to (not including) the data set's folder."""
    emptied = []
    stops = {os.path.abspath(target), os.path.abspath(root)}
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        while os.path.abspath(folder) not in stops and _inside(folder, target):
            try:
                folder.rmdir()  # only when empty: what provision did not record stays, and its folder with it
            except OSError:
                break
            emptied.append(str(folder))
            folder = folder.parent
    return emptied


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path``, its links followed, is ``folder`` or under it (its links followed too)."""
    real, base = os.path.realpath(path), os.path.realpath(folder)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def _is_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False
