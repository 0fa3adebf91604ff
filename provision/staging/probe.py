"""``plan --probe``: ask the sources what the manifest leaves open (size, md5) and read each archive's
central directory with ranged reads of its tail, for the exact unpacked size. Reads only; writes nothing."""

from __future__ import annotations

import io
import logging
import zipfile
from collections.abc import Callable
from typing import Any

from ..config import Config
from ..errors import DownloadError
from ..manifest import Manifest, PinnedMember
from ..plan import RemoteFacts
from .sources import file_url
from .transfer import PermanentError, Transfer, TransientError

log = logging.getLogger(__name__)
BLOCK_BYTES = 64 * 1024  # a LUNA16 central directory (178 entries) is about 20 KB


class RangeReader(io.RawIOBase):
    """A seekable read-only file over ranged reads of a source, fetched in cached blocks."""

    def __init__(self, transfer: Transfer, size: int) -> None:
        self.transfer = transfer
        self.size = size
        self.pos = 0
        self.blocks: dict[int, bytes] = {}
        self.requests = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def _block(self, index: int) -> bytes:
        if index not in self.blocks:
            start = index * BLOCK_BYTES
            end = min(self.size, start + BLOCK_BYTES)
            buf = bytearray()
            self.transfer.read_range(start, end, buf.extend)
            self.requests += 1
            if len(buf) != end - start:
                raise TransientError(f"{self.transfer.label} sent {len(buf)} of bytes {start}-{end - 1}")
            self.blocks[index] = bytes(buf)
        return self.blocks[index]

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        n = min(len(view), self.size - self.pos)
        done = 0
        while done < n:
            index, offset = divmod(self.pos, BLOCK_BYTES)
            block = self._block(index)
            take = min(n - done, len(block) - offset)
            view[done : done + take] = block[offset : offset + take]
            done += take
            self.pos += take
        return done


def central_directory(transfer: Transfer, size: int) -> tuple[int, int]:
    """(unpacked bytes, file members) from the archive's central directory, via ranged reads of its tail."""
    members = archive_members(transfer, size)
    return sum(m.size for m in members), len(members)


def archive_members(transfer: Transfer, size: int) -> tuple[PinnedMember, ...]:
    """Every file member's name, size and CRC-32, from the central directory (ranged reads of the tail)."""
    reader = RangeReader(transfer, size)
    with zipfile.ZipFile(io.BufferedReader(reader, BLOCK_BYTES)) as zf:
        return tuple(PinnedMember(i.filename, i.file_size, i.CRC) for i in zf.infolist() if not i.is_dir())


def pin_members(config: Config, manifest: Manifest) -> dict[str, tuple[PinnedMember, ...]]:
    """The members of each selected archive, read from the first source that serves byte ranges."""
    from ..plan import FileLocation
    from .engine import Stager
    from .throttle import Throttle

    throttle = Throttle(config.data.host_connections, config.data.connections)
    pins: dict[str, tuple[PinnedMember, ...]] = {}
    failures: list[str] = []
    for f in manifest.select(config.data.subsets):
        if not f.unpack:
            continue
        for source in config.data.sources:
            try:
                url = file_url(source, f, config.data.zenodo_url)
                transfer = Stager.transfer_for(FileLocation(source.kind, url), config.data, throttle)
                size = f.size if f.size is not None else transfer.info().size
                if size:
                    pins[f.key] = archive_members(transfer, size)
                    break
            except (ValueError, TransientError, PermanentError, zipfile.BadZipFile, OSError) as exc:
                failures.append(f"{f.key} at {source.label}: {getattr(exc, 'reason', exc)}")
        else:
            raise DownloadError(f"no source could show the members of {f.key}: " + "; ".join(failures[-3:]),
                                hint="a source that serves byte ranges is needed (zenodo, https://, gs://, a folder of archives)", key=f.key)
    return pins


def probe_remote(config: Config, manifest: Manifest) -> dict[str, RemoteFacts]:
    """What the sources say about each selected file: sizes and md5s the manifest leaves open, exact
    unpacked sizes, and for a bucket source whether it holds the file (present / missing / differs)."""
    from ..plan import FileLocation
    from .engine import Stager
    from .throttle import Throttle
    from .zenodo import ZenodoRecords

    throttle = Throttle(config.data.host_connections, config.data.connections)

    def opener(loc: FileLocation, cfg: Any) -> Transfer:
        return Stager.transfer_for(loc, cfg, throttle)

    zenodo = ZenodoRecords(config.data.zenodo_url, config.data.timeout_s, throttle)
    facts: dict[str, RemoteFacts] = {}
    for f in manifest.select(config.data.subsets):
        bucket_status = None
        gs = next((s for s in config.data.sources if s.kind == "gs"), None)
        if gs is not None:
            bucket_status = _bucket_status(opener(FileLocation("gs", file_url(gs, f, config.data.zenodo_url)), config.data), f.size, f.md5)
        need_unpacked = f.unpack and f.unpacked_size is None
        found = RemoteFacts(bucket_status=bucket_status)
        if f.size is None or f.md5 is None or need_unpacked:
            found = _ask_sources(config, f, opener, zenodo, need_unpacked) or found
            found = RemoteFacts(**{**found.__dict__, "bucket_status": bucket_status})
        facts[f.key] = found
    return facts


def _bucket_status(transfer: Transfer, size: int | None, md5: str | None) -> str:
    try:
        info = transfer.info()
    except PermanentError as exc:
        return "missing" if "no such object" in exc.reason else f"unreadable: {exc.reason}"
    except TransientError as exc:
        return f"unreadable: {exc.reason}"
    if md5 and info.md5 and info.md5 != md5:
        return "md5 differs"
    if size is not None and info.size != size:
        return "size differs"
    return "present"


def _ask_sources(config: Config, f: Any, opener: Callable[..., Transfer], zenodo: Any, need_unpacked: bool) -> RemoteFacts | None:
    from ..plan import FileLocation

    for source in config.data.sources:
        try:
            url = file_url(source, f, config.data.zenodo_url)
        except ValueError:
            continue
        try:
            size, md5 = f.size, f.md5
            if source.kind == "zenodo" and f.record and (size is None or md5 is None):
                api_size, api_md5 = zenodo.lookup(f.record, f.key)
                size, md5 = size if size is not None else api_size, md5 or api_md5
            transfer = opener(FileLocation(source.kind, url), config.data)
            if size is None:
                size = transfer.info().size
            unpacked = members = None
            if need_unpacked and size:
                unpacked, members = central_directory(transfer, size)
            return RemoteFacts(size=size, md5=md5, unpacked_size=unpacked, members=members, source=url)
        except (TransientError, PermanentError, zipfile.BadZipFile, OSError) as exc:
            log.warning("probe of %s at %s failed: %s", f.key, url, exc)
    return None
