"""Source specs (``zenodo``, ``https://host/dir/``, ``gs://bucket/prefix/``, ``/a/dir``, ``unpacked:/a/dir``, ``kaggle``):
configuration. Where each file is at a source is the plan's business (:func:`provision.plan.file_url`)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from urllib.parse import urlsplit

KAGGLE_INPUT = "/kaggle/input"  # where Kaggle mounts the data sets attached to a notebook, read-only


@dataclass(frozen=True)
class Source:
    """One place files can come from. ``kind`` is zenodo, http, gs, local (archives in a folder), or
    unpacked (an unpacked copy; ``kaggle`` is the one mounted under /kaggle/input)."""

    kind: str
    location: str  # base URL, gs:// prefix, or directory ("zenodo" for zenodo)
    kaggle: bool = False  # an unpacked copy: search every data set mounted under this folder

    @property
    def insecure(self) -> bool:
        return self.location.startswith("http://")

    @property
    def is_loopback(self) -> bool:
        host = urlsplit(self.location).hostname or ""
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    @property
    def label(self) -> str:
        return f"unpacked copy {self.location}" if self.kind == "unpacked" else self.location

    @property
    def is_copy(self) -> bool:
        return self.kind == "unpacked"


def parse_source(text: str) -> Source:
    """Parse one source spec; raise ValueError saying what form is expected."""
    text = text.strip()
    if text == "zenodo":
        return Source("zenodo", "zenodo")
    if text == "kaggle" or text.startswith("kaggle:"):
        return Source("unpacked", os.path.abspath(text[len("kaggle:"):] or KAGGLE_INPUT), kaggle=True)
    if text.startswith("unpacked:"):
        if not text[len("unpacked:"):]:
            raise ValueError("unpacked: names no folder; write unpacked:/path/to/the/copy")
        return Source("unpacked", os.path.abspath(text[len("unpacked:"):]))
    if text.startswith(("http://", "https://")):
        if not text.endswith("/"):
            raise ValueError(f"a base URL must end with '/', so that file names can be appended: {text}/")
        if not urlsplit(text).hostname:
            raise ValueError(f"{text} has no host name")
        return Source("http", text)
    if text.startswith("gs://"):
        bucket = text[5:].split("/", 1)[0]
        if not bucket:
            raise ValueError(f"{text} names no bucket; write gs://BUCKET/PREFIX/")
        if not text.endswith("/"):
            text += "/"
        return Source("gs", text)
    if "://" in text:
        raise ValueError(f"{text}: unsupported scheme; use zenodo, https://host/dir/, gs://bucket/prefix/, a directory, unpacked:DIR or kaggle")
    if not text:
        raise ValueError("an empty source")
    return Source("local", os.path.abspath(text))


def zenodo_api_url(zenodo_url: str, record: str) -> str:
    return f"{zenodo_url.rstrip('/')}/api/records/{record}"
