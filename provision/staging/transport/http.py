"""HTTP(S) transfers: ranged GETs on kept-alive connections, one pool per host (:mod:`.pool`), with errors sorted for
retry.

Every request goes through its host's gate (:mod:`.throttle`), and every answer is read to its end (or its connection
closed) before the gate's slot is given back, so that the connection goes back to the pool for the next request. An answer is only taken as the file
when it is what was asked for: a 206 for the range, or a 200 whose length is the file's size and
whose type is not a web page. Anything else (a login page, Zenodo's "unusual traffic" page) fails
that source at once, saying what came back.
"""

from __future__ import annotations

import email.utils
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from ...sources import credentials_for
from ..signals import NoRangeSupport, NotTheFile, PermanentError, TransientError
from .protocol import BUFFER_BYTES, RemoteInfo, Sink
from .throttle import HostGate

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
THROTTLE_STATUS = frozenset({403, 429})  # Zenodo answers 403 (with an HTML page) when it blocks a client
BLOCK_WORDS = ("unusual traffic", "has been blocked", "too many requests", "rate limit")
PEEK_BYTES = 4096
MIN_BYTES_PER_S = 1024  # slower than this over a whole data.timeout_s is a stalled transfer, not a slow one

def session(gate: HostGate) -> Any:
    """This thread's requests.Session for ``gate``'s host, on the host's one connection pool (:mod:`.pool`)."""
    from .pool import HostPool  # requests: imported where a transfer is made, not at start-up

    return gate.kept(HostPool).session()


def _unresolved(exc: BaseException) -> bool:
    """Is this connection error a host name that does not resolve? (requests wraps urllib3's NameResolutionError,
    which wraps socket.gaierror, a few levels down.)"""
    seen: list[object] = [exc]
    for _ in range(8):
        if not seen:
            return False
        item = seen.pop()
        if isinstance(item, socket.gaierror) or type(item).__name__ == "NameResolutionError":
            return True
        if isinstance(item, BaseException):
            seen += [x for x in (*item.args, getattr(item, "reason", None), item.__cause__, item.__context__) if isinstance(x, BaseException)]
    return False


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


def _size_text(n: int | None) -> str:
    if n is None:
        return "of unknown length"
    return f"of {n / 1e3:.1f} kB" if n < 1_000_000 else f"of {n / 1e6:.1f} MB"


def _peek(response: Any) -> str:
    """The start of a body we will not keep (to say what it was)."""
    try:
        return response.raw.read(PEEK_BYTES, decode_content=True).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - only for the message
        return ""


def _is_page(response: Any, head: str) -> bool:
    kind = response.headers.get("Content-Type", "").lower()
    return kind.startswith(("text/html", "application/xhtml")) or head.lstrip()[:15].lower().startswith(("<!doctype html", "<html"))


def describe_answer(response: Any, head: str) -> str:
    """'an HTML page of 5.0 kB, status 200' and, for a block page, what it says."""
    length = response.headers.get("Content-Length")
    size = _size_text(int(length) if length and length.isdigit() else None)
    what = f"an HTML page {size}" if _is_page(response, head) else f"a body {size} ({response.headers.get('Content-Type', 'no type')})"
    said = next((w for w in BLOCK_WORDS if w in head.lower()), None)
    return f"{what}, status {response.status_code}" + (f" saying '{said}'" if said else "")


