"""What an adversarial round found (issue #23), one test per case, so the next round starts from them.

Hostile archives are served with a matching md5 (a mirror that lies consistently), servers misbehave,
signals arrive mid-phase, disks are odd, configs and unpacked copies are hostile. The rules: never a file
under a final name that its archive does not vouch for, never exit 0 with a wrong or missing file, never a
traceback, never a hang, and an interrupted run resumes without fetching again what was complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import zipfile
from pathlib import Path

import pytest
import yaml

from provision.cli import main
from tests.conftest import stage_and_kill_half_way, stage_in_child
from tests.support.dataset import Built, build_luna_like, tree_md5s
from tests.support.server import Faults, FileServer
from tests.test_stage import expected_tree, stage_json


def write_zip(path: Path, members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def manifest_for(folder: Path, keys: list[str], name: str = "hostile") -> Path:
    """A manifest whose sizes and md5s are those of the archives as they are now (the mirror vouches for them)."""
    files = [{"key": k, "size": (folder / k).stat().st_size, "md5": hashlib.md5((folder / k).read_bytes()).hexdigest(), "unpack": True}
             for k in keys]
    path = folder.parent / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "dir": "part2/luna", "unpack_ratio": 2.0, "files": files}))
    return path


def scan_bytes(n: int, seed: int) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (n // 32) + b"\0" * (n % 32)


def no_traceback(err: str) -> None:
    assert "Traceback" not in err, err


# ---------------------------------------------------------------- data lost


def test_ctrl_c_while_unpacking_keeps_the_archive_and_an_honest_state(built: Built, serve, write_profile, monkeypatch, capsys,
                                                                      tmp_path: Path) -> None:
    """SIGINT (what Ctrl-C sends) after two members of an archive are written: not "staged", not deleted, and the
    next run unpacks the rest without fetching the archive again."""
    import provision.staging.archive.extract as extract

    real = extract.write_member
    written = []

    def interrupted_after_two(fd, sm, archive, stop=None):  # noqa: ANN001, ANN202
        real(fd, sm, archive, stop)
        written.append(sm.member.name)
        if archive == "subset0.zip" and len(written) == 2:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(extract, "write_member", interrupted_after_two)
    srv = serve()
    profile = write_profile({"dataset": str(built.manifest), "sources": [srv.url + "/mirror/"], "subsets": "0", "mode": "archive",
                             "extract_workers": 1, "unpack_while_downloading": False})
    code = main(["stage", "-c", str(profile)])
    err = capsys.readouterr().err
    assert code == 130 and "interrupted" in err, err
    target = tmp_path / "root" / "part2" / "luna"
    assert (target / "subset0.zip").is_file(), "the interrupted archive is kept"
    assert main(["status", "-c", str(profile), "--json"]) == 0
    stages = {r["key"]: r["stage"] for r in json.loads(capsys.readouterr().out)["files"]}
    assert stages["subset0.zip"] == "verified", "downloaded, not unpacked: never reported extracted"
    monkeypatch.setattr(extract, "write_member", real)
    before = srv.stats.bytes_for("subset0.zip")
    code, report = stage_json(profile, capsys)
    assert code == 0, report
    assert srv.stats.bytes_for("subset0.zip") == before, "the archive is not fetched again"
    assert {k: v for k, v in tree_md5s(target).items() if k.startswith("subset0/")} == \
        {k: v for k, v in expected_tree(built).items() if k.startswith("subset0/")}


def test_a_target_on_another_filesystem_than_data_root(built: Built, serve, write_profile, small_tmpfs, tmp_path: Path, capsys) -> None:
    """A disk mounted where the book looks (data.root/part2/luna on its own filesystem): staged there, once."""
    disk = small_tmpfs(64 << 20)
    root = tmp_path / "root"
    (root / "part2").mkdir(parents=True)
    (root / "part2" / "luna").symlink_to(disk, target_is_directory=True)
    srv = serve()
    profile = write_profile({"dataset": str(built.manifest), "sources": [srv.url + "/mirror/"], "mode": "archive"})
    code, report = stage_json(profile, capsys)
    assert code == 0, report
    assert tree_md5s(disk) == expected_tree(built)
    sent = srv.stats.bytes_sent
    code, again = stage_json(profile, capsys)
    assert code == 0 and srv.stats.bytes_sent == sent and {f["outcome"] for f in again["files"]} == {"already staged"}


# ---------------------------------------------------------------- bad data accepted


def twin_archives(folder: Path) -> tuple[Path, bytes]:
    """subset0.zip and a different archive of exactly the same size (same names and sizes, other bytes, own CRCs)."""
    members = [(f"subset0/scan{i}.raw", scan_bytes(400_000, i)) for i in range(6)]
    real = write_zip(folder / "subset0.zip", members)
    other = write_zip(folder.parent / "other" / "subset0.zip", [(n, scan_bytes(len(d), 100 + i)) for i, (n, d) in enumerate(members)])
    assert other.stat().st_size == real.stat().st_size
    return real, other.read_bytes()


def test_a_resumed_stream_is_still_vouched_for_by_the_archive_md5(tmp_path: Path, write_profile, capsys) -> None:
    """Stream mode, killed half way; the mirror then serves a different archive of the same size with consistent CRCs.
    The rerun must not end with a mix of scans and exit 0: the md5 over the whole archive (resumed) catches it."""
    folder = tmp_path / "mirror"
    real, impostor = twin_archives(folder)
    manifest = manifest_for(folder, ["subset0.zip"])
    with FileServer(folder, Faults(rate_per_conn=600_000)) as srv:
        profile = write_profile({"dataset": str(manifest), "sources": [srv.url + "/mirror/"], "mode": "stream"})
        stage_and_kill_half_way(profile, srv, real.stat().st_size)
        real.write_bytes(impostor)
        srv.faults.rate_per_conn = None
        done = stage_in_child(profile)
    assert done.returncode != 0, done.stdout + done.stderr
    assert "md5" in done.stdout + done.stderr
    no_traceback(done.stderr)
    target = tmp_path / "root" / "part2" / "luna"
    assert not [p for p in target.rglob("*.raw") if not p.name.startswith(".")], "no scan of either archive keeps a final name"


def test_a_resumed_stream_of_the_same_archive_is_md5_checked_and_fetches_little_twice(tmp_path: Path, write_profile) -> None:
    data = build_luna_like(tmp_path / "d", subsets=1, scans=6, raw_bytes=500_000, extra_plain=False)
    size = data.files["subset0.zip"]["size"]
    with FileServer(data.folder, Faults(rate_per_conn=600_000)) as srv:
        profile = write_profile({"dataset": str(data.manifest), "sources": [srv.url + "/mirror/"], "mode": "stream"})
        stage_and_kill_half_way(profile, srv, size)
        srv.faults.rate_per_conn = None
        done = stage_in_child(profile)
        assert done.returncode == 0, done.stderr
        assert srv.stats.bytes_sent <= 1.25 * size + 4 * 64 * 1024, (srv.stats.bytes_sent, size)
    assert tree_md5s(tmp_path / "root" / "part2" / "luna") == expected_tree(data)
    state = json.loads((tmp_path / "root" / ".provision" / "state.json").read_text())
    assert state["files"]["subset0.zip"]["md5_checked"] is True, "the resumed stream's md5 covered every byte"


def point_past_the_end(archive: Path, member_index: int) -> None:
    """Patch the central directory: member ``member_index``'s local header offset points far past the archive's end."""
    blob = bytearray(archive.read_bytes())
    at = -1
    for _ in range(member_index + 1):
        at = blob.index(b"PK\x01\x02", at + 1)
    struct.pack_into("<I", blob, at + 42, len(blob) * 10)
    archive.write_bytes(bytes(blob))


@pytest.mark.parametrize("mode", ["stream", "archive"])
def test_a_directory_entry_past_the_end_is_refused_in_both_modes(tmp_path: Path, serve, write_profile, capsys, mode: str) -> None:
    folder = tmp_path / "mirror"
    archive = write_zip(folder / "subset0.zip", [(f"subset0/scan{i}.raw", scan_bytes(100_000, i)) for i in range(3)])
    point_past_the_end(archive, 1)
    manifest = manifest_for(folder, ["subset0.zip"])
    srv = serve(folder=folder)
    profile = write_profile({"dataset": str(manifest), "sources": [srv.url + "/mirror/"], "mode": mode})
    for _ in range(2):  # and a rerun does not "repair" it into success
        code, report = stage_json(profile, capsys)
        assert code == 1, report
        assert "past the end" in report["files"][0]["error"], report
    assert not list((tmp_path / "root" / "part2" / "luna").rglob("*.raw"))


@pytest.mark.parametrize("mode", ["stream", "archive"])
def test_a_member_named_like_a_temporary_file_is_refused(tmp_path: Path, serve, write_profile, capsys, mode: str) -> None:
    folder = tmp_path / "mirror"
    write_zip(folder / "subset0.zip", [("subset0/a.raw", scan_bytes(50_000, 1)), ("subset0/.a.raw.provision-tmp", scan_bytes(50_000, 2))])
    manifest = manifest_for(folder, ["subset0.zip"])
    srv = serve(folder=folder)
    profile = write_profile({"dataset": str(manifest), "sources": [srv.url + "/mirror/"], "mode": mode})
    code, report = stage_json(profile, capsys)
    assert code == 1 and "keeps for itself" in report["files"][0]["error"], report
    assert not (tmp_path / "root" / "part2" / "luna" / "subset0" / "a.raw").exists()


def test_a_member_cannot_land_in_the_tools_own_folder(tmp_path: Path, serve, write_profile, capsys) -> None:
    """A manifest whose dir is '.' unpacks into data.root itself, where .provision/ holds the state."""
    folder = tmp_path / "mirror"
    write_zip(folder / "subset0.zip", [("subset0/a.raw", b"x" * 1000), (".provision/state.json", b'{"version": 1, "files": {}}')])
    manifest = manifest_for(folder, ["subset0.zip"])
    text = yaml.safe_load(manifest.read_text())
    text["dir"] = "."
    manifest.write_text(yaml.safe_dump(text))
    srv = serve(folder=folder)
    profile = write_profile({"dataset": str(manifest), "sources": [srv.url + "/mirror/"], "mode": "archive"})
    code, report = stage_json(profile, capsys)
    assert code == 1 and "keeps for itself" in report["files"][0]["error"], report


# ---------------------------------------------------------------- tracebacks instead of a clear error


def damage_first_member_data(archive: Path) -> None:
    """Flip bytes inside the first member's compressed data; the central directory keeps the original CRC."""
    blob = bytearray(archive.read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", blob, 26)
    start = 30 + name_len + extra_len
    for i in range(start + 10, start + 40):
        blob[i] ^= 0x5A
    archive.write_bytes(bytes(blob))


@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_LZMA, zipfile.ZIP_BZIP2])
@pytest.mark.parametrize("mode", ["stream", "archive"])
def test_damaged_compressed_data_is_a_clear_failure(tmp_path: Path, serve, write_profile, capsys, compression: int, mode: str) -> None:
    folder = tmp_path / "mirror"
    archive = write_zip(folder / "subset0.zip", [(f"subset0/scan{i}.raw", scan_bytes(200_000, i)) for i in range(2)], compression)
    damage_first_member_data(archive)
    manifest = manifest_for(folder, ["subset0.zip"])
    srv = serve(folder=folder)
    profile = write_profile({"dataset": str(manifest), "sources": [srv.url + "/mirror/"], "mode": mode})
    code = main(["stage", "-c", str(profile)])
    captured = capsys.readouterr()
    assert code == 1
    assert "damaged" in captured.out + captured.err, captured
    no_traceback(captured.err)
    assert not (tmp_path / "root" / "part2" / "luna" / "subset0" / "scan0.raw").exists()


