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
from ..plan import file_url
from ..planvalues import FileLocation, RemoteFacts
from .signals import PermanentError, StagingSignal, TransientError
from .transport.opening import BLOCK_BYTES, RangeReader, open_transfer
from .transport.protocol import Transfer
from .transport.throttle import Throttle
from .transport.zenodo import ZenodoRecords, fill_from_records

log = logging.getLogger(__name__)


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

    with Throttle(config.data.connections_to) as throttle:  # its connections closed before staging opens its own
        return _pin_members(config, manifest, throttle)


def _pin_members(config: Config, manifest: Manifest, throttle: Throttle) -> dict[str, tuple[PinnedMember, ...]]:
    pins: dict[str, tuple[PinnedMember, ...]] = {}
    failures: list[str] = []
    for f in manifest.select(config.data.subsets):
        if not f.unpack:
            continue
        for source in config.data.sources:
            try:
                url = file_url(source, f, config.data.zenodo_url)
                transfer = open_transfer(FileLocation(source.kind, url), config.data, throttle)
                size = f.size if f.size is not None else transfer.info().size
                if size:
                    pins[f.key] = archive_members(transfer, size)
                    break
            except (ValueError, TransientError, PermanentError, zipfile.BadZipFile, OSError) as exc:
                failures.append(f"{f.key} at {source.label}: {exc.message if isinstance(exc, StagingSignal) else exc}")
        else:
            raise DownloadError(f"no source could show the members of {f.key}: " + "; ".join(failures[-3:]),
                                hint="a source that serves byte ranges is needed (zenodo, https://, gs://, a folder of archives)", key=f.key)
    return pins


def probe_remote(config: Config, manifest: Manifest) -> dict[str, RemoteFacts]:
    """What the sources say about each selected file: sizes and md5s the manifest leaves open, exact
    unpacked sizes, and for a bucket source whether it holds the file (present / missing / differs)."""

    with Throttle(config.data.connections_to) as throttle:  # its connections closed before staging opens its own
        return _probe_remote(config, manifest, throttle)


def _probe_remote(config: Config, manifest: Manifest, throttle: Throttle) -> dict[str, RemoteFacts]:
    def opener(loc: FileLocation, cfg: Any) -> Transfer:
        return open_transfer(loc, cfg, throttle)

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


def _ask_sources(config: Config, f: Any, opener: Callable[..., Transfer], zenodo: ZenodoRecords, need_unpacked: bool) -> RemoteFacts | None:
    for source in config.data.sources:
        try:
            url = file_url(source, f, config.data.zenodo_url)
        except ValueError:
            continue
        try:
            size, md5 = fill_from_records(f.size, f.md5, record=f.record, key=f.key, source_kind=source.kind, records=zenodo)
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
