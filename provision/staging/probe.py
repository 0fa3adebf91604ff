"""``plan --probe``: ask the sources what the manifest leaves open (size, md5) and read each archive's
central directory with ranged reads of its tail, for the exact unpacked size. Reads only; writes nothing."""

from __future__ import annotations

import io
import logging
import zipfile
from collections.abc import Callable

from ..config import Config
from ..manifest import Manifest
from ..plan import RemoteFacts
from .sources import file_url
from .transfer import PermanentError, Transfer, TransientError

log = logging.getLogger(__name__)
BLOCK_BYTES = 256 * 1024


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
    reader = RangeReader(transfer, size)
    with zipfile.ZipFile(io.BufferedReader(reader, BLOCK_BYTES)) as zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
    return sum(i.file_size for i in infos), len(infos)


def probe_remote(config: Config, manifest: Manifest, make_transfer: Callable[..., Transfer] | None = None) -> dict[str, RemoteFacts]:
    """What the first answering source says about each selected file the manifest leaves open."""
    from .engine import Stager
    from .zenodo import ZenodoRecords

    zenodo = ZenodoRecords(config.data.zenodo_url, config.data.timeout_s)
    facts: dict[str, RemoteFacts] = {}
    for f in manifest.select(config.data.subsets):
        need_unpacked = f.unpack and f.unpacked_size is None
        if f.size is not None and f.md5 is not None and not need_unpacked:
            continue
        for source in config.data.sources:
            try:
                url = file_url(source, f, config.data.zenodo_url)
            except ValueError:
                continue
            from ..plan import FileLocation

            loc = FileLocation(source.kind, url)
            try:
                size, md5 = f.size, f.md5
                if source.kind == "zenodo" and f.record and (size is None or md5 is None):
                    api_size, api_md5 = zenodo.lookup(f.record, f.key)
                    size, md5 = size if size is not None else api_size, md5 or api_md5
                transfer = (make_transfer or Stager.transfer_for)(loc, config.data.timeout_s)
                if size is None:
                    size = transfer.info().size
                unpacked = members = None
                if need_unpacked and size:
                    unpacked, members = central_directory(transfer, size)
                facts[f.key] = RemoteFacts(size=size, md5=md5, unpacked_size=unpacked, members=members, source=url)
                break
            except (TransientError, PermanentError, zipfile.BadZipFile, OSError) as exc:
                log.warning("probe of %s at %s failed: %s", f.key, url, exc)
    return facts