def test_bytes_flipped_in_transit_while_streaming_are_fetched_again(tmp_path: Path, serve, write_profile, capsys) -> None:
    data = build_luna_like(tmp_path / "d", subsets=1, scans=2, raw_bytes=300_000, extra_plain=False)
    with zipfile.ZipFile(data.folder / "subset0.zip") as zf:
        first = zf.infolist()[1]  # the first .raw: inside its deflate stream
    offset = first.header_offset + 30 + len(first.filename) + 2  # the deflate stream's first block header: it no longer decodes
    srv = serve(Faults(corrupt_once_at={"subset0.zip": offset}), folder=data.folder)
    profile = write_profile({"dataset": str(data.manifest), "sources": [srv.url + "/mirror/"], "mode": "stream"})
    code, report = stage_json(profile, capsys)
    assert code == 0, report
    assert any(first.filename in r for r in report["files"][0]["retries"]), report
    assert tree_md5s(tmp_path / "root" / "part2" / "luna") == expected_tree(data)


# ---------------------------------------------------------------- hostile unpacked copies


def hostile_copy(built: Built, where: Path, how: str) -> Path:
    """subset0 of the data set, unpacked as a copy would hold it, with one scan made hostile in the way ``how`` says."""
    with zipfile.ZipFile(built.folder / "subset0.zip") as zf:
        zf.extractall(where)
    folder = where / "subset0"
    mhd = sorted(folder.glob("*.mhd"))[0]
    raw = mhd.with_suffix(".raw")
    outside = where.parent / "outside.raw"
    if how == "raw links out":
        outside.write_bytes(raw.read_bytes())
        raw.unlink()
        raw.symlink_to(outside)
    elif how == "data file out":
        outside.write_bytes(raw.read_bytes())
        mhd.write_text(mhd.read_text().replace(f"ElementDataFile = {raw.name}", "ElementDataFile = ../../outside.raw"))
    elif how == "unknown type":
        mhd.write_text(mhd.read_text().replace("MET_SHORT", "MET_MYSTERY"))
    elif how == "bad DimSize":
        mhd.write_text(mhd.read_text().replace("DimSize = 64 64", "DimSize = sixty-four 64"))
    elif how == "garbage header":
        mhd.write_bytes(bytes(range(256)) * 8)
    elif how == "fifo":
        mhd.unlink()
        os.mkfifo(mhd)
    return where


