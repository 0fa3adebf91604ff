"""The per-host cap holds at the server, for connections and for transfers, in every mode: one pool per host, shared
by every archive and worker, and the summary says what the server saw.

Zenodo blocks an address with more than a few parallel downloads, and a proxy counts connections, idle keep-alives
included: the stand-in server counts both (connections from accept to close, requests from their first line to their
last write), and it is the truth the client's figures must equal.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provision.report import source_lines
from tests.support.dataset import build_luna_like, tree_md5s
from tests.support.server import Faults, FileServer
from tests.test_gcs import run_json
from tests.test_stage import expected_tree

CAP = 3


@pytest.mark.parametrize("mode", ["stream", "archive"])
def test_the_cap_holds_for_connections_and_transfers_and_the_summary_says_what_the_server_saw(
        tmp_path: Path, write_profile, capsys, mode: str) -> None:
    # three archives and a CSV, each several chunks long, at a capped rate: every worker wants a connection at once
    data = build_luna_like(tmp_path / "d", subsets=3, scans=4, raw_bytes=600_000)
    with FileServer(data.folder, Faults(rate_per_conn=1_500_000)) as srv:
        profile = write_profile({"dataset": str(data.manifest), "sources": [srv.url + "/mirror/"], "mode": mode, "connections": CAP,
                                 "segment_mb": 1})
        code, report = run_json(capsys, "stage", "-c", str(profile))
        assert code == 0, report
        assert tree_md5s(tmp_path / "root" / "part2" / "luna") == expected_tree(data)
        stats = srv.stats
        assert stats.max_connections_open <= CAP, f"{stats.max_connections_open} connections open at once, cap {CAP}"
        assert stats.max_requests_in_flight <= CAP, f"{stats.max_requests_in_flight} requests answered at once, cap {CAP}"
        assert stats.max_requests_in_flight == CAP, "the run used its cap (or this test shows nothing)"
        assert stats.connections_opened == stats.max_connections_open, "connections are reused, not closed and opened again"
        assert stats.connections_open == 0, "none is left open behind the run"
    host = {s["host"]: s for s in report["sources"]}["127.0.0.1"]
    assert (host["connections_used"], host["connections_opened"], host["transfers_at_once"]) == (
        stats.max_connections_open, stats.connections_opened, stats.max_requests_in_flight), "the summary's figures are the server's"
    assert f"at most {CAP} at once over {CAP} connection(s) (cap {CAP})" in "\n".join(source_lines(report["sources"]))


class ConnectionCounter:
    """A loopback TCP relay in front of a server that cannot count for itself (the storage emulator): connections
    open at once, from accept until either side ends them, and opened in all."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.open = self.most = self.opened = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.open += 1
                self.opened += 1
                self.most = max(self.most, self.open)
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        server = socket.create_connection(self.upstream)
        ended = threading.Event()

        def end() -> None:
            """The connection is over once either side ends it (counted before the other side can learn it: the
            emulator closes after every answer, and the client's next connection must not overlap this one)."""
            with self.lock:
                if not ended.is_set():
                    ended.set()
                    self.open -= 1

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while chunk := src.recv(1 << 16):
                    dst.sendall(chunk)
            except OSError:
                pass
            finally:
                end()
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        back = threading.Thread(target=pump, args=(server, client), daemon=True)
        back.start()
        pump(client, server)
        back.join()
        client.close()
        server.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def counted_emulator(emulator: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ConnectionCounter]:
    counter = ConnectionCounter(emulator)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", counter.url)
    yield counter
    counter.close()


def test_a_bucket_source_keeps_to_the_cap(tmp_path: Path, write_profile, counted_emulator: ConnectionCounter, capsys) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from provision.staging.transport import gcs

    data = build_luna_like(tmp_path / "d", subsets=3, scans=4, raw_bytes=600_000)
    gcs._clients.clear()  # noqa: SLF001 - a client for this emulator
    uploader = storage.Client(project="test", credentials=AnonymousCredentials())
    uploader._bucket_metadata_cache = None  # noqa: SLF001 - no request of its own in the background
    bucket = uploader.create_bucket("luna-cap")
    for key in data.files:
        bucket.blob(f"luna16/{key}").upload_from_string((data.folder / key).read_bytes())
    uploader._http.close()  # noqa: SLF001 - the test's own connection is not the run's
    deadline = time.monotonic() + 10
    while counted_emulator.open and time.monotonic() < deadline:
        time.sleep(0.01)
    before = counted_emulator.opened
    counted_emulator.most = counted_emulator.open
    try:
        profile = write_profile({"dataset": str(data.manifest), "sources": [f"gs://{bucket.name}/luna16/"], "mode": "stream",
                                 "connections": CAP, "segment_mb": 1})
        code, report = run_json(capsys, "stage", "-c", str(profile))
    finally:
        gcs._clients.clear()  # noqa: SLF001
    assert code == 0, report
    assert tree_md5s(tmp_path / "root" / "part2" / "luna") == expected_tree(data)
    assert counted_emulator.most <= CAP, f"{counted_emulator.most} connections to the bucket at once, cap {CAP}"
    host = {s["host"]: s for s in report["sources"]}["127.0.0.1"]
    assert host["transfers_at_once"] <= CAP and host["connections_used"] <= CAP, host
    assert host["connections_opened"] == counted_emulator.opened - before, "the summary counts the connections the bucket saw"
