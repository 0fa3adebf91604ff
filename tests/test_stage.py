"""The staging engine against a real loopback HTTP server with injected faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from provision.cli import main
from tests.conftest import stage_and_kill_half_way, stage_in_child
from tests.support.dataset import Built, build_luna_like, records_of, tree_md5s
from tests.support.server import Faults, FileServer


def expected_tree(built: Built) -> dict[str, str]:
    tree = {}
    for key, info in built.files.items():
        if key.endswith(".zip"):
            tree.update(info["members"])
        else:
            import hashlib

            tree[key] = hashlib.md5((built.folder / key).read_bytes()).hexdigest()
    return tree


def total_bytes(built: Built) -> int:
    return sum(info["size"] for info in built.files.values())


def stage_json(profile: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, dict]:
    code = main(["stage", "-c", str(profile), "--json", *extra])
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_stage_from_zenodo_through_faults(built: Built, serve, write_profile, tmp_path: Path, capsys) -> None:
    many = build_luna_like(tmp_path / "many", subsets=8, scans=2, raw_bytes=300_000)
    srv = serve(Faults(drop_rate=0.15, error_rate=0.15, corrupt_once={"subset3.zip"}), folder=many.folder)
    srv.records = records_of(many)
    profile = write_profile({"dataset": str(many.manifest), "sources": ["zenodo"], "zenodo_url": srv.url})
    code, report = stage_json(profile, capsys)
    assert code == 0, report
    target = tmp_path / "root" / "part2" / "luna"
    assert tree_md5s(target) == expected_tree(many)
    assert srv.stats.bytes_sent <= 1.25 * total_bytes(many)
    by_key = {f["key"]: f for f in report["files"]}
    assert any("md5 mismatch" in r for r in by_key["subset3.zip"]["retries"])
    assert srv.stats.faults > 0 and sum(len(f["retries"]) for f in report["files"]) >= srv.stats.faults
    assert all(f["outcome"] == "staged" and f["source"].startswith(srv.url + "/records/") for f in report["files"])
    assert {r["user_agent"].split("/")[0] for r in srv.stats.requests} == {"dlwpt-provision"}
    assert not list(target.rglob("*.zip")), "archives are deleted after a verified extraction"
    assert not list((tmp_path / "root" / ".provision" / "partial").iterdir())

    sent = srv.stats.bytes_sent
    requests = len(srv.stats.requests)
    code, again = stage_json(profile, capsys)
    assert code == 0 and {f["outcome"] for f in again["files"]} == {"already staged"}
    assert srv.stats.bytes_sent == sent and len(srv.stats.requests) == requests, "a second run asks the server nothing"


def test_sizes_and_checksums_resolved_from_the_zenodo_api(tmp_path: Path, serve, write_profile, capsys) -> None:
    for shape in ("new", "old"):
        data = build_luna_like(tmp_path / f"d-{shape}", subsets=2, scans=1, raw_bytes=100_000, name=f"m-{shape}")
        bare = data.manifest.read_text()
        import yaml

        manifest = yaml.safe_load(bare)
        for f in manifest["files"]:
            f.pop("size")
            f.pop("md5")
        data.manifest.write_text(yaml.safe_dump(manifest))
        srv = serve(folder=data.folder, api_shape=shape)
        srv.records = records_of(data)
        profile = write_profile({"dataset": str(data.manifest), "zenodo_url": srv.url, "root": str(tmp_path / f"root-{shape}")}, name=f"{shape}.yaml")
        code, report = stage_json(profile, capsys)
        assert code == 0, report
        assert tree_md5s(tmp_path / f"root-{shape}" / "part2" / "luna") == expected_tree(data)
        assert sum(1 for r in srv.stats.requests if r["key"] == "api") == len(records_of(data)), "one API call per record"


def test_source_fallback_and_report_of_who_delivered(built: Built, serve, write_profile, capsys, tmp_path: Path) -> None:
    broken = serve(Faults(missing={"subset1.zip"}))
    good = serve()
    profile = write_profile({"dataset": str(built.manifest), "sources": [broken.url + "/mirror/", good.url + "/mirror/"]})
    code, report = stage_json(profile, capsys)
    assert code == 0
    sources = {f["key"]: f["source"] for f in report["files"]}
    assert sources["subset1.zip"] == good.url + "/mirror/subset1.zip"
    assert sources["subset0.zip"] == broken.url + "/mirror/subset0.zip"
    assert any("404" in r for r in {f["key"]: f for f in report["files"]}["subset1.zip"]["retries"])
    assert good.stats.bytes_for("subset0.zip") == 0


def test_server_without_range_support(tmp_path: Path, serve, write_profile, capsys) -> None:
    small = build_luna_like(tmp_path / "small", subsets=2, scans=1, raw_bytes=200_000, name="small")
    large = build_luna_like(tmp_path / "large", subsets=2, scans=2, raw_bytes=2_000_000, name="large", extra_plain=False)
    for data in (small, large):
        srv = serve(Faults(no_ranges=True), folder=data.folder)
        root = tmp_path / f"root-{data.manifest.stem}"
        profile = write_profile({"dataset": str(data.manifest), "sources": [srv.url + "/mirror/"], "root": str(root), "connections": 2},
                                name=f"{data.manifest.stem}-profile.yaml")
        code, report = stage_json(profile, capsys)
        assert code == 0, report
        assert tree_md5s(root / "part2" / "luna") == expected_tree(data)
        # the first ranged request's 200 answer is taken as the whole file; no other segment is asked for
        assert all(r["status"] == 200 for r in srv.stats.requests)
        assert len(srv.stats.requests) == len(data.files)
        assert srv.stats.bytes_sent == total_bytes(data)


def test_wrong_checksum_everywhere_fails_cleanly(built: Built, serve, write_profile, capsys, tmp_path: Path) -> None:
    import yaml

    manifest = yaml.safe_load(built.manifest.read_text())
    manifest["files"][0]["md5"] = "0" * 32
    built.manifest.write_text(yaml.safe_dump(manifest))
    srv = serve()
    profile = write_profile({"dataset": str(built.manifest), "sources": [srv.url + "/mirror/"]})
    code, report = stage_json(profile, capsys)
    assert code == 1
    failed = [f for f in report["files"] if f["outcome"] == "failed"]
    assert [f["key"] for f in failed] == ["subset0.zip"]
    assert "expected md5 " + "0" * 32 in failed[0]["error"] and built.files["subset0.zip"]["md5"] in failed[0]["error"]
    target = tmp_path / "root" / "part2" / "luna"
    assert not (target / "subset0.zip").exists() and not (target / "subset0").exists()
    assert (target / "subset1").is_dir(), "other files are staged regardless"


def test_local_directory_source_links_or_copies(built: Built, write_profile, capsys, tmp_path: Path) -> None:
    profile = write_profile({"dataset": str(built.manifest), "sources": [str(built.folder)], "keep_archives": True})
    code, report = stage_json(profile, capsys)
    assert code == 0
    target = tmp_path / "root" / "part2" / "luna"
    assert (target / "subset0.zip").read_bytes() == (built.folder / "subset0.zip").read_bytes()
    assert os.stat(target / "subset0.zip").st_ino == os.stat(built.folder / "subset0.zip").st_ino, "same filesystem: hard link"
    assert {f["source"] for f in report["files"]} == {str(built.folder / k) for k in built.files}
    for key in built.files:
        assert (built.folder / key).exists(), "the source copy is never touched"


def hostile_zip(path: Path, member: str, symlink: bool = False) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("subset0/ok.mhd", b"fine")
        info = zipfile.ZipInfo(member)
        if symlink:
            info.external_attr = (0o120777 << 16)
        zf.writestr(info, b"/etc/passwd" if symlink else b"pwned")


@pytest.mark.parametrize(("member", "symlink"), [("../../escape.txt", False), ("/tmp/abs-escape.txt", False), ("subset0/link", True)])
def test_hostile_archive_writes_nothing_outside(tmp_path: Path, serve, write_profile, capsys, member: str, symlink: bool) -> None:
    import hashlib

    evil = tmp_path / "evil"
    evil.mkdir()
    hostile_zip(evil / "subset0.zip", member, symlink)
    blob = (evil / "subset0.zip").read_bytes()
    manifest = tmp_path / "evil.yaml"
    manifest.write_text(f"name: evil\ndir: part2/luna\nfiles:\n  - {{key: subset0.zip, size: {len(blob)}, md5: {hashlib.md5(blob).hexdigest()}, unpack: true}}\n")
    srv = serve(folder=evil)
    profile = write_profile({"dataset": str(manifest), "sources": [srv.url + "/mirror/"]})
    before = set(tmp_path.rglob("*"))
    code, report = stage_json(profile, capsys)
    assert code == 1
    assert "outside" in report["files"][0]["error"] or "symbolic link" in report["files"][0]["error"]
    created = {p for p in set(tmp_path.rglob("*")) - before if p.is_file()}
    assert all(str(p).startswith(str(tmp_path / "root")) for p in created)
    assert not (tmp_path / "escape.txt").exists() and not Path("/tmp/abs-escape.txt").exists()
    assert not (tmp_path / "root" / "part2" / "luna" / "subset0" / "ok.mhd").exists(), "validated before anything is written"


def test_verify_full_finds_damage_and_stage_repairs_just_that(built: Built, serve, write_profile, capsys, tmp_path: Path) -> None:
    srv = serve()
    profile = write_profile({"dataset": str(built.manifest), "sources": [srv.url + "/mirror/"]})
    assert stage_json(profile, capsys)[0] == 0
    target = tmp_path / "root" / "part2" / "luna"
    victim = sorted((target / "subset2").glob("*.raw"))[0]
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))
    gone = sorted((target / "subset1").glob("*.mhd"))[0]
    gone.unlink()

    assert main(["verify", "-c", str(profile), "--json"]) == 1
    quick = json.loads(capsys.readouterr().out)
    rows = {r["key"]: r for r in quick["files"]}
    assert rows["subset1.zip"]["missing"] == [f"subset1/{gone.name}"] and rows["subset2.zip"]["damaged"] == []

    assert main(["verify", "--full", "-c", str(profile), "--json"]) == 1
    full = {r["key"]: r for r in json.loads(capsys.readouterr().out)["files"]}
    assert full["subset2.zip"]["damaged"] == [f"subset2/{victim.name}"]

    sent = {k: srv.stats.bytes_for(k) for k in built.files}
    code, report = stage_json(profile, capsys)
    assert code == 0
    outcomes = {f["key"]: f["outcome"] for f in report["files"]}
    assert outcomes == {"subset0.zip": "already staged", "subset1.zip": "repaired", "subset2.zip": "repaired",
                        "subset3.zip": "already staged", "annotations.csv": "already staged"}
    assert tree_md5s(target) == expected_tree(built)
    assert srv.stats.bytes_for("subset0.zip") == sent["subset0.zip"]
    assert {f["key"]: f["members"] for f in report["files"]}["subset2.zip"] == 1, "only the damaged member is rewritten"
    assert main(["verify", "--full", "-c", str(profile)]) == 0
    capsys.readouterr()


def test_status_lists_each_file(built: Built, serve, write_profile, capsys, tmp_path: Path) -> None:
    srv = serve()
    profile = write_profile({"dataset": str(built.manifest), "sources": [srv.url + "/mirror/"], "subsets": "0-1"})
    assert main(["status", "-c", str(profile), "--json"]) == 0
    assert {r["stage"] for r in json.loads(capsys.readouterr().out)["files"]} == {"missing"}
    assert stage_json(profile, capsys)[0] == 0
    assert main(["status", "-c", str(profile), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    rows = {r["key"]: r["stage"] for r in status["files"]}
    assert rows == {"subset0.zip": "extracted", "subset1.zip": "extracted", "annotations.csv": "verified"}
    assert status["caches"] == []


def test_status_shows_each_chapter_cache_on_disk(built: Built, write_profile, capsys, tmp_path: Path) -> None:
    profile = write_profile({"dataset": str(built.manifest), "sources": [str(built.folder)], "subsets": "0"})
    cache = tmp_path / "root" / "cache"
    for chapter, size in (("part2ch11_raw", 3_000_000), ("part2ch13_raw", 1_000_000)):
        (cache / chapter / "00").mkdir(parents=True)
        (cache / chapter / "00" / "a.val").write_bytes(os.urandom(size))
    assert main(["status", "-c", str(profile), "--json"]) == 0
    caches = {c["name"]: c["bytes"] for c in json.loads(capsys.readouterr().out)["caches"]}
    assert set(caches) == {"part2ch11_raw", "part2ch13_raw"}
    assert 3_000_000 <= caches["part2ch11_raw"] < 3_100_000 and 1_000_000 <= caches["part2ch13_raw"] < 1_100_000
    assert main(["status", "-c", str(profile)]) == 0
    text = capsys.readouterr().out
    assert "part2ch11_raw" in text and "3.0 MB" in text and "rm -r" in text


def test_lock_held_by_a_live_process(built: Built, serve, write_profile, capsys, tmp_path: Path) -> None:
    srv = serve()
    profile = write_profile({"dataset": str(built.manifest), "sources": [srv.url + "/mirror/"]})
    lock = tmp_path / "root" / ".provision" / "lock"
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        lock.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "since": "2026-01-01T00:00:00"}))
        assert main(["stage", "-c", str(profile)]) == 1
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and "another provision run" in err
        assert srv.stats.bytes_sent == 0
    finally:
        holder.kill()
        holder.wait()
    assert main(["stage", "-c", str(profile)]) == 0, "a stale lock of a dead process is taken over"
    assert not lock.exists()


def test_sigkill_half_way_then_resume(tmp_path: Path, write_profile) -> None:
    data = build_luna_like(tmp_path / "big", subsets=3, scans=2, raw_bytes=2_500_000)
    total = total_bytes(data)
    with FileServer(data.folder, Faults(rate_per_conn=600_000), records=records_of(data)) as srv:
        profile = write_profile({"dataset": str(data.manifest), "sources": [srv.url + "/mirror/"], "connections": 4})
        stage_and_kill_half_way(profile, srv, total)
        first = srv.stats.bytes_sent
        assert first < total
        target = tmp_path / "root" / "part2" / "luna"
        for path in target.rglob("*"):
            if path.is_file() and path.suffix in (".mhd", ".raw"):
                rel = str(path.relative_to(target))
                assert data.files[rel.split("/")[0] + ".zip"]["members"][rel] == __import__("hashlib").md5(path.read_bytes()).hexdigest()
        srv.faults.rate_per_conn = None
        done = stage_in_child(profile)
        assert done.returncode == 0, done.stderr
        assert tree_md5s(target) == expected_tree(data)
        assert srv.stats.bytes_sent <= 1.25 * total, (first, srv.stats.bytes_sent, total)


def test_out_of_space_mid_run_stops_cleanly(built: Built, serve, write_profile, capsys, tmp_path: Path, small_tmpfs) -> None:
    data = build_luna_like(tmp_path / "big", subsets=3, scans=2, raw_bytes=2_000_000)
    disk = small_tmpfs(9 * 1024 * 1024)
    srv = serve(folder=data.folder)
    profile = write_profile({"dataset": str(data.manifest), "sources": [srv.url + "/mirror/"], "root": str(disk / "root")})
    # the plan's unpacked estimate would refuse up front; skip preflight to hit the disk filling up mid-run
    code = main(["up", "-c", str(profile), "--only", "data"])
    err = capsys.readouterr()
    assert code == 1, err
    assert "disk filled up" in err.err or "is full" in err.err or "only" in err.err
    assert "hint: free some space" in err.err
    target = disk / "root" / "part2" / "luna"
    for path in target.rglob("*"):
        if path.is_file() and path.suffix in (".mhd", ".raw"):
            rel = str(path.relative_to(target))
            assert data.files[rel.split("/")[0] + ".zip"]["members"][rel] == __import__("hashlib").md5(path.read_bytes()).hexdigest()
    for zip_path in target.glob("*.zip"):
        assert __import__("hashlib").md5(zip_path.read_bytes()).hexdigest() == data.files[zip_path.name]["md5"]


def test_plan_probe_reads_exact_unpacked_sizes_with_ranged_reads(tmp_path: Path, serve, write_profile, capsys) -> None:
    import yaml

    data = build_luna_like(tmp_path / "p", subsets=2, scans=2, raw_bytes=1_500_000, name="probe")
    manifest = yaml.safe_load(data.manifest.read_text())
    for f in manifest["files"]:
        f.pop("size")
        f.pop("md5")
    data.manifest.write_text(yaml.safe_dump(manifest))
    srv = serve(folder=data.folder)
    srv.records = records_of(data)
    profile = write_profile({"dataset": str(data.manifest), "zenodo_url": srv.url})

    assert main(["plan", "-c", str(profile), "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert srv.stats.requests == [], "plan without --probe touches no network"
    assert plain["disk"][0]["unresolved"] == ["subset0.zip", "subset1.zip", "annotations.csv"]

    assert main(["plan", "-c", str(profile), "--json", "--probe"]) == 0
    probed = json.loads(capsys.readouterr().out)
    files = {f["key"]: f for f in probed["data"]["files"]}
    for key in ("subset0.zip", "subset1.zip"):
        assert files[key]["size"] == data.files[key]["size"] and files[key]["md5"] == data.files[key]["md5"]
        assert files[key]["unpacked_bytes"] == data.files[key]["unpacked_size"] and not files[key]["unpacked_estimated"]
    assert probed["disk"][0]["estimated"] is False and probed["disk"][0]["unresolved"] == []
    assert srv.stats.bytes_sent < 0.5 * total_bytes(data), "only the archives' tails are read"
    assert not (tmp_path / "root").exists()