@pytest.mark.parametrize("how", ["raw links out", "data file out", "unknown type", "bad DimSize", "garbage header", "fifo"])
def test_a_hostile_unpacked_copy_is_refused_and_the_subset_downloaded(built: Built, serve, write_profile, tmp_path: Path, how: str) -> None:
    copy = hostile_copy(built, tmp_path / "share" / "luna16", how)
    srv = serve()
    profile = write_profile({"dataset": str(built.manifest), "sources": [f"unpacked:{copy}", srv.url + "/mirror/"], "subsets": "0"})
    done = stage_in_child(profile)  # a child with a deadline: a FIFO must not block the run for ever
    assert done.returncode == 0, done.stderr
    no_traceback(done.stderr)
    assert "trying the next source" in done.stderr, done.stderr
    target = tmp_path / "root" / "part2" / "luna"
    links = [p for p in target.rglob("*") if p.is_symlink()]
    assert not [p for p in links if "subset0" in str(p)], "nothing of the hostile subset is linked"
    assert tree_md5s(target / "subset0") == {k[len("subset0/"):]: v for k, v in expected_tree(built).items() if k.startswith("subset0/")}
    assert srv.stats.bytes_for("subset0.zip") > 0, "it came from the server"


# ---------------------------------------------------------------- hangs