class HttpTransfer:
    """One URL. ``timeout_s`` bounds connecting and each read; ``gate`` admits requests to its host."""

    def __init__(self, url: str, timeout_s: float = 60.0, gate: HostGate | None = None, expected_size: int | None = None) -> None:
        self.url = url
        self.label = url
        self.timeout_s = timeout_s
        self.gate = gate or HostGate(url, 64)
        self.expected_size = expected_size  # the manifest's: a server that states another total is not serving that file

    def _check_total(self, content_range: str) -> None:
        total = content_range.rpartition("/")[2]
        if self.expected_size is not None and total.isdigit() and int(total) != self.expected_size:
            raise PermanentError(f"{self.url} holds {int(total)} bytes, the manifest says {self.expected_size}: the manifest's size "
                                 "is wrong, or the file there is another one")

    def _get(self, headers: dict[str, str]) -> Any:
        import requests

        try:
            response = session(self.gate).get(self.url, headers=headers, stream=True, timeout=(min(self.timeout_s, 30.0), self.timeout_s),
                                     auth=credentials_for(self.url))
        except (requests.ConnectionError, requests.Timeout) as exc:
            host = urlsplit(self.url).hostname
            if _unresolved(exc):
                raise TransientError(f"cannot resolve the host name {host} (no network, no DNS, or a mistyped URL)", unreachable="unresolved") from None
            if isinstance(exc, requests.Timeout):  # connected but no answer, or no connection within the timeout
                raise TransientError(f"{host} did not answer within {self.timeout_s:g} s (data.timeout_s)", unreachable="silent") from None
            raise TransientError(f"cannot connect to {self.url}: {type(exc).__name__}", unreachable="refused") from None
        except requests.RequestException as exc:
            raise PermanentError(f"bad request for {self.url}: {exc}") from None
        try:
            self.gate.rate_headers(response.headers)
        except BaseException:
            response.close()
            raise
        return response

    def _refused(self, response: Any) -> None:
        """Raise for an error status: a throttle (403/429, told to the gate), a retryable one, or a final one."""
        status = response.status_code
        retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        if status in THROTTLE_STATUS:
            what = describe_answer(response, _peek(response)) if status == 403 else f"HTTP {status}"
            self.gate.throttled(f"HTTP {status}" + (" block page" if "page" in what else ""), retry_after)
            raise TransientError(f"{self.url} refused us: {what}", retry_after, throttle=True)
        if status in RETRYABLE_STATUS:
            raise TransientError(f"HTTP {status} from {self.url}", retry_after)
        raise PermanentError(f"HTTP {status} from {self.url}")

    def _not_the_file(self, response: Any, expected: str) -> NotTheFile:
        head = _peek(response)
        what = describe_answer(response, head)
        if _is_page(response, head):
            self.gate.throttled(f"HTTP {response.status_code} web page instead of the file")
            return NotTheFile(f"{self.url} answered with {what} instead of {expected}: the server may be blocking this network "
                              "(mirror the data once to a bucket or a folder and stage from there)")
        return NotTheFile(f"{self.url} answered with {what} instead of {expected}")

    def info(self) -> RemoteInfo:
        with self.gate.slot(), self._get({"Range": "bytes=0-0"}) as response:
            if response.status_code == 206:
                total = response.headers.get("Content-Range", "").rpartition("/")[2]
                _drain(response, 1)  # the one byte: read, the connection goes back to the pool instead of being closed
                return RemoteInfo(size=int(total) if total.isdigit() else None, ranges=True)
            if response.status_code == 200:
                if _is_page(response, ""):
                    raise self._not_the_file(response, "the file")
                length = response.headers.get("Content-Length")
                return RemoteInfo(size=int(length) if length and length.isdigit() else None, ranges=False)
            self._refused(response)
        raise AssertionError("unreachable")

    def read_range(self, start: int, end: int, sink: Sink, on_open: Callable[[bool], None] | None = None, whole_size: int | None = None) -> None:
        with self.gate.slot(), self._get({"Range": f"bytes={start}-{end - 1}"}) as response:
            if response.status_code == 200:
                length = response.headers.get("Content-Length")
                if start == 0 and whole_size is not None and length == str(whole_size) and not _is_page(response, ""):
                    # the source ignores ranges: this answer is the whole file, take it rather than ask again
                    if on_open is not None:
                        on_open(False)
                    self._pump(response, whole_size, sink)
                    return
                if _is_page(response, "") or (start == 0 and whole_size is not None and length is not None):
                    raise self._not_the_file(response, f"bytes {start}-{end - 1}" + (f" of a {_size_text(whole_size)[3:]} file" if whole_size else ""))
                raise NoRangeSupport(self.url)
            if response.status_code == 416:
                self._check_total(response.headers.get("Content-Range", ""))
            if response.status_code != 206:
                self._refused(response)
            got = response.headers.get("Content-Range", "")
            self._check_total(got)
            if not got.startswith(f"bytes {start}-"):
                raise TransientError(f"{self.url} answered range {got!r} for bytes {start}-{end - 1}")
            if on_open is not None:
                on_open(True)
            self._pump(response, end - start, sink)

    def json(self) -> Any:
        """The URL's JSON document (the Zenodo API)."""
        with self.gate.slot(), self._get({"Accept": "application/json"}) as response:
            if response.status_code != 200:
                self._refused(response)
            try:
                return response.json()
            except ValueError:
                raise PermanentError(f"{self.url} did not return JSON") from None

    def read_all(self, sink: Sink, size: int | None = None) -> None:
        with self.gate.slot(), self._get({}) as response:
            if response.status_code != 200:
                self._refused(response)
            length = response.headers.get("Content-Length")
            if _is_page(response, "") or (size is not None and length is not None and length != str(size)):
                raise self._not_the_file(response, "the file" + (f" ({_size_text(size)[3:]})" if size else ""))
            self._pump(response, int(length) if length and length.isdigit() else size, sink)

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
        # timeout_s bounds each read; this bounds progress: a server trickling a byte at a time is given up on
        window_start, window_bytes = time.monotonic(), 0
        try:
            with self.gate.reading(response):
                for chunk in pieces:
                    if expected is not None and got + len(chunk) > expected:
                        chunk = chunk[: expected - got]
                    got += len(chunk)
                    sink(chunk)
                    if expected is not None and got >= expected:
                        break
                    window_bytes += len(chunk)
                    elapsed = time.monotonic() - window_start
                    if elapsed >= self.timeout_s:
                        if window_bytes < MIN_BYTES_PER_S * elapsed:
                            raise TransientError(f"{self.url} sent {window_bytes} bytes in {elapsed:.0f} s: stalled "
                                                 f"(less than {MIN_BYTES_PER_S // 1024} kB/s over data.timeout_s)", stalled=True)
                        window_start, window_bytes = time.monotonic(), 0
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransientError(f"connection to {self.url} dropped after {got} bytes ({type(exc).__name__})") from None
        if expected is not None and got < expected:
            raise TransientError(f"{self.url} sent {got} of {expected} bytes")


def _drain(response: Any, most: int) -> None:
    """Read what is left of a short answer (at most ``most`` bytes), so that its connection can serve the next request."""
    try:
        response.raw.read(most, decode_content=False)
    except Exception:  # noqa: BLE001 - a connection that fails here is closed with the answer, as before
        pass


def get_json(url: str, timeout_s: float = 30.0, gate: HostGate | None = None) -> Any:
    """GET a JSON document (the Zenodo API), raising Transient/PermanentError."""
    return HttpTransfer(url, timeout_s, gate).json()
