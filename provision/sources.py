"""Source specs (``zenodo``, ``https://host/dir/``, ``gs://bucket/prefix/``, ``/a/dir``, ``unpacked:/a/dir``, ``kaggle``):
configuration. Where each file is at a source is the plan's business (:func:`provision.plan.file_url`)."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

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
        text = _keep_credentials(text)
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


# Credentials written into a source URL (https://user:password@host/dir/) are taken out of it here, so that no plan,
# report, log line or state file can show them; the HTTP transfer asks for them by URL. Process-wide on purpose: a
# secret kept beside the values that get printed is a secret printed sooner or later.
_CREDENTIALS: dict[str, tuple[str, str]] = {}


def _keep_credentials(url: str) -> str:
    """The URL without its user info; the user info is kept for :func:`credentials_for`."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    _CREDENTIALS[clean] = (unquote(parts.username or ""), unquote(parts.password or ""))
    return clean


def credentials_for(url: str) -> tuple[str, str] | None:
    """The user and password given with the source that ``url`` is under, if any."""
    matches = [base for base in _CREDENTIALS if url.startswith(base)]
    return _CREDENTIALS[max(matches, key=len)] if matches else None


def redact(text: str) -> str:
    """``text`` for a terminal: the user info of any URL in it replaced by ***, and control characters (a member name
    with terminal escapes, say) shown as \\xNN instead of acting on the terminal. Newlines and tabs stay."""
    text = re.sub(r"(\b[a-z][a-z0-9+.-]*://)[^/@\s]+@", r"\1***@", text)
    return re.sub(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", lambda m: f"\\x{ord(m.group()):02x}", text)


def zenodo_api_url(zenodo_url: str, record: str) -> str:
    return f"{zenodo_url.rstrip('/')}/api/records/{record}"
