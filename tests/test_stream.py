"""Stream mode: unpack while downloading, never storing the archives."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest
import yaml

from provision.cli import main
from provision.staging.transport.ordered import ReadAhead, chunk_for
from tests.conftest import stage_and_kill_half_way, stage_in_child
from tests.support.dataset import Built, build_luna_like, ct_like_bytes, records_of, tree_md5s
from tests.support.server import Faults, FileServer
from tests.test_stage import expected_tree, stage_json, total_bytes


def members_of(data: Built, key: str) -> dict[str, str]:
    return data.files[key]["members"]


def largest_member_compressed(path: Path) -> int:
    with zipfile.ZipFile(path) as zf:
        return max(i.compress_size for i in zf.infolist())


def test_stream_stages_what_archive_mode_cannot_fit(tmp_path: Path, serve, write_profile, small_tmpfs, capsys) -> None:
    data = build_luna_like(tmp_path / "d", subsets=3, scans=2, raw_bytes=1_000_000, extra_plain=False)
    unpacked = sum(i["unpacked_size"] for i in data.files.values())
    largest = max(i["size"] for i in data.files.values())
    disk = small_tmpfs(unpacked + largest // 2 + 256 * 1024)  # between "unpacked" and "unpacked + largest archive"
    manifest = yaml.safe_load(data.manifest.read_text())
    for f in manifest["files"]:
        f["unpacked_size"] = data.files[f["key"]]["unpacked_size"]
    data.manifest.write_text(yaml.safe_dump(manifest))
    srv = serve(folder=data.folder)
    base = {"dataset": str(data.manifest), "sources": [srv.url + "/mirror/"], "root": str(disk / "root"), "files_in_flight": 1}

    archive = write_profile({**base, "mode": "archive"}, name="archive.yaml")
    assert main(["stage", "-c", str(archive)]) == 3
    err = capsys.readouterr()
    assert "not enough disk space" in err.err and "data.mode=stream" in err.err
    assert srv.stats.requests == [] and not (disk / "root").exists()

    auto = write_profile({**base, "mode": "auto"}, name="auto.yaml")
    assert main(["plan", "-c", str(auto), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["data"]["mode"] == "stream" and "would need" in plan["data"]["mode_reason"]
    needs = {w["label"]: w["needed_bytes"] for w in plan["data"]["ways"]}
    assert needs["archive, 1 in flight"] > plan["disk"][0]["free_bytes"] >= needs["stream, 8 connections per archive"], needs
    cores = os.cpu_count() or 1
    assert plan["data"]["stream_ranges"] == 8 and plan["data"]["files_at_once"] == min(8, 2 * cores), "two archives a core, sharing eight connections"

    code, report = stage_json(auto, capsys)
    assert code == 0, report
    assert tree_md5s(disk / "root" / "part2" / "luna") == expected_tree(data)
    assert srv.stats.bytes_sent <= total_bytes(data) + 3 * 2 * 64 * 1024, "each archive once, plus its directory"
    assert not list((disk / "root").rglob("*.zip")) and not list((disk / "root").rglob("*.part"))
    code, again = stage_json(auto, capsys)
    assert code == 0 and {f["outcome"] for f in again["files"]} == {"already staged"}


def test_stream_through_faults(tmp_path: Path, serve, write_profile, capsys) -> None:
    data = build_luna_like(tmp_path / "d", subsets=6, scans=2, raw_bytes=300_000)
    srv = serve(Faults(drop_rate=0.2, error_rate=0.15), folder=data.folder)
    srv.records = records_of(data)
    profile = write_profile({"dataset": str(data.manifest), "sources": ["zenodo"], "zenodo_url": srv.url, "mode": "stream"})
    code, report = stage_json(profile, capsys)
    assert code == 0, report
    assert tree_md5s(tmp_path / "root" / "part2" / "luna") == expected_tree(data)
    assert srv.stats.faults > 0
    assert srv.stats.bytes_sent <= 1.25 * total_bytes(data)
    assert any("continuing at byte" in r for f in report["files"] for r in f["retries"]) or srv.stats.faults <= 2


def test_a_corrupted_archive_leaves_no_member_behind(tmp_path: Path, serve, write_profile, capsys) -> None:
    data = build_luna_like(tmp_path / "d", subsets=2, scans=3, raw_bytes=300_000, extra_plain=False)
    size = data.files["subset1.zip"]["size"]
    srv = serve(Faults(corrupt_at={"subset1.zip": size * 3 // 4}), folder=data.folder)  # in a late member, every time
    profile = write_profile({"dataset": str(data.manifest), "sources": [srv.url + "/mirror/"], "mode": "stream"})
    code, report = stage_json(profile, capsys)
    assert code == 1
    failed = {f["key"]: f for f in report["files"]}["subset1.zip"]
    assert failed["outcome"] == "failed" and any("CRC" in r for r in failed["retries"])
    target = tmp_path / "root" / "part2" / "luna"
    assert not (target / "subset1").exists() or not any((target / "subset1").iterdir()), "no member of the damaged archive stays"
    assert tree_md5s(target) == members_of(data, "subset0.zip")

    # a wrong md5 in the manifest: every member checks out, the archive does not; all of it goes
    manifest = yaml.safe_load(data.manifest.read_text())
    manifest["files"][0]["md5"] = "f" * 32
    data.manifest.write_text(yaml.safe_dump(manifest))
    clean = serve(folder=data.folder)
    root2 = tmp_path / "root2"
    profile2 = write_profile({"dataset": str(data.manifest), "sources": [clean.url + "/mirror/"], "mode": "stream", "root": str(root2)}, name="p2.yaml")
    code, report = stage_json(profile2, capsys)
    assert code == 1
    outcomes = {f["key"]: f for f in report["files"]}
    assert outcomes["subset0.zip"]["outcome"] == "failed" and "md5 mismatch" in " ".join(outcomes["subset0.zip"]["retries"])
    assert outcomes["subset1.zip"]["outcome"] == "staged"
    assert tree_md5s(root2 / "part2" / "luna") == members_of(data, "subset1.zip"), "every member of the failed archive is gone"


def test_corruption_once_is_refetched(tmp_path: Path, serve, write_profile, capsys) -> None:
    data = build_luna_like(tmp_path / "d", subsets=2, scans=3, raw_bytes=300_000, extra_plain=False)
    srv = serve(Faults(corrupt_once={"subset0.zip"}), folder=data.folder)
    profile = write_profile({"dataset": str(data.manifest), "sources": [srv.url + "/mirror/"], "mode": "stream"})
    code, report = stage_json(profile, capsys)
    assert code == 0, report
    assert tree_md5s(tmp_path / "root" / "part2" / "luna") == expected_tree(data)


@pytest.mark.parametrize("connections", [1, 4], ids=["one connection per archive", "four connections per archive, in order"])
def test_sigkill_costs_at_most_the_member_in_progress_and_the_read_ahead(tmp_path: Path, write_profile, connections: int) -> None:
    data = build_luna_like(tmp_path / "d", subsets=2, scans=4 if connections == 1 else 16, raw_bytes=1_000_000 if connections == 1 else 400_000,
                           extra_plain=False)
    total = total_bytes(data)
    with FileServer(data.folder, Faults(rate_per_conn=700_000 if connections == 1 else 400_000)) as srv:
        profile = write_profile({"dataset": str(data.manifest), "sources": [srv.url + "/mirror/"], "mode": "stream", "connections": 4,
                                 "stream_ranges": connections})
        stage_and_kill_half_way(profile, srv, total)
        first = srv.stats.bytes_sent
        target = tmp_path / "root" / "part2" / "luna"
        for path in target.rglob("*"):  # whatever has a final name is complete and correct
            if path.is_file() and not path.name.startswith("."):
                rel = str(path.relative_to(target))
                assert members_of(data, rel.split("/")[0] + ".zip")[rel] == hashlib.md5(path.read_bytes()).hexdigest()
        srv.faults.rate_per_conn = None
        done = stage_in_child(profile)
        assert done.returncode == 0, done.stderr
        assert tree_md5s(target) == expected_tree(data)
        state = json.loads((tmp_path / "root" / ".provision" / "state.json").read_text())
        assert all(f["md5_checked"] for f in state["files"].values()), "resumed in order: the md5 still covers every byte"
        in_progress = max(largest_member_compressed(data.folder / k) for k in data.files)
        read_ahead = 0 if connections == 1 else 2 * 4 * 64 * 1024  # two chunks a connection, of under 64 KiB for archives this small
        directory_reads = 2 * len(data.files) * 2 * 64 * 1024
        assert srv.stats.bytes_sent <= total + len(data.files) * in_progress + read_ahead + directory_reads, (first, srv.stats.bytes_sent, total)
        if connections > 1:  # many members, as LUNA16's archives have: little is fetched twice
            assert srv.stats.bytes_sent <= 1.25 * total, (first, srv.stats.bytes_sent, total)


def test_stream_repairs_fetch_only_the_damaged_member(built: Built, serve, write_profile, capsys, tmp_path: Path) -> None:
    srv = serve()
    profile = write_profile({"dataset": str(built.manifest), "sources": [srv.url + "/mirror/"], "mode": "stream"})
    assert stage_json(profile, capsys)[0] == 0
    target = tmp_path / "root" / "part2" / "luna"
    victim = sorted((target / "subset2").glob("*.raw"))[-1]
    victim.write_bytes(b"\0" * victim.stat().st_size)
    assert main(["verify", "--full", "-c", str(profile)]) == 1
    capsys.readouterr()
    before = srv.stats.bytes_for("subset2.zip")
    code, report = stage_json(profile, capsys)
    assert code == 0
    assert {f["key"]: f["outcome"] for f in report["files"]}["subset2.zip"] == "repaired"
    assert tree_md5s(target) == expected_tree(built)
    fetched = srv.stats.bytes_for("subset2.zip") - before
    assert fetched < 0.75 * built.files["subset2.zip"]["size"], "the member's bytes and the directory, not the archive"


class _NoSeek:
    """A write-only file without seek/tell: zipfile then writes data descriptors after each member."""

    def __init__(self, fh) -> None:
        self.fh = fh

    def write(self, data: bytes) -> int:
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


@pytest.mark.parametrize("variant", ["descriptors", "zip64", "lzma", "bzip2", "stored"])
def test_unusual_zip_layouts_stream(tmp_path: Path, serve, write_profile, capsys, variant: str) -> None:
    import random

    folder = tmp_path / "odd"
    folder.mkdir()
    rng = random.Random(3)
    payload = {f"subset0/{i}.raw": ct_like_bytes(200_000 + i, rng) for i in range(3)}
    payload["subset0/empty.mhd"] = b""
    compression = {"lzma": zipfile.ZIP_LZMA, "bzip2": zipfile.ZIP_BZIP2, "stored": zipfile.ZIP_STORED}.get(variant, zipfile.ZIP_DEFLATED)
    with open(folder / "subset0.zip", "wb") as raw:
        sink = _NoSeek(raw) if variant == "descriptors" else raw
        with zipfile.ZipFile(sink, "w", compression=compression) as zf:  # type: ignore[arg-type]
            for name, blob in payload.items():
                with zf.open(zipfile.ZipInfo(name), "w", force_zip64=variant == "zip64") as out:
                    out.write(blob)
    if variant == "descriptors":
        with zipfile.ZipFile(folder / "subset0.zip") as zf:
            assert all(i.flag_bits & 0x08 for i in zf.infolist())
    blob = (folder / "subset0.zip").read_bytes()
    manifest = tmp_path / "odd.yaml"
    manifest.write_text(yaml.safe_dump({"name": "odd", "dir": "d", "files": [
        {"key": "subset0.zip", "size": len(blob), "md5": hashlib.md5(blob).hexdigest(), "unpack": True}]}))
    srv = serve(folder=folder)
    profile = write_profile({"dataset": str(manifest), "sources": [srv.url + "/mirror/"], "mode": "stream"})
    code, report = stage_json(profile, capsys)
    assert code == 0, report
    assert {f["members"] for f in report["files"]} == {len(payload)}
    assert tree_md5s(tmp_path / "root" / "d") == {k: hashlib.md5(v).hexdigest() for k, v in payload.items()}


def test_stream_mode_from_a_local_directory(built: Built, write_profile, capsys, tmp_path: Path) -> None:
    profile = write_profile({"dataset": str(built.manifest), "sources": [str(built.folder)], "mode": "stream"})
    code, report = stage_json(profile, capsys)
    assert code == 0, report
    assert tree_md5s(tmp_path / "root" / "part2" / "luna") == expected_tree(built)
    assert not list((tmp_path / "root").rglob("*.zip"))
    assert all((built.folder / key).exists() for key in built.files), "the source copy is never touched"


def test_an_archive_over_several_connections_is_inflated_in_order_and_md5_checked(tmp_path: Path, serve, write_profile, capsys) -> None:
    data = build_luna_like(tmp_path / "d", subsets=1, scans=6, raw_bytes=300_000, extra_plain=False)
    srv = serve(Faults(drop_rate=0.2, seed=9, rate_per_conn=2_000_000), folder=data.folder)
    profile = write_profile({"dataset": str(data.manifest), "sources": [srv.url + "/mirror/"], "mode": "stream", "stream_ranges": 3})
    code, report = stage_json(profile, capsys)
    assert code == 0, report
    assert tree_md5s(tmp_path / "root" / "part2" / "luna") == expected_tree(data)
    ranged = [r for r in srv.stats.requests if r["key"] == "subset0.zip" and r["status"] == 206]
    starts = {int(r["range"].split("=")[1].split("-")[0]) for r in ranged}
    with zipfile.ZipFile(data.folder / "subset0.zip") as zf:
        header_offsets = {i.header_offset for i in zf.infolist()}
    assert len(starts - header_offsets) >= 6, "chunks that start inside members: the archive's bytes, not its members, were split"
    assert srv.stats.max_in_flight >= 2, "several connections at once"
    assert srv.stats.faults > 0 and any("continuing at byte" in r for r in report["files"][0]["retries"]), "a dropped chunk continued alone"
    state = json.loads((tmp_path / "root" / ".provision" / "state.json").read_text())
    assert state["files"]["subset0.zip"]["md5_checked"] is True, "in order: the archive's md5 covers every byte"
    assert srv.stats.bytes_sent <= 1.25 * total_bytes(data)


def test_a_range_damaged_on_the_way_costs_its_member_only(tmp_path: Path, serve, write_profile, capsys) -> None:
    """Four connections in order; 64 bytes garbled once in a chunk in the middle of the archive. The damaged member
    fails its inflate or CRC, nothing of it keeps a name, and the retry continues at that member (its checkpoint):
    the members before it are not fetched again."""
    data = build_luna_like(tmp_path / "d", subsets=1, scans=16, raw_bytes=300_000, extra_plain=False)
    size = data.files["subset0.zip"]["size"]
    srv = serve(Faults(corrupt_once_at={"subset0.zip": size // 2}), folder=data.folder)
    profile = write_profile({"dataset": str(data.manifest), "sources": [srv.url + "/mirror/"], "mode": "stream", "connections": 4})
    code, report = stage_json(profile, capsys)
    assert code == 0, report
    assert tree_md5s(tmp_path / "root" / "part2" / "luna") == expected_tree(data)
    assert any("damaged" in r or "CRC" in r for r in report["files"][0]["retries"]), report["files"][0]["retries"]
    state = json.loads((tmp_path / "root" / ".provision" / "state.json").read_text())
    assert state["files"]["subset0.zip"]["md5_checked"] is True
    # what was fetched ahead of the damage: the read-ahead budget's chunks (6 with 4 connections), each at most the
    # largest asked for (chunks grow with a fast connection's rate, to 4 times the smallest)
    spans = [r["range"][len("bytes="):].split("-") for r in srv.stats.requests if (r.get("range") or "")[6:7].isdigit()]
    largest = max(int(last) + 1 - int(first) for first, last in spans)
    assert largest <= 4 * chunk_for(ReadAhead(24 << 20, 6), size, 4), "chunks stay a few times the smallest a short archive gets"
    read_ahead = 6 * largest
    assert srv.stats.bytes_sent <= size + largest_member_compressed(data.folder / "subset0.zip") + read_ahead + 4 * 64 * 1024, "the member, not the archive"


def test_split_runs_balances_compressed_bytes() -> None:
    from provision.staging.archive.stream import Layout, StreamMember, split_runs

    layout = Layout(tuple(StreamMember(None, i * 100, 100, 8) for i in range(9)), 900, 1000)  # type: ignore[arg-type]
    assert split_runs(layout, [(0, 9)], 3) == [(0, 3), (3, 6), (6, 9)]
    assert split_runs(layout, [(0, 9)], 1) == [(0, 9)]
    assert split_runs(layout, [(0, 2), (5, 9)], 2) == [(0, 2), (5, 8), (8, 9)]
