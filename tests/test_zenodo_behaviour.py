"""Staging against a stand-in that behaves as the real Zenodo does (../shared/REAL_WORLD.md): HTML pages with
status 200, 403 block pages above a number of parallel downloads, a request budget with rate-limit headers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from provision.cli import main
from provision.staging.transport.zenodo import parse_record_files
from tests.support.dataset import Built, build_luna_like, records_of, tree_md5s
from tests.support.server import Faults
from tests.test_stage import expected_tree, stage_json, total_bytes


def test_an_html_page_with_status_200_fails_that_source_within_seconds(tmp_path: Path, serve, write_profile, capsys) -> None:
    big = build_luna_like(tmp_path / "big", subsets=1, scans=1, raw_bytes=10_500_000, extra_plain=False)
    blocked = serve(Faults(html_200=True), folder=big.folder)
    profile = write_profile({"dataset": str(big.manifest), "sources": [blocked.url + "/mirror/"], "blocked_patience_min": 0.05})
    start = time.monotonic()
    code, report = stage_json(profile, capsys)
    assert time.monotonic() - start < 20, "no wait without a deadline"
    assert code == 1
    error = report["files"][0]["error"]
    assert "an HTML page of 5." in error and "status 200" in error and "may be blocking this network" in error, error
    assert "unusual traffic" in error
    assert not list((tmp_path / "root").rglob("subset0.zip")), "the page never takes the file's name"

    good = serve(folder=big.folder)
    profile = write_profile({"dataset": str(big.manifest), "sources": [blocked.url + "/mirror/", good.url + "/mirror/"],
                             "blocked_patience_min": 0.05}, name="two.yaml")
    code, report = stage_json(profile, capsys)
    assert code == 0 and report["files"][0]["source"] == good.url + "/mirror/subset0.zip"
    assert any("HTML page" in r for r in report["files"][0]["retries"])
    assert tree_md5s(tmp_path / "root" / "part2" / "luna") == expected_tree(big)


def test_a_connection_limit_answered_with_block_pages_halves_the_connections(built: Built, tmp_path: Path, serve, write_profile,
                                                                             capsys) -> None:
    many = build_luna_like(tmp_path / "many", subsets=4, scans=2, raw_bytes=1_500_000)
    srv = serve(Faults(max_conns=2, rate_per_conn=4e6), folder=many.folder)  # capped like Zenodo: downloads overlap
    profile = write_profile({"dataset": str(many.manifest), "sources": [srv.url + "/mirror/"], "connections": 8, "blocked_patience_min": 2})
    code, report = stage_json(profile, capsys)
    assert code == 0, report
    assert tree_md5s(tmp_path / "root" / "part2" / "luna") == expected_tree(many)
    served = sum(r["sent"] for r in srv.stats.requests)
    assert served <= 1.25 * total_bytes(many)
    host = {s["host"]: s for s in report["sources"]}["127.0.0.1"]
    assert host["throttle_events"] >= 1 and host["connections_now"] <= 2 < host["connections_cap"] == 8
    assert "HTTP 403 block page" in host["throttle_reasons"] and host["waited_s"] > 0
    from provision.report import source_lines

    text = "\n".join(source_lines(report["sources"]))
    assert "source 127.0.0.1" in text and "throttled" in text and "provision mirror" in text


def test_the_rate_limit_is_never_exceeded(tmp_path: Path, serve, write_profile, capsys) -> None:
    data = build_luna_like(tmp_path / "d", subsets=4, scans=2, raw_bytes=1_200_000)
    srv = serve(Faults(rate_limit=10, rate_window_s=2.0), folder=data.folder)
    srv.records = records_of(data)
    profile = write_profile({"dataset": str(data.manifest), "sources": ["zenodo"], "zenodo_url": srv.url, "connections": 8})
    code, report = stage_json(profile, capsys)
    assert code == 0, report
    assert tree_md5s(tmp_path / "root" / "part2" / "luna") == expected_tree(data)
    assert 429 not in srv.stats.statuses(), "the client paused when the budget was spent instead of being refused"
    assert len(srv.stats.served_per_window) > 1, "the run needed more than one window"
    assert max(srv.stats.served_per_window.values()) <= 10


def test_a_429_with_retry_after_is_waited_out(tmp_path: Path, serve, write_profile, capsys) -> None:
    data = build_luna_like(tmp_path / "d", subsets=2, scans=1, raw_bytes=400_000)
    srv = serve(Faults(rate_limit=1, rate_window_s=1.0), folder=data.folder)
    profile = write_profile({"dataset": str(data.manifest), "sources": [srv.url + "/mirror/"], "connections": 4, "blocked_patience_min": 1})
    code, report = stage_json(profile, capsys)
    assert code == 0, report
    assert tree_md5s(tmp_path / "root" / "part2" / "luna") == expected_tree(data)
    host = report["sources"][0]
    assert host["connections_cap"] == 4 and host["waited_s"] >= 1


def test_a_blocked_source_is_retried_for_its_patience_then_abandoned_with_advice(tmp_path: Path, serve, write_profile, capsys) -> None:
    data = build_luna_like(tmp_path / "d", subsets=1, scans=1, raw_bytes=300_000, extra_plain=False)
    srv = serve(Faults(max_conns=0), folder=data.folder)  # every download refused with the block page
    profile = write_profile({"dataset": str(data.manifest), "sources": [srv.url + "/mirror/"], "blocked_patience_min": 0.2})
    start = time.monotonic()
    assert main(["stage", "-c", str(profile)]) == 1
    elapsed = time.monotonic() - start
    captured = capsys.readouterr()
    assert 11 <= elapsed < 40, "patient for its budget (12 s here), then it gives up"
    assert "still refused after 0." in captured.out and "(data.blocked_patience_min: 0.2)" in captured.out
    assert "throttled" in captured.out and "HTTP 403 block page" in captured.out
    assert "provision mirror" in captured.out and "the server refused this network" in captured.out
    assert srv.stats.statuses()[403] >= 2


def test_the_zenodo_host_starts_at_four_connections() -> None:
    from provision.config import load_config

    config = load_config("colab", environ={})
    assert config.data.host_connections == {"zenodo.org": 4} and config.data.connections == 8
    from provision.staging.transport.throttle import Throttle

    throttle = Throttle(config.data.connections_to)
    assert throttle.gate("https://zenodo.org/records/1/files/a.zip?download=1").record.cap == 4
    assert throttle.gate("https://storage.googleapis.com/b/x").record.cap == 8


def test_a_kept_alive_connection_answers_without_nagles_wait(built: Built, serve) -> None:
    """Real front ends send an answer's last short segment at once (nginx's tcp_nodelay, on by default); a stand-in
    that did not would add the client's delayed ACK, 40 ms, to every request after a connection's first, and make
    small chunks look costly where they are not."""
    from provision.staging.transport.http import HttpTransfer

    srv = serve()
    key = max(built.files, key=lambda k: (built.folder / k).stat().st_size)
    step = (built.folder / key).stat().st_size // 20
    transfer = HttpTransfer(f"{srv.url}/mirror/{key}", 30.0)
    transfer.read_range(0, 1000, lambda piece: None)  # the connection is open and kept
    start = time.monotonic()
    for i in range(20):
        transfer.read_range(i * step, (i + 1) * step, lambda piece: None)
    took = time.monotonic() - start
    assert took < 0.4, f"20 requests on a kept-alive connection took {took:.2f} s: 40 ms each is Nagle's algorithm"


@pytest.mark.parametrize("answer", [
    {"files": [{"key": "subset0.zip", "size": 10, "checksum": "md5:AA11"}]},
    {"files": [{"filename": "subset0.zip", "filesize": 10, "checksum": "aa11"}]},
    {"files": {"enabled": True, "entries": {"subset0.zip": {"size": 10, "checksum": "md5:aa11"}}}},
    {"files": {"entries": [{"key": "subset0.zip", "size": 10, "checksum": "md5:aa11"}]}},
    {"enabled": True, "entries": [{"key": "subset0.zip", "size": 10, "checksum": "md5:aa11"}], "links": {}},
])
def test_every_shape_of_the_records_api(answer: dict) -> None:
    assert parse_record_files(answer) == {"subset0.zip": (10, "aa11")}


@pytest.mark.parametrize("answer", [None, [], {"files": None}, {"files": {"enabled": False}}, {"files": [None, 3, {"key": 7}]}, "html"])
def test_odd_answers_of_the_records_api_never_crash(answer: object) -> None:
    assert parse_record_files(answer) == {}


def test_staging_with_the_invenio_rdm_answer_shape(tmp_path: Path, serve, write_profile, capsys) -> None:
    import yaml

    data = build_luna_like(tmp_path / "d", subsets=2, scans=1, raw_bytes=100_000)
    manifest = yaml.safe_load(data.manifest.read_text())
    for f in manifest["files"]:
        f.pop("size")
        f.pop("md5")
    data.manifest.write_text(yaml.safe_dump(manifest))
    srv = serve(folder=data.folder, api_shape="rdm")
    srv.records = records_of(data)
    profile = write_profile({"dataset": str(data.manifest), "zenodo_url": srv.url})
    code, report = stage_json(profile, capsys)
    assert code == 0, report
    assert tree_md5s(tmp_path / "root" / "part2" / "luna") == expected_tree(data)


def test_luna16_unpacks_to_about_1_8_times_its_archives(tmp_path: Path, capsys) -> None:
    assert main(["plan", "-c", "vm", "--root", str(tmp_path / "r"), "--json", "--subsets", "all", "--set", "data.cache_gb_per_subset=0"]) in (0, 3)
    plan = json.loads(capsys.readouterr().out)
    unpacked = sum(f["unpacked_bytes"] or 0 for f in plan["data"]["files"])
    assert 118e9 < unpacked < 121e9, "888 .raw files, mean 134.2 MB: about 119 GB"


@pytest.mark.parametrize("mode", ["archive", "stream"])
def test_a_source_that_stops_short_without_an_error_never_hangs(built: Built, serve, write_profile, capsys, monkeypatch, mode: str) -> None:
    """No real server should end a range early and call it done, but if one does, the run must end, not wait."""
    from provision.staging import fetch
    from provision.staging.transport.local import LocalTransfer

    class StopsShort(LocalTransfer):  # a stand-in for a broken server: half of every range, then a clean end
        def read_range(self, start, end, sink, on_open=None, whole_size=None):  # type: ignore[override]
            super().read_range(start, start + (end - start) // 2, sink, on_open)

    srv = serve()
    monkeypatch.setattr(fetch, "open_transfer", lambda loc, cfg, throttle=None, size=None: StopsShort(str(built.folder / loc.url.rsplit("/", 1)[1])))
    profile = write_profile({"dataset": str(built.manifest), "sources": [srv.url + "/mirror/"], "subsets": "0", "mode": mode, "retries": 2})
    start = time.monotonic()
    code, report = stage_json(profile, capsys)
    assert time.monotonic() - start < 30
    assert code == 1 and "without sending any" in json.dumps(report["files"])
