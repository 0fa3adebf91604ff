"""``provision mirror --to gs://bucket/prefix/`` or ``--to DIR/``: copy the selected files there once, verified.

Each file is fetched from the configured sources with the staging engine (so it is verified
against the manifest first), then put at the destination; what is already there with the right
md5 and size is skipped, so a second mirror copies nothing. A bucket gets parts uploaded in
parallel (resumable uploads), composed into the final object with the manifest md5 in its
metadata. A folder (Google Drive mounted in Colab, say) gets the file under a temporary name,
continued where an interrupted copy stopped, read back and checked, then renamed; a stamp file
there records what was verified, so the next survey need not read 60 GB back.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import DataConfig
from ..errors import ChecksumError, DiskSpaceError, ProvisionError
from ..planvalues import DataPlan, FilePlan
from .context import Emit, FileResult, StageContext
from .fetch import fetch, md5_of
from .signals import PermanentError, TransientError
from .state import atomic_write_json, read_json, run_lock, size_of, stat_stamp, work_dir
from .transport.gcs import client, gcs_errors, md5_hex, split_gs
from .transport.protocol import BUFFER_BYTES

log = logging.getLogger(__name__)
MAX_COMPOSE = 32
MIN_PART_BYTES = 32 << 20
UPLOAD_CHUNK_BYTES = 8 << 20


@dataclass
class MirrorItem:
    key: str
    object: str
    size: int | None
    action: str  # present | upload | uploaded | failed
    source: str | None = None
    parts: int = 0
    error: str | None = None
    retries: list[str] = field(default_factory=list)


@dataclass
class MirrorResult:
    destination: str
    items: list[MirrorItem]
    dry_run: bool
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return all(i.action != "failed" for i in self.items)

    @property
    def bytes_to_upload(self) -> int:
        return sum(i.size or 0 for i in self.items if i.action in ("upload", "uploaded"))

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "destination": self.destination, "dry_run": self.dry_run, "bytes_to_upload": self.bytes_to_upload,
                "elapsed_s": round(self.elapsed_s, 3), "items": [asdict(i) for i in self.items]}


def part_plan(size: int, connections: int) -> list[tuple[int, int]]:
    """[start, end) byte ranges of the parts: few and large, at most 32 (one compose call)."""
    count = max(1, min(MAX_COMPOSE, connections * 2, -(-size // MIN_PART_BYTES)))
    step = -(-size // count)
    return [(start, min(size, start + step)) for start in range(0, size, step)] or [(0, 0)]


class Mirror:
    """Fill a destination with the selected files, verified. Subclasses say what is there and how a file is put."""

    def __init__(self, data: DataConfig, plan: DataPlan, destination: str, emit: Emit | None = None) -> None:
        self.cfg = data
        self.plan = plan
        self.destination = destination if destination.endswith("/") else destination + "/"
        self.emit = emit or (lambda event, **info: None)

    def present(self, f: FilePlan) -> tuple[str, bool]:
        """(where ``f`` goes at the destination, whether it is there already with the right md5 and size)."""
        raise NotImplementedError

    def put(self, local: Path, f: FilePlan, md5: str, item: MirrorItem, conns: ThreadPoolExecutor) -> None:
        """Put the verified file ``local`` at the destination."""
        raise NotImplementedError

    def preflight(self, todo: list[tuple[FilePlan, MirrorItem]]) -> None:
        """Refuse before fetching anything when the destination cannot take it all (folders only)."""

    def survey(self) -> list[MirrorItem]:
        """What is at the destination already and what must be put there."""
        items = []
        for f in self.plan.files:
            where, there = self.present(f)
            items.append(MirrorItem(f.key, where, f.size, "present" if there else "upload"))
        return items

    def run(self, dry_run: bool) -> MirrorResult:
        start = time.monotonic()
        items = self.survey()
        result = MirrorResult(self.destination, items, dry_run)
        todo = [(f, i) for f, i in zip(self.plan.files, items, strict=True) if i.action == "upload"]
        if todo:
            self.preflight(todo)
        if dry_run or not todo:
            result.elapsed_s = time.monotonic() - start
            return result
        root = Path(self.plan.root)
        scratch = work_dir(root) / "mirror"
        scratch.mkdir(parents=True, exist_ok=True)
        ctx = StageContext(self.cfg, self.plan, emit=self.emit)
        with run_lock(root), ThreadPoolExecutor(max(1, self.plan.connections), thread_name_prefix="conn") as conns, \
                ThreadPoolExecutor(max(1, self.plan.files_in_flight), thread_name_prefix="mirror") as files:
            futures = [files.submit(self._one, f, item, ctx, scratch, conns) for f, item in todo]
            for fut in futures:
                fut.result()
        result.elapsed_s = time.monotonic() - start
        return result

    def _one(self, f: FilePlan, item: MirrorItem, ctx: StageContext, scratch: Path, conns: ThreadPoolExecutor) -> None:
        local = scratch / f.key
        fetched = FileResult(f.key)
        try:
            # never read back from the destination being filled; an unpacked copy holds no archives
            sources = tuple(loc for loc in f.locations if not loc.url.startswith(self.destination) and loc.kind != "unpacked")
            source, md5 = fetch(ctx, FilePlan(**{**f.__dict__, "locations": sources}), local, fetched, conns)
            item.source = source
            item.retries = fetched.retries
            self.put(local, f, md5, item, conns)
            item.action = "uploaded"
            self.emit("file_done", key=f.key, message=f"{f.key}: copied to {item.object}" + (f" ({item.parts} parts)" if item.parts > 1 else ""))
        except (ProvisionError, PermanentError, TransientError) as exc:
            item.action = "failed"
            item.error = exc.message
            self.emit("file_failed", key=f.key, message=f"{f.key}: FAILED: {item.error}")
        finally:
            local.unlink(missing_ok=True)


class BucketMirror(Mirror):
    """``gs://bucket/prefix/``: parts uploaded in parallel and composed, the manifest md5 in the metadata."""

    def __init__(self, data: DataConfig, plan: DataPlan, destination: str, emit: Emit | None = None) -> None:
        super().__init__(data, plan, destination, emit)
        self.bucket_name, self.prefix = split_gs(self.destination)
        self.client = client(data.gcs.project, data.gcs.anonymous)
        self.bucket = self.client.bucket(self.bucket_name, user_project=data.gcs.user_project)

    def present(self, f: FilePlan) -> tuple[str, bool]:
        name = self.prefix + f.key
        with gcs_errors(self.destination + f.key, self.bucket_name, self.client):
            blob = self.bucket.get_blob(name)
        there = blob is not None and f.md5 is not None and md5_hex(blob) == f.md5 and (f.size is None or blob.size == f.size)
        return f"gs://{self.bucket_name}/{name}", there

    def put(self, local: Path, f: FilePlan, md5: str, item: MirrorItem, conns: ThreadPoolExecutor) -> None:
        size = os.stat(local).st_size
        parts = part_plan(size, self.plan.connections)
        item.parts = len(parts)
        metadata = {"md5": md5, "source": item.source or "", "uploaded-by": "dlwpt-provision"}
        final = self.bucket.blob(self.prefix + f.key)
        if len(parts) == 1:
            self._upload_range(local, final, 0, size, metadata)
            return
        names = [f"{self.prefix}.provision-parts/{f.key}.{i:03d}" for i in range(len(parts))]
        futures = [conns.submit(self._part, local, name, start, end) for name, (start, end) in zip(names, parts, strict=True)]
        blobs = [fut.result() for fut in futures]
        with gcs_errors(item.object, self.bucket_name, self.client):
            final.compose(blobs)
            final.metadata = metadata
            final.patch()
            for blob in blobs:
                blob.delete()

    def _part(self, local: Path, name: str, start: int, end: int) -> Any:
        """Upload one part unless an earlier run already did (same size and CRC32C): resumable."""
        import google_crc32c

        crc = google_crc32c.Checksum()
        with open(local, "rb") as fh:
            fh.seek(start)
            left = end - start
            while left:
                chunk = fh.read(min(UPLOAD_CHUNK_BYTES, left))
                crc.update(chunk)
                left -= len(chunk)
        import base64

        want = base64.b64encode(crc.digest()).decode()
        with gcs_errors(f"gs://{self.bucket_name}/{name}", self.bucket_name, self.client):
            existing = self.bucket.get_blob(name)
        if existing is not None and existing.size == end - start and existing.crc32c == want:
            return existing
        blob = self.bucket.blob(name)
        self._upload_range(local, blob, start, end, None)
        return blob

    def _upload_range(self, local: Path, blob: Any, start: int, end: int, metadata: dict[str, str] | None) -> None:
        blob.chunk_size = UPLOAD_CHUNK_BYTES  # a resumable upload in 8 MiB requests
        if metadata:
            blob.metadata = metadata
        with open(local, "rb") as fh, gcs_errors(f"gs://{self.bucket_name}/{blob.name}", self.bucket_name, self.client):
            fh.seek(start)
            blob.upload_from_file(fh, size=end - start, checksum="crc32c", timeout=self.cfg.timeout_s)


