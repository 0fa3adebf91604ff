"""Opening a transfer for a file's location, and reading a remote file as if it were a local, seekable one.

The transfer kinds (local folder, HTTP(S), gs://) all implement :class:`.transfer.Transfer`; their
modules are imported only when a source of that kind is used, so start-up stays fast.
"""

from __future__ import annotations

import io

from ...config import DataConfig
from ...planvalues import FileLocation
from ..signals import PermanentError, TransientError
from .protocol import Transfer
from .throttle import Throttle

BLOCK_BYTES = 64 * 1024  # a LUNA16 central directory (178 entries) is about 20 KB


def open_transfer(loc: FileLocation, cfg: DataConfig, throttle: Throttle | None = None, size: int | None = None) -> Transfer:
    """The transfer that reads ``loc``; HTTP and gs:// ones go through their host's gate in ``throttle`` (and its one
    connection pool), and HTTP ones compare the size the
    server states with ``size`` (the manifest's), so a wrong manifest is named as such rather than as a checksum or 416."""
    if loc.kind == "local":
        from .local import LocalTransfer

        return LocalTransfer(loc.url)
    if loc.kind in ("http", "zenodo"):
        from .http import HttpTransfer

        return HttpTransfer(loc.url, cfg.timeout_s, throttle.gate(loc.url) if throttle else None, expected_size=size)
    if loc.kind == "gs":
        from .gcs import GcsTransfer

        try:
            return GcsTransfer(loc.url, cfg.timeout_s, cfg.gcs.project, cfg.gcs.anonymous, cfg.gcs.user_project, throttle)
        except Exception as exc:  # noqa: BLE001 - a client that cannot start is one failed source
            raise PermanentError(f"cannot open {loc.url}: {type(exc).__name__}: {exc}") from None
    raise PermanentError(f"no transfer for source kind {loc.kind}")


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
