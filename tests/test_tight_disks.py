"""Tight disks at full speed: the plan picks the fastest way that fits (fewer archives in flight, then stream
mode over every connection, its bytes inflated in order and its md5 checked), and explains it."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import yaml

from provision.cli import main
from provision.disk import GB
from provision.ways import Load, candidates, estimate_s, read_ahead_chunks, stream_connections, streams_at_once
from tests.support.dataset import build_luna_like, tree_md5s
from tests.support.server import Faults
from tests.test_stage import expected_tree, stage_json, total_bytes


def pin_unpacked_sizes(data) -> None:  # type: ignore[no-untyped-def]
    manifest = yaml.safe_load(data.manifest.read_text())
    for f in manifest["files"]:
        f["unpacked_size"] = data.files[f["key"]]["unpacked_size"]
    data.manifest.write_text(yaml.safe_dump(manifest))


def plan_json(capsys, profile: Path) -> dict:  # type: ignore[no-untyped-def]
    code = main(["plan", "-c", str(profile), "--json"])
    plan = json.loads(capsys.readouterr().out)
    assert code == (0 if plan["feasible"] else 3)
    return plan


def test_a_disk_for_one_archive_in_flight_gets_archive_mode_with_one(tmp_path: Path, serve, write_profile, small_tmpfs, capsys) -> None:
    data = build_luna_like(tmp_path / "d", subsets=3, scans=2, raw_bytes=1_000_000, extra_plain=False)
    pin_unpacked_sizes(data)
    unpacked = sum(i["unpacked_size"] for i in data.files.values())
    sizes = sorted((i["size"] for i in data.files.values()), reverse=True)
    disk = small_tmpfs(unpacked + sizes[0] + sizes[1] // 2 + 256 * 1024)  # room for one archive beside the data, not two
    srv = serve(folder=data.folder)
    profile = write_profile({"dataset": str(data.manifest), "sources": [srv.url + "/mirror/"], "root": str(disk / "root")})
    plan = plan_json(capsys, profile)
    ways = {w["label"]: w for w in plan["data"]["ways"]}
    assert not ways["archive, 3 in flight"]["fits"] and not ways["archive, 2 in flight"]["fits"] and ways["archive, 1 in flight"]["fits"]
    assert plan["data"]["mode"] == "archive" and plan["data"]["files_in_flight"] == 1 and ways["archive, 1 in flight"]["chosen"]
    assert "archive, 1 in flight: archive, 3 in flight would need" in plan["data"]["mode_reason"]
    assert ways["stream, 8 connections per archive"]["fits"], "stream fits too, but archive mode comes first"
    code, report = stage_json(profile, capsys)
    assert code == 0, report
    assert tree_md5s(disk / "root" / "part2" / "luna") == expected_tree(data)
    assert {f["checked"] for f in report["files"]} == {"md5"}
    assert main(["plan", "-c", str(profile)]) == 0
    assert "<- chosen" in capsys.readouterr().out


def test_where_only_streaming_fits_every_connection_is_used_and_the_md5_checked(tmp_path: Path, serve, write_profile, small_tmpfs, capsys) -> None:
    data = build_luna_like(tmp_path / "d", subsets=2, scans=4, raw_bytes=600_000, extra_plain=False)
    pin_unpacked_sizes(data)
    unpacked = sum(i["unpacked_size"] for i in data.files.values())
    disk = small_tmpfs(unpacked + 200 * 1024)
    srv = serve(Faults(rate_per_conn=3_000_000), folder=data.folder)
    profile = write_profile({"dataset": str(data.manifest), "sources": [srv.url + "/mirror/"], "root": str(disk / "root"), "connections": 8})
    plan = plan_json(capsys, profile)
    assert plan["data"]["mode"] == "stream" and plan["data"]["stream_ranges"] == 8, "every connection may serve one archive"
    assert plan["data"]["files_at_once"] == min(8, 2 * (os.cpu_count() or 1)), "two archives a core, sharing eight connections"
    assert plan["data"]["stream_read_ahead_bytes"] == 144 * 2**20 and plan["data"]["stream_chunk_bytes"] == 12 * 2**20, "1.5 chunks a connection"
    assert main(["plan", "-c", str(profile)]) == 0
    text = capsys.readouterr().out
    assert "up to 8 connection(s) each, at most 151 MB read ahead in memory (chunks of 13 MB, a request each)" in text and "md5 checked" in text
    code, report = stage_json(profile, capsys)
    assert code == 0, report
    assert tree_md5s(disk / "root" / "part2" / "luna") == expected_tree(data)
    assert srv.stats.max_in_flight >= 6, "the ranges kept the connections busy"
    assert {f["checked"] for f in report["files"]} == {"md5"}, "in order over several connections: the archive's md5 is checked"
    assert srv.stats.bytes_sent <= total_bytes(data) + 2 * 2 * 64 * 1024, "each byte once, plus the directories"


def test_with_pinned_members_a_source_serving_another_archive_is_refused(tmp_path: Path, serve, write_profile, small_tmpfs, capsys) -> None:
    data = build_luna_like(tmp_path / "d", subsets=2, scans=2, raw_bytes=500_000, extra_plain=False, compression=zipfile.ZIP_STORED)
    pin_unpacked_sizes(data)
    good = serve(folder=data.folder)
    base = {"dataset": str(data.manifest), "mode": "stream", "stream_ranges": 2}
    assert main(["pin", "-c", str(write_profile({**base, "sources": [good.url + "/mirror/"]}, name="pin.yaml"))]) == 0
    capsys.readouterr()
    # another archive of the same size under the same name: one member's bytes differ, so its CRC in the directory differs
    other = tmp_path / "other"
    other.mkdir()
    with zipfile.ZipFile(data.folder / "subset0.zip") as src, zipfile.ZipFile(other / "subset0.zip", "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            body = bytearray(src.read(info))
            if info.filename.endswith(".raw"):
                body[0] ^= 0xFF
            dst.writestr(info.filename, bytes(body))
    (other / "subset1.zip").write_bytes((data.folder / "subset1.zip").read_bytes())
    impostor = serve(folder=other)
    profile = write_profile({**base, "sources": [impostor.url + "/mirror/", good.url + "/mirror/"]})
    code, report = stage_json(profile, capsys)
    assert code == 0, report
    by_key = {f["key"]: f for f in report["files"]}
    assert by_key["subset0.zip"]["source"] == good.url + "/mirror/subset0.zip"
    assert any("serves a different archive than the data set's subset0.zip" in r and "CRC" in r for r in by_key["subset0.zip"]["retries"])
    assert by_key["subset1.zip"]["source"] == impostor.url + "/mirror/subset1.zip", "the same archive is welcome from anywhere"
    assert by_key["subset1.zip"]["checked"] == "md5"
    assert tree_md5s(tmp_path / "root" / "part2" / "luna") == expected_tree(data)


def test_an_explicit_stream_with_one_range_is_honoured(tmp_path: Path, serve, write_profile, capsys) -> None:
    data = build_luna_like(tmp_path / "d", subsets=2, scans=2, raw_bytes=400_000, extra_plain=False)
    srv = serve(folder=data.folder)
    profile = write_profile({"dataset": str(data.manifest), "sources": [srv.url + "/mirror/"], "mode": "stream", "stream_ranges": 1})
    plan = plan_json(capsys, profile)
    assert plan["data"]["mode"] == "stream" and plan["data"]["stream_ranges"] == 1 and len(plan["data"]["ways"]) == 1
    assert plan["data"]["mode_reason"] == "data.mode is stream"
    code, report = stage_json(profile, capsys)
    assert code == 0 and {f["checked"] for f in report["files"]} == {"md5"}, "one range from the first byte: the md5 is checked"
    ranged = [r for r in srv.stats.requests if r["status"] == 206 and r["sent"] > 100_000]
    assert len(ranged) == 2, "one stream per archive"
    assert srv.stats.bytes_sent <= total_bytes(data) + 2 * 2 * 64 * 1024


def test_the_ways_and_their_estimates() -> None:
    load = Load(archives=2, download_bytes=13 * GB, unpacked_bytes=24 * GB, connections=8, cores=2)
    assert stream_connections(0, 8) == 8 and stream_connections(3, 8) == 3 and stream_connections(16, 4) == 4
    assert streams_at_once(8, 8, 2) == 4 and streams_at_once(8, 8, 16) == 8 and streams_at_once(4, 4, 16) == 4, "two a core, up to the connections"
    assert streams_at_once(8, 1, 2) == 8 and streams_at_once(8, 3, 1) == 2 and streams_at_once(1, 1, 4) == 1
    zenodo_chunk, chunks = read_ahead_chunks(144 << 20, 4 << 20, 4)  # the default budget over Zenodo's 4 connections
    assert zenodo_chunk * chunks <= 144 << 20 and chunks >= 5
    assert 4 * 10e6 / zenodo_chunk * 60 <= 133 * 0.8, "a request a chunk at 10 MB/s a connection: well under Zenodo's 133 a minute"
    assert read_ahead_chunks(144 << 20, 4 << 20, 8) == (12 << 20, 12)
    assert read_ahead_chunks(16 << 20, 4 << 20, 8) == (4 << 20, 9), "a small budget: chunks of data.segment_mb, one a connection and one more"
    assert candidates("auto", 3, 0, load) == [("archive", 2, 1), ("archive", 1, 1), ("stream", 1, 8)]
    assert candidates("archive", 3, 0, load) == [("archive", 3, 1)] and candidates("stream", 3, 1, load) == [("stream", 1, 1)]
    full = estimate_s("archive", 2, 1, load)
    assert estimate_s("archive", 1, 1, load) == full, "members unpacked as they land: one archive in flight overlaps as well"
    assert estimate_s("archive", 1, 1, load, landing=False) > estimate_s("archive", 2, 1, load, landing=False) >= full, \
        "unpacked once whole: with one archive in flight, unpacking no longer overlaps the download"
    assert estimate_s("stream", 1, 8, load) <= 1.3 * full, "every connection on the archives: close to archive mode"
    assert estimate_s("stream", 1, 1, load) >= 3 * full, "one connection per archive, two archives: a quarter of the connections"