@pytest.mark.parametrize("mode", ["stream", "archive"])
def test_a_server_that_trickles_is_given_up_on(built: Built, write_profile, mode: str, tmp_path: Path) -> None:
    """One byte every 0.2 s for ever: timeout_s bounds each read, and now progress too. The run ends, failed, by itself."""
    import subprocess
    import sys
    import time

    with FileServer(built.folder, Faults(trickle_s=0.2)) as srv:
        profile = write_profile({"dataset": str(built.manifest), "sources": [srv.url + "/mirror/"], "subsets": "0", "mode": mode,
                                 "timeout_s": 1.5, "retries": 1})
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "provision", "stage", "-c", str(profile)], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert proc.returncode == 1, proc.stderr
    assert "stalled" in proc.stdout + proc.stderr
    assert time.monotonic() - start < 90
    no_traceback(proc.stderr)


@pytest.mark.parametrize("mode", ["stream", "archive"])
def test_ctrl_c_is_honoured_at_once_against_a_trickling_server(built: Built, write_profile, mode: str) -> None:
    import subprocess
    import sys
    import time

    with FileServer(built.folder, Faults(trickle_s=0.05)) as srv:
        profile = write_profile({"dataset": str(built.manifest), "sources": [srv.url + "/mirror/"], "mode": mode, "timeout_s": 600})
        proc = subprocess.Popen([sys.executable, "-m", "provision", "stage", "-c", str(profile)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
        deadline = time.monotonic() + 30
        while srv.stats.bytes_sent < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("Ctrl-C was not honoured within 20 s")
    assert proc.returncode == 130, err
    assert time.monotonic() - sent < 10
    assert "interrupted" in err
    no_traceback(err)


# ---------------------------------------------------------------- unusable places, odd configs


@pytest.mark.parametrize("how", ["a file", "a part is a file", "a link loop", "read-only"])
def test_an_unusable_data_root_is_refused_by_the_plan(tmp_path: Path, write_profile, capsys, small_tmpfs, how: str) -> None:
    if how == "a file":
        root = tmp_path / "root"
        root.write_text("not a folder")
    elif how == "a part is a file":
        (tmp_path / "blocker").write_text("a file")
        root = tmp_path / "blocker" / "data-unversioned"
    elif how == "a link loop":
        root = tmp_path / "loop"
        root.symlink_to(tmp_path / "loop")
    else:
        disk = small_tmpfs(1 << 20)
        import subprocess

        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        root = disk / "data-unversioned"
    profile = write_profile({"root": str(root), "subsets": "0"})
    assert main(["plan", "-c", str(profile)]) == 3
    out = capsys.readouterr().out
    assert "data.root cannot hold the data" in out and "feasible     NO" in out, out
    code = main(["stage", "-c", str(profile)])
    err = capsys.readouterr().err
    assert code == 3 and "data.root cannot hold the data" in err
    no_traceback(err)


@pytest.mark.parametrize(("text", "says"), [
    ("".join(f"l{i}: &l{i} {{" + ", ".join(f"k{j}: *l{i - 1}" if i else f"k{j}: lol" for j in range(9)) + "}\n" for i in range(9)),
     "aliases"),
    ("data:\n  timeout_s: 0\n", "greater than 0"),
    ("data:\n  reserve_gb: .nan\n", "finite"),
    ("data:\n  margin_gb: .inf\n", "finite"),
    ("data:\n  subsets: 0-100000000\n", "numbering"),
    ("data:\n  connections: 4\n  connections: 8\n", "given twice"),
    ('data:\n  root: "/tmp/a\\0b"\n', "NUL"),
])
def test_hostile_and_odd_configs_get_a_clear_error(tmp_path: Path, capsys, text: str, says: str) -> None:
    import time

    from tests.conftest import REPO

    profile = tmp_path / "odd.yaml"
    profile.write_text(f"extends: {REPO / 'configs' / 'local.yaml'}\n" + text)
    start = time.monotonic()
    code = main(["plan", "-c", str(profile)])
    err = capsys.readouterr().err
    assert code == 2 and says in err, err
    assert time.monotonic() - start < 10
    no_traceback(err)


@pytest.mark.parametrize("ratio", [".inf", ".nan", "0", "-2"])
def test_an_odd_unpack_ratio_in_a_manifest(built: Built, write_profile, capsys, ratio: str) -> None:
    manifest = built.manifest.read_text().replace("unpack_ratio: 2.0", f"unpack_ratio: {ratio}")
    built.manifest.write_text(manifest)
    assert main(["plan", "-c", str(write_profile({"dataset": str(built.manifest)}))]) == 2
    err = capsys.readouterr().err
    assert "unpack_ratio" in err
    no_traceback(err)


def test_a_config_that_is_not_utf8(tmp_path: Path, capsys) -> None:
    profile = tmp_path / "latin1.yaml"
    profile.write_bytes("description: caf\xe9\n".encode("latin-1"))
    assert main(["plan", "-c", str(profile)]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8" in err
    no_traceback(err)


# ---------------------------------------------------------------- other


def test_credentials_in_a_source_url_are_used_but_never_shown_or_stored(built: Built, serve, write_profile, tmp_path: Path, capsys) -> None:
    srv = serve()
    host = srv.url.replace("http://", "")
    profile = write_profile({"dataset": str(built.manifest), "sources": [f"http://reader:s3cr3t@{host}/mirror/"], "subsets": "0"})
    assert main(["plan", "-c", str(profile)]) == 0
    assert main(["plan", "-c", str(profile), "--json"]) == 0
    assert main(["stage", "-c", str(profile)]) == 0
    assert main(["status", "-c", str(profile), "--json"]) == 0
    captured = capsys.readouterr()
    state = (tmp_path / "root" / ".provision" / "state.json").read_text()
    for shown in (captured.out, captured.err, state):
        assert "s3cr3t" not in shown
    import base64

    assert {r["authorization"] for r in srv.stats.requests if r["key"] == "subset0.zip"} == \
        {"Basic " + base64.b64encode(b"reader:s3cr3t").decode()}, "the credentials went to the server"


def test_a_rerun_after_the_disk_filled_during_unpacking_counts_what_is_already_unpacked(built: Built, serve, write_profile, small_tmpfs,
                                                                                        monkeypatch, capsys) -> None:
    """An unpack stopped part way (here by Ctrl-C after two scans); then something else takes some of the room. What
    remains to unpack fits, and the plan must see that, not refuse for the scans already on disk."""
    import provision.staging.archive.extract as extract

    info = built.files["subset0.zip"]
    disk = small_tmpfs(info["size"] + 2 * info["unpacked_size"] + (1 << 20))
    real = extract.write_member
    written: list[str] = []

    def interrupted_after_two(fd, sm, archive, stop=None):  # noqa: ANN001, ANN202
        real(fd, sm, archive, stop)
        written.append(sm.member.name)
        if len(written) == 2:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(extract, "write_member", interrupted_after_two)
    srv = serve()
    profile = write_profile({"dataset": str(built.manifest), "sources": [srv.url + "/mirror/"], "subsets": "0", "mode": "archive",
                             "extract_workers": 1, "unpack_while_downloading": False, "root": str(disk / "data")})
    manifest = yaml.safe_load(built.manifest.read_text())
    manifest["files"] = [f for f in manifest["files"] if f["key"] == "subset0.zip"]
    built.manifest.write_text(yaml.safe_dump(manifest))
    assert main(["stage", "-c", str(profile)]) == 130
    monkeypatch.setattr(extract, "write_member", real)
    with zipfile.ZipFile(built.folder / "subset0.zip") as zf:
        done_bytes = sum(i.file_size for i in zf.infolist() if i.filename in written)
    assert done_bytes > 300_000, "scans, the largest members, went first"
    remaining = info["unpacked_size"] - done_bytes
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    # leave room for what remains (and half of what is done) but not for all of it again
    (disk / "someone-elses-file").write_bytes(b"\0" * (free - remaining - done_bytes // 2))
    capsys.readouterr()
    code = main(["plan", "-c", str(profile)])
    out = capsys.readouterr().out
    assert code == 0, out
    code, report = stage_json(profile, capsys)
    assert code == 0, report
    assert tree_md5s(disk / "data" / "part2" / "luna") == {k: v for k, v in expected_tree(built).items() if k.startswith("subset0/")}


def test_a_wrong_size_in_the_manifest_is_named_as_such(built: Built, serve, write_profile, capsys) -> None:
    manifest = yaml.safe_load(built.manifest.read_text())
    for f in manifest["files"]:
        if f["key"] == "subset0.zip":
            f["size"] += 5000
    built.manifest.write_text(yaml.safe_dump(manifest))
    srv = serve()
    profile = write_profile({"dataset": str(built.manifest), "sources": [srv.url + "/mirror/"], "subsets": "0", "mode": "archive"})
    code, report = stage_json(profile, capsys)
    assert code == 1
    error = {f["key"]: f for f in report["files"]}["subset0.zip"]["error"]
    assert "the manifest says" in error and "416" not in error and "md5" not in error, error


def test_a_server_that_never_answers_fails_in_a_few_timeouts(built: Built, write_profile, capsys) -> None:
    import socket
    import time

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # connections complete in the kernel's backlog; nobody ever reads or answers
    try:
        port = silent.getsockname()[1]
        profile = write_profile({"dataset": str(built.manifest), "sources": [f"http://127.0.0.1:{port}/mirror/"], "subsets": "0",
                                 "timeout_s": 1, "backoff_s": 0.1})
        start = time.monotonic()
        code, report = stage_json(profile, capsys)
        elapsed = time.monotonic() - start
    finally:
        silent.close()
    assert code == 1 and elapsed < 30, elapsed
    failed = [f for f in report["files"] if f["outcome"] == "failed"]
    assert failed and all("did not answer" in f["error"] for f in failed), failed


def test_status_shows_how_far_a_stream_got(tmp_path: Path, write_profile, capsys) -> None:
    data = build_luna_like(tmp_path / "d", subsets=1, scans=6, raw_bytes=500_000, extra_plain=False)
    size = data.files["subset0.zip"]["size"]
    with FileServer(data.folder, Faults(rate_per_conn=600_000)) as srv:
        profile = write_profile({"dataset": str(data.manifest), "sources": [srv.url + "/mirror/"], "mode": "stream"})
        stage_and_kill_half_way(profile, srv, size)
    assert main(["status", "-c", str(profile), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["files"][0]
    assert row["stage"] == "partial" and 10 < row["percent"] < 100, row


def test_verify_shows_member_names_without_acting_on_the_terminal(tmp_path: Path, serve, write_profile, capsys) -> None:
    folder = tmp_path / "mirror"
    write_zip(folder / "subset0.zip", [("subset0/\x1b[2Jevil.raw", b"x" * 1000)])
    manifest = manifest_for(folder, ["subset0.zip"])
    srv = serve(folder=folder)
    profile = write_profile({"dataset": str(manifest), "sources": [srv.url + "/mirror/"]})
    assert stage_json(profile, capsys)[0] == 0
    next((tmp_path / "root" / "part2" / "luna" / "subset0").iterdir()).unlink()
    assert main(["verify", "-c", str(profile)]) == 1
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b[2Jevil.raw" in out, out
