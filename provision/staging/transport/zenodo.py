"""Resolving sizes and checksums from the Zenodo records API (both response shapes)."""

from __future__ import annotations

import threading
from typing import Any

from ...sources import zenodo_api_url
from .http import get_json
from .throttle import Throttle


def _entries(data: Any) -> list[Any]:
    """The file entries of any answer shape: ``files: [...]``, ``files: {entries: {...} or [...]}``
    (InvenioRDM), or a ``/files`` listing with ``entries`` at the top; anything else has none."""
    if not isinstance(data, dict):
        return data if isinstance(data, list) else []
    files = data.get("files", data)
    if isinstance(files, dict):
        files = files.get("entries", [])
    if isinstance(files, dict):
        files = [{"key": k, **v} if isinstance(v, dict) else v for k, v in files.items()]
    return files if isinstance(files, list) else []


def parse_record_files(data: Any) -> dict[str, tuple[int | None, str | None]]:
    """key -> (size, md5) from a records API answer; accepts key/size/'md5:..' and filename/filesize/bare hex."""
    result: dict[str, tuple[int | None, str | None]] = {}
    for entry in _entries(data):
        if not isinstance(entry, dict):
            continue
        key = entry.get("key") or entry.get("filename")
        if not isinstance(key, str) or not key:
            continue
        size = entry.get("size", entry.get("filesize"))
        checksum = entry.get("checksum")
        md5 = None
        if isinstance(checksum, str):
            algo, sep, digest = checksum.partition(":")
            md5 = (digest if sep else algo).lower() if (not sep or algo.lower() == "md5") else None
        if isinstance(size, bool) or not (isinstance(size, int) or (isinstance(size, str) and size.isdigit())):
            size = None
        result[key] = (int(size) if size is not None else None, md5)
    return result


class ZenodoRecords:
    """Fetches each record's file list once per run (Zenodo limits guests' requests per minute)."""

    def __init__(self, zenodo_url: str, timeout_s: float = 30.0, throttle: Throttle | None = None) -> None:
        self.zenodo_url = zenodo_url
        self.timeout_s = timeout_s
        self.throttle = throttle
        self._cache: dict[str, dict[str, tuple[int | None, str | None]]] = {}
        self._lock = threading.Lock()

    def lookup(self, record: str, key: str) -> tuple[int | None, str | None]:
        with self._lock:
            if record not in self._cache:
                url = zenodo_api_url(self.zenodo_url, record)
                self._cache[record] = parse_record_files(get_json(url, self.timeout_s, self.throttle.gate(url) if self.throttle else None))
            return self._cache[record].get(key, (None, None))


def fill_from_records(size: int | None, md5: str | None, *, record: str | None, key: str, source_kind: str,
                      records: ZenodoRecords) -> tuple[int | None, str | None]:
    """The size and md5 to check a file against: the manifest's, and what it leaves open from the Zenodo records API
    (when the file comes from Zenodo and has a record). The one place both staging and ``--probe`` ask."""
    if (size is None or md5 is None) and source_kind == "zenodo" and record:
        api_size, api_md5 = records.lookup(record, key)
        size = size if size is not None else api_size
        md5 = md5 or api_md5
    return size, md5