DRIVE_TIERS = ("Google Drive's free 15 GB holds two LUNA16 subsets (6.0-7.3 GB each); Google One's 100 GB plan holds all ten "
               "(66.3 GB); 200 GB and 2 TB plans hold them with room to spare")


class FolderMirror(Mirror):
    """A folder, typically Google Drive mounted in Colab: survives the runtime, so later sessions stage from it."""

    STAMPS = ".provision-mirror.json"

    def __init__(self, data: DataConfig, plan: DataPlan, destination: str, emit: Emit | None = None) -> None:
        super().__init__(data, plan, destination, emit)
        self.folder = Path(self.destination)
        loaded = read_json(self.folder / self.STAMPS)
        self.stamps: dict[str, Any] = loaded if isinstance(loaded, dict) else {}
        self._lock = threading.Lock()

    def present(self, f: FilePlan) -> tuple[str, bool]:
        path = self.folder / f.key
        stamp = self.stamps.get(f.key)
        stamp = stamp if isinstance(stamp, dict) else {}  # a stamp of another shape vouches for nothing
        now = _stat(path)
        there = (now is not None and f.md5 is not None and stamp.get("md5") == f.md5 and stamp.get("stat") == now
                 and (f.size is None or now["size"] == f.size))
        return str(path), there

    def _part(self, key: str) -> Path:
        return self.folder / f".{key}.provision-part"

    def preflight(self, todo: list[tuple[FilePlan, MirrorItem]]) -> None:
        from ..disk import gb
        from ..environment import fs_facts

        needed = sum(max(0, (f.size or 0) - (size_of(self._part(f.key)) or 0)) for f, _ in todo)
        free = fs_facts(self.folder).free_bytes
        if needed > free:
            drive = "/drive/" in str(self.folder.resolve()) or str(self.folder).startswith("/content/drive")
            raise DiskSpaceError(
                f"{self.folder} has {gb(free)} free; mirroring {len(todo)} file(s) there needs {gb(needed)} ({gb(needed - free)} short)",
                hint=(DRIVE_TIERS + "; mirror fewer subsets (--subsets) or free space in Drive" if drive
                      else "mirror fewer subsets (--subsets) or choose a folder on a bigger disk"),
                path=str(self.folder), needed=needed, free=free,
            )

    def put(self, local: Path, f: FilePlan, md5: str, item: MirrorItem, conns: ThreadPoolExecutor) -> None:
        """Copy under a temporary name (continuing an interrupted copy), read it back, check it, rename it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        part = self._part(f.key)
        size = os.stat(local).st_size
        done = size_of(part) or 0
        if done > size:
            part.unlink()
            done = 0
        with open(local, "rb") as src, open(part, "ab") as out:
            src.seek(done)
            while chunk := src.read(BUFFER_BYTES * 8):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        got = md5_of(part)  # read back: what the folder holds is what counts
        if got != md5:
            part.unlink(missing_ok=True)
            raise ChecksumError(f"the copy of {f.key} in {self.folder} reads back with md5 {got}, expected {md5}",
                                hint="run the mirror again; if it recurs, the folder's storage is unreliable", key=f.key)
        final = self.folder / f.key
        os.replace(part, final)
        with self._lock:
            self.stamps[f.key] = {"md5": md5, "stat": _stat(final), "source": item.source}
            atomic_write_json(self.folder / self.STAMPS, self.stamps)


def _stat(path: Path) -> dict[str, int] | None:
    """A file's stamp as the folder's stamp file keeps it."""
    stamp = stat_stamp(path)
    return {"size": stamp[0], "mtime_ns": stamp[1]} if stamp is not None else None


def mirror_for(data: DataConfig, plan: DataPlan, destination: str, emit: Emit | None = None) -> Mirror:
    """A bucket mirror for gs:// destinations, a folder mirror for anything else."""
    if destination.startswith("gs://"):
        return BucketMirror(data, plan, destination, emit)
    return FolderMirror(data, plan, os.path.abspath(os.path.expanduser(destination)), emit)
