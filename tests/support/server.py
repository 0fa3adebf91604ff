"""A loopback HTTP file server for tests and benchmarks: Range support, throttling, injected faults,
and a fake Zenodo (``/records/<rec>/files/<key>`` and ``/api/records/<rec>``).

It models what the real Zenodo does (../shared/REAL_WORLD.md): an HTML page with status 200 where a
file was asked for, 403 with an "unusual traffic" page above a number of parallel downloads from one
client, and a request budget per window with X-RateLimit-* headers and 429 + Retry-After.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Faults:
    """What the server does wrong. Probabilities apply per request; ``seed`` makes runs repeatable."""

    drop_rate: float = 0.0          # close the connection part-way through the body
    error_rate: float = 0.0         # answer 503 or 429 with Retry-After
    retry_after_s: int = 1
    corrupt_once: set[str] = field(default_factory=set)  # keys whose first body gets a flipped byte
    corrupt_at: dict[str, int] = field(default_factory=dict)  # key -> file offset flipped in every body covering it
    corrupt_once_at: dict[str, int] = field(default_factory=dict)  # key -> offset of 64 bytes garbled in the first body covering it
    trickle_s: float | None = None  # send one byte, then wait this long, for ever (a server that never gives up on us)
    no_ranges: bool = False         # ignore Range headers (200 with the whole file)
    missing: set[str] = field(default_factory=set)       # keys answered with 404
    rate_per_conn: float | None = None  # bytes/s cap per connection
    seed: int = 1234
    max_faults: int | None = None   # stop injecting after this many
    html_200: bool = False          # answer every file request with 200 and an HTML block page
    max_conns: int | None = None    # more file requests than this at once: 403 with the block page (Zenodo)
    rate_limit: int | None = None   # requests per window; every answer carries X-RateLimit-*, over it 429 + Retry-After
    rate_window_s: float = 60.0
    hold_after: int | None = None   # once this many body bytes went out, every body waits until ``release()``
    # key -> another file of the same size whose bytes answer every ranged request of at most small_range_bytes: a CDN
    # edge that serves small ranges (a zip directory's reads) from a stale copy, and large ones (the body) from the origin
    small_ranges_from: dict[str, Path] = field(default_factory=dict)
    small_range_bytes: int = 64 * 1024


BLOCK_PAGE = (b"<!DOCTYPE html><html><head><title>Access blocked</title></head><body><h1>Access denied</h1>"
              b"<p>Access to this resource has been blocked due to unusual traffic from your network.</p>"
              + b"<!-- padding -->" * 300 + b"</body></html>")


LAST_WRITE_BYTES = 64 * 1024  # an answer's last write, after which its request no longer counts in flight


@dataclass
class Stats:
    bytes_sent: int = 0
    requests: list[dict] = field(default_factory=list)
    faults: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: int = 0
    max_in_flight: int = 0          # file requests being answered at once (blocked ones included)
    # what a proxy or Zenodo counts: connections open at once (idle keep-alives included), from accept to close, and
    # requests of any kind (files, the API, errors) being answered at once
    connections_open: int = 0
    max_connections_open: int = 0
    connections_opened: int = 0     # over the server's life: many more than the most open means connections were not reused
    requests_in_flight: int = 0
    max_requests_in_flight: int = 0
    served_per_window: dict[int, int] = field(default_factory=dict)  # rate window -> requests counted in it

    def statuses(self) -> dict[int, int]:
        with self.lock:
            counts: dict[int, int] = {}
            for r in self.requests:
                counts[r["status"]] = counts.get(r["status"], 0) + 1
            return counts

    def bytes_for(self, key: str) -> int:
        with self.lock:
            return sum(r["sent"] for r in self.requests if r["key"] == key)


class FileServer:
    """Serves the files of ``folder``: ``/mirror/<key>``, ``/records/<rec>/files/<key>``, ``/api/records/<rec>``."""

    def __init__(self, folder: Path, faults: Faults | None = None, records: dict[str, list[str]] | None = None,
                 api_shape: str = "new") -> None:
        self.folder = Path(folder)
        self.faults = faults or Faults()
        self.records = records or {}
        self.api_shape = api_shape
        self.stats = Stats()
        self._rng = random.Random(self.faults.seed)
        self._corrupted: set[object] = set()
        self._window_start = time.time()
        self.released = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # as nginx and the CDNs in front of Zenodo and GCS do (tcp_nodelay): without it the last short segment of
            # an answer on a kept-alive connection waits for the client's delayed ACK, 40 ms a request on loopback
            disable_nagle_algorithm = True

            def log_message(self, *args: object) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                server._connection(+1)

            def finish(self) -> None:
                try:
                    super().finish()
                finally:
                    server._connection(-1)

            def do_GET(self) -> None:
                server._counted(self)

            def do_HEAD(self) -> None:
                server._counted(self, head=True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def release(self) -> None:
        """Let bodies held by ``Faults.hold_after`` go on."""
        self.faults.hold_after = None
        self.released.set()

    def unread_bytes(self) -> int:
        """Bytes of this server's connections still in kernel buffers: sent but not yet acknowledged, or received by a
        client but not yet read by it (``/proc/net/tcp``); 0 where that cannot be read."""
        port = self.httpd.server_address[1]
        try:
            rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
        except OSError:
            return 0
        unread = 0
        for row in rows:
            fields = row.split()
            local, remote, (tx, rx) = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16), fields[4].split(":")
            if local == port:
                unread += int(tx, 16)
            elif remote == port:
                unread += int(rx, 16)
        return unread

    def _hold(self) -> None:
        hold = self.faults.hold_after
        if hold is not None and self.stats.bytes_sent >= hold:
            self.released.wait(timeout=120)

    def _fault(self, rate: float) -> bool:
        with self.stats.lock:
            if self.faults.max_faults is not None and self.stats.faults >= self.faults.max_faults:
                return False
            hit = rate > 0 and self._rng.random() < rate
            if hit:
                self.stats.faults += 1
            return hit

    def _record(self, h: BaseHTTPRequestHandler, key: str, status: int, sent: int) -> None:
        """Log a finished request (its body bytes were counted in ``bytes_sent`` as they went out)."""
        with self.stats.lock:
            self.stats.requests.append({"key": key, "status": status, "sent": sent, "range": h.headers.get("Range"),
                                        "user_agent": h.headers.get("User-Agent"), "authorization": h.headers.get("Authorization"),
                                        "started": getattr(h, "started", None)})

    def _simple(self, h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str] | None = None, key: str = "") -> None:
        h.send_response(status)
        for k, v in {**getattr(h, "rate_headers", {}), **(headers or {})}.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        if not body:
            self._answered(h)
        h.end_headers()
        self._answered(h)
        h.wfile.write(body)
        self._record(h, key, status, 0)

    def _rate(self) -> tuple[dict[str, str], int | None]:
        """Count this request in the current window: the X-RateLimit-* headers, and Retry-After seconds when over."""
        if self.faults.rate_limit is None:
            return {}, None
        with self.stats.lock:
            now = time.time()
            window = int((now - self._window_start) // self.faults.rate_window_s)
            reset = self._window_start + (window + 1) * self.faults.rate_window_s
            used = self.stats.served_per_window.get(window, 0)
            over = used >= self.faults.rate_limit
            if not over:
                self.stats.served_per_window[window] = used + 1
            remaining = max(0, self.faults.rate_limit - used - (0 if over else 1))
        headers = {"X-RateLimit-Limit": str(self.faults.rate_limit), "X-RateLimit-Remaining": str(remaining), "X-RateLimit-Reset": str(int(reset + 0.999))}
        return headers, (max(1, int(reset - now + 0.999)) if over else None)

    def _connection(self, change: int) -> None:
        with self.stats.lock:
            self.stats.connections_open += change
            self.stats.connections_opened += max(0, change)
            self.stats.max_connections_open = max(self.stats.max_connections_open, self.stats.connections_open)

    def _counted(self, h: BaseHTTPRequestHandler, head: bool = False) -> None:
        """One request, counted from its first line read until its last write begins: once that write is on its way a
        client may have it all and send its next request before this thread runs again, so counting to the write's end
        would count a client that keeps to its cap as over it."""
        with self.stats.lock:
            self.stats.requests_in_flight += 1
            self.stats.max_requests_in_flight = max(self.stats.max_requests_in_flight, self.stats.requests_in_flight)
        h.counted = ["request"]  # type: ignore[attr-defined]
        try:
            self._handle(h, head)
        finally:
            self._answered(h)

    def _answered(self, h: BaseHTTPRequestHandler) -> None:
        """The answer's last write begins (or it ended without one): the request is no longer counted in flight."""
        with self.stats.lock:
            for what in getattr(h, "counted", ()):
                if what == "request":
                    self.stats.requests_in_flight -= 1
                else:
                    self.stats.in_flight -= 1
            h.counted = []  # type: ignore[attr-defined]

    def _handle(self, h: BaseHTTPRequestHandler, head: bool = False) -> None:
        h.started = time.monotonic()  # type: ignore[attr-defined]
        rate_headers, retry_after = self._rate()
        if retry_after is not None:
            return self._simple(h, 429, b"too many requests", {**rate_headers, "Retry-After": str(retry_after)}, key="rate")
        h.rate_headers = rate_headers  # type: ignore[attr-defined]
        path = unquote(urlsplit(h.path).path)
        api = re.fullmatch(r"/api/records/(\w+)", path)
        if api:
            return self._api(h, api.group(1))
        m = re.fullmatch(r"/records/(\w+)/files/([^/]+)", path) or re.fullmatch(r"/mirror/()([^/]+)", path)
        if not m:
            return self._simple(h, 404, b"not found")
        key = m.group(2)
        file = self.folder / key
        if key in self.faults.missing or not file.is_file():
            return self._simple(h, 404, b"no such file", key=key)
        with self.stats.lock:
            self.stats.in_flight += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
            crowded = self.faults.max_conns is not None and self.stats.in_flight > self.faults.max_conns
            h.counted.append("file")  # type: ignore[attr-defined]
        if crowded:
            return self._simple(h, 403, BLOCK_PAGE, {"Content-Type": "text/html; charset=utf-8"}, key=key)
        if self.faults.html_200:
            return self._simple(h, 200, BLOCK_PAGE, {"Content-Type": "text/html; charset=utf-8"}, key=key)
        return self._serve_file(h, key, file, head)

    def _serve_file(self, h: BaseHTTPRequestHandler, key: str, file: Path, head: bool) -> None:
        if self._fault(self.faults.error_rate):
            status = self._rng.choice([503, 429])
            return self._simple(h, status, b"busy", {"Retry-After": str(self.faults.retry_after_s)}, key=key)
        size = file.stat().st_size
        start, end = 0, size - 1
        status = 200
        rng = h.headers.get("Range")
        if rng and not self.faults.no_ranges:
            mm = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if mm:
                start = int(mm.group(1))
                end = min(int(mm.group(2)), size - 1) if mm.group(2) else size - 1
                if start >= size:
                    return self._simple(h, 416, b"", {"Content-Range": f"bytes */{size}"}, key=key)
                status = 206
        length = end - start + 1
        stale = self.faults.small_ranges_from.get(key)
        if stale is not None and status == 206 and length <= self.faults.small_range_bytes:
            assert stale.stat().st_size == size, "a stale copy of another size would be told by its Content-Range"
            file = stale
        h.send_response(status)
        for k, v in getattr(h, "rate_headers", {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(length))
        h.send_header("Accept-Ranges", "none" if self.faults.no_ranges else "bytes")
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        if head:
            self._answered(h)
        h.end_headers()
        if head:
            return self._record(h, key, status, 0)
        drop_at = None
        if length > 1 and self._fault(self.faults.drop_rate):
            drop_at = self._rng.randrange(1, length)
        plain = (drop_at is None and not self.faults.rate_per_conn and key not in self.faults.corrupt_once and key not in self.faults.corrupt_at
                 and key not in self.faults.corrupt_once_at and self.faults.trickle_s is None and self.faults.hold_after is None)
        if plain:  # nothing to inject: hand the bytes to the kernel (a remote server's CPU is not the client's)
            return self._sendfile(h, key, file, start, length, status)
        corrupt = False
        with self.stats.lock:
            if key in self.faults.corrupt_once and key not in self._corrupted and length > 16:
                self._corrupted.add(key)
                corrupt = True
        sent = 0
        t0 = time.monotonic()
        try:
            with open(file, "rb") as fh:
                fh.seek(start)
                while sent < length:
                    # small writes when throttled, so little sits unread in socket buffers when a client dies
                    n = min(64 * 1024 if self.faults.rate_per_conn else 256 * 1024, length - sent)
                    if self.faults.trickle_s is not None:
                        n = 1
                        time.sleep(self.faults.trickle_s)
                    if drop_at is not None:
                        n = min(n, drop_at - sent)
                    self._hold()
                    chunk = fh.read(n)
                    if corrupt and sent == 0:
                        chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                    flip = self.faults.corrupt_at.get(key)
                    once = self.faults.corrupt_once_at.get(key)
                    if once is not None and start + sent <= once and once + 64 <= start + sent + len(chunk):
                        with self.stats.lock:
                            garble = (key, once) not in self._corrupted
                            self._corrupted.add((key, once))
                        if garble:  # 64 bytes of noise: a deflate stream that no longer decodes, as a bad link delivers it
                            i = once - start - sent
                            chunk = chunk[:i] + bytes(b ^ 0xA5 for b in chunk[i : i + 64]) + chunk[i + 64 :]
                    if flip is not None and start + sent <= flip < start + sent + len(chunk):
                        i = flip - start - sent
                        chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
                    rate = self.faults.rate_per_conn
                    if rate:  # paced before the write: the last byte goes out when the cap says, and the answer is then over
                        ahead = (sent + len(chunk)) / rate - (time.monotonic() - t0)
                        if ahead > 0:
                            time.sleep(ahead)
                        elif ahead < -0.05:  # a client that stalled gets no burst to catch up: a capped link has none
                            t0 = time.monotonic() - (sent + len(chunk)) / rate
                    if sent + len(chunk) >= length or (drop_at is not None and sent + len(chunk) >= drop_at):
                        self._answered(h)
                    h.wfile.write(chunk)
                    sent += len(chunk)
                    with self.stats.lock:
                        self.stats.bytes_sent += len(chunk)
                    if drop_at is not None and sent >= drop_at:
                        h.wfile.flush()
                        h.close_connection = True
                        break
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True
        finally:
            self._record(h, key, status, sent)

    def _sendfile(self, h: BaseHTTPRequestHandler, key: str, file: Path, start: int, length: int, status: int) -> None:
        sent = 0
        try:
            with open(file, "rb") as fh:
                while sent < length:
                    left = length - sent
                    if left <= LAST_WRITE_BYTES:
                        self._answered(h)
                    # the last write short, so that the count ends close to when the client can have it all
                    count = min(8 << 20, left if left <= LAST_WRITE_BYTES else left - LAST_WRITE_BYTES)
                    n = h.connection.sendfile(fh, offset=start + sent, count=count)
                    if n == 0:
                        break
                    sent += n
                    with self.stats.lock:
                        self.stats.bytes_sent += n
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True
        finally:
            self._record(h, key, status, sent)

    def _api(self, h: BaseHTTPRequestHandler, record: str) -> None:
        if record not in self.records:
            return self._simple(h, 404, b'{"status": 404}', {"Content-Type": "application/json"})
        import hashlib

        entries = []
        for key in self.records[record]:
            data = (self.folder / key).read_bytes()
            md5 = hashlib.md5(data).hexdigest()
            if self.api_shape in ("new", "rdm"):
                entries.append({"key": key, "size": len(data), "checksum": f"md5:{md5}",
                                "links": {"self": f"{self.url}/records/{record}/files/{key}/content"}})
            else:
                entries.append({"filename": key, "filesize": len(data), "checksum": md5})
        files: object = entries
        if self.api_shape == "rdm":  # InvenioRDM's own form: files.entries, keyed by file name
            files = {"enabled": True, "entries": {e["key"]: {k: v for k, v in e.items() if k != "key"} for e in entries}}
        self._simple(h, 200, json.dumps({"id": record, "files": files}).encode(), {"Content-Type": "application/json"}, key="api")


def serve(folder: Path, **kwargs: object) -> FileServer:
    return FileServer(folder, **kwargs)  # type: ignore[arg-type]


def main() -> None:  # pragma: no cover - manual use: python -m tests.support.server FOLDER
    import sys

    with FileServer(Path(sys.argv[1])) as s:
        print(s.url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
