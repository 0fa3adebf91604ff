"""Resolving sizes and checksums from the Zenodo records API (both response shapes)."""

from __future__ import annotations

import threading
from typing import Any

from .http import get_json
from .sources import zenodo_api_url


def parse_record_files(data: Any) -> dict[str, tuple[int | None, str | None]]:
    """key -> (size, md5) from a records API answer; accepts key/size/'md5:..' and filename/filesize/bare hex."""
    files = data.get("files") if isinstance(data, dict) else None
    if isinstance(files, dict):
        files = list((files.get("entries") or {}).values())
    result: dict[str, tuple[int | None, str | None]] = {}
    for entry in files or []:
        if not isinstance(entry, dict):
            continue
        key = entry.get("key") or entry.get("filename")
        if not key:
            continue
        size = entry.get("size", entry.get("filesize"))
        checksum = entry.get("checksum")
        md5 = None
        if isinstance(checksum, str):
            algo, sep, digest = checksum.partition(":")
            md5 = (digest if sep else algo).lower() if (not sep or algo.lower() == "md5") else None
        result[str(key)] = (int(size) if isinstance(size, (int, float)) or (isinstance(size, str) and size.isdigit()) else None, md5)
    return result


class ZenodoRecords:
    """Fetches each record's file list once per run (Zenodo allows guests about 60 API calls a minute)."""

    def __init__(self, zenodo_url: str, timeout_s: float = 30.0) -> None:
        self.zenodo_url = zenodo_url
        self.timeout_s = timeout_s
        self._cache: dict[str, dict[str, tuple[int | None, str | None]]] = {}
        self._lock = threading.Lock()

    def lookup(self, record: str, key: str) -> tuple[int | None, str | None]:
        with self._lock:
            if record not in self._cache:
                self._cache[record] = parse_record_files(get_json(zenodo_api_url(self.zenodo_url, record), self.timeout_s))
            return self._cache[record].get(key, (None, None))
