"""HTTP(S) transfers: ranged GETs on keep-alive sessions (one per thread), with errors sorted for retry."""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import __version__
from .transfer import BUFFER_BYTES, NoRangeSupport, PermanentError, RemoteInfo, Sink, TransientError

USER_AGENT = f"dlwpt-provision/{__version__} (+https://github.com/dlwpt-provision/dlwpt-provision; data staging for Deep Learning with PyTorch)"
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
THROTTLE_STATUS = frozenset({403, 429})  # Zenodo answers 403 when it throttles a client

_local = threading.local()


def session() -> Any:
    """A requests.Session for this thread (keep-alive connection reuse)."""
    s = getattr(_local, "session", None)
    if s is None:
        import requests
        from requests.adapters import HTTPAdapter

        s = requests.Session()
        s.headers["User-Agent"] = USER_AGENT
        s.headers["Accept-Encoding"] = "identity"  # byte ranges must address the stored bytes
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=4, max_retries=0)
        s.mount("http://", adapter)
        s.mount("https://", adapter)
        _local.session = s
    return s


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds (it may be a number or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (now if now is not None else time.time()))


def _raise_for(response: Any, url: str, throttle_retries: bool = True) -> None:
    status = response.status_code
    if status in RETRYABLE_STATUS or (status == 403 and throttle_retries):
        raise TransientError(f"HTTP {status} from {url}", retry_after_seconds(response.headers.get("Retry-After")))
    raise PermanentError(f"HTTP {status} from {url}")


class HttpTransfer:
    """One URL. ``timeout_s`` bounds connecting and each read."""

    def __init__(self, url: str, timeout_s: float = 60.0) -> None:
        self.url = url
        self.label = url
        self.timeout_s = timeout_s

    def _get(self, headers: dict[str, str]) -> Any:
        import requests

        try:
            return session().get(self.url, headers=headers, stream=True, timeout=(min(self.timeout_s, 30.0), self.timeout_s))
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise TransientError(f"cannot connect to {self.url}: {type(exc).__name__}") from None
        except requests.RequestException as exc:
            raise PermanentError(f"bad request for {self.url}: {exc}") from None

    def info(self) -> RemoteInfo:
        response = self._get({"Range": "bytes=0-0"})
        with response:
            if response.status_code == 206:
                total = response.headers.get("Content-Range", "").rpartition("/")[2]
                return RemoteInfo(size=int(total) if total.isdigit() else None, ranges=True)
            if response.status_code == 200:
                length = response.headers.get("Content-Length")
                return RemoteInfo(size=int(length) if length and length.isdigit() else None, ranges=False)
            _raise_for(response, self.url)
        raise AssertionError("unreachable")

    def read_range(self, start: int, end: int, sink: Sink, on_open: Callable[[bool], None] | None = None, whole_ok: bool = False) -> None:
        response = self._get({"Range": f"bytes={start}-{end - 1}"})
        with response:
            if response.status_code == 200:
                length = response.headers.get("Content-Length")
                if start == 0 and (whole_ok or length == str(end)):
                    # the source ignores ranges: this answer is the whole file, take it rather than ask again
                    if on_open is not None:
                        on_open(False)
                    self._pump(response, int(length) if length and length.isdigit() else None, sink)
                    return
                raise NoRangeSupport(self.url)
            if response.status_code != 206:
                _raise_for(response, self.url)
            got = response.headers.get("Content-Range", "")
            if not got.startswith(f"bytes {start}-"):
                raise TransientError(f"{self.url} answered range {got!r} for bytes {start}-{end - 1}")
            if on_open is not None:
                on_open(True)
            self._pump(response, end - start, sink)

    def read_all(self, sink: Sink) -> None:
        response = self._get({})
        with response:
            if response.status_code != 200:
                _raise_for(response, self.url)
            length = response.headers.get("Content-Length")
            self._pump(response, int(length) if length and length.isdigit() else None, sink)

    def _pump(self, response: Any, expected: int | None, sink: Sink) -> None:
        """Hand the body to ``sink`` as it arrives: a dropped connection loses nothing already received."""
        import requests
        import urllib3

        got = 0
        raw = response.raw
        read1 = getattr(raw, "read1", None)  # urllib3 >= 2.3: whatever has arrived, up to the limit
        pieces = (
            iter(lambda: read1(BUFFER_BYTES, decode_content=False), b"") if read1 is not None
            else response.iter_content(chunk_size=64 * 1024)
        )
        try:
            for chunk in pieces:
                if expected is not None and got + len(chunk) > expected:
                    chunk = chunk[: expected - got]
                got += len(chunk)
                sink(chunk)
                if expected is not None and got >= expected:
                    break
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransientError(f"connection to {self.url} dropped after {got} bytes ({type(exc).__name__})") from None
        if expected is not None and got < expected:
            raise TransientError(f"{self.url} sent {got} of {expected} bytes")


def get_json(url: str, timeout_s: float = 30.0) -> Any:
    """GET a JSON document (the Zenodo API), raising Transient/PermanentError."""
    import requests

    try:
        response = session().get(url, timeout=timeout_s, headers={"Accept": "application/json"})
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise TransientError(f"cannot connect to {url}: {type(exc).__name__}") from None
    with response:
        if response.status_code != 200:
            _raise_for(response, url)
        try:
            return response.json()
        except ValueError:
            raise PermanentError(f"{url} did not return JSON") from None
