"""Archive mode unpacks each member as soon as its bytes have landed, not once the whole archive is there; the archive's
md5 still vouches for every member, and a damaged download, a lying directory or a signal leaves no member it cannot."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from provision.staging.archive import landing
from provision.staging.archive.members import is_held
from provision.staging.archive.stream import read_layout
from provision.staging.stop import StopSignal
from provision.staging.transport.local import LocalTransfer
from tests.conftest import REPO, stage_in_child
from tests.support.dataset import build_luna_like, records_of, tree_md5s
from tests.support.server import Faults, FileServer
from tests.test_progress_and_archives import collect
from tests.test_stage import expected_tree, stage_json


def temp_files(target: Path) -> list[Path]:
    return [p for p in target.rglob("*") if p.name.endswith(".provision-tmp")]


@pytest.mark.parametrize("early", [True, False])
def test_members_are_unpacked_while_the_archive_downloads(tmp_path: Path, write_profile, early: bool) -> None:
    data = build_luna_like(tmp_path / "d", subsets=1, scans=4, raw_bytes=700_000, extra_plain=False)
    assert data.files["subset0.zip"]["size"] > landing.MIN_ARCHIVE_BYTES
    with FileServer(data.folder, Faults(rate_per_conn=500_000), records=records_of(data)) as srv:
        profile = write_profile({"dataset": str(data.manifest), "sources": [srv.url + "/mirror/"], "mode": "archive",
                                 "connections": 4, "unpack_while_downloading": early})
        events = collect(profile)
    target = tmp_path / "root" / "part2" / "luna"
    assert tree_md5s(target) == expected_tree(data)
    last_byte = max(i for i, (event, _) in enumerate(events) if event == "bytes")
    unpacked = [i for i, (event, _) in enumerate(events) if event == "unpacked"]
    assert len(unpacked) == 8
    if early:
        assert unpacked[0] < last_byte, "the first member was unpacked before the archive's last byte arrived"
    else:
        assert unpacked[0] > last_byte, "with unpack_while_downloading: false, only once the archive is whole"
    assert not (target / "subset0.zip").exists() and not temp_files(target)
    state = json.loads((tmp_path / "root" / ".provision" / "state.json").read_text())["files"]["subset0.zip"]
    assert state["extracted"] is True and len(state["members"]) == 8


def test_the_segments_after_the_first_start_at_member_headers(tmp_path: Path, write_profile) -> None:
    """Once the directory is read, and before they ask, the segments after the first are moved to the nearest member
    headers: a member then lands from its head on, and is unpacked as it lands, instead of waiting for a head that
    would come with the last bytes of the segment before it."""
    data = build_luna_like(tmp_path / "d", subsets=1, scans=8, raw_bytes=2_000_000, extra_plain=False)
    size = data.files["subset0.zip"]["size"]
    with zipfile.ZipFile(data.folder / "subset0.zip") as zf:
        heads = {i.header_offset for i in zf.infolist()}
    with FileServer(data.folder, Faults(rate_per_conn=4_000_000), records=records_of(data)) as srv:
        profile = write_profile({"dataset": str(data.manifest), "sources": [srv.url + "/mirror/"], "mode": "archive", "connections": 4})
        collect(profile)
    assert tree_md5s(tmp_path / "root" / "part2" / "luna") == expected_tree(data)
    asked = sorted(srv.stats.requests, key=lambda r: r["started"])
    spans = [tuple(int(x) for x in r["range"].split("=")[1].split("-")) for r in asked if r["key"] == "subset0.zip"]
    lead_end = spans[0][1] + 1
    segments = [(a, b) for a, b in spans[1:] if a < size - 2 * 64 * 1024]  # not the directory's block
    assert spans[0][0] == 0 and len(segments) >= 4, spans
    assert all(a in heads | {lead_end} for a, _ in segments), f"every later segment starts at a member header: {spans}"
    assert sum(b - a + 1 for a, b in segments) + lead_end == size, "the segments cover the archive once"


def test_a_damaged_download_leaves_no_member_it_unpacked(tmp_path: Path, write_profile, capsys) -> None:
    """Every copy of the archive has a byte flipped in its last member: the members before it land (their CRCs are
    right), the md5 then fails on every try, and not one of them keeps its name."""
    data = build_luna_like(tmp_path / "d", subsets=1, scans=4, raw_bytes=700_000, extra_plain=False)
    with zipfile.ZipFile(data.folder / "subset0.zip") as zf:
        last = max(zf.infolist(), key=lambda i: i.header_offset)
    with FileServer(data.folder, Faults(rate_per_conn=2_000_000, corrupt_at={"subset0.zip": last.header_offset + 200}),
                    records=records_of(data)) as srv:
        profile = write_profile({"dataset": str(data.manifest), "sources": [srv.url + "/mirror/"], "mode": "archive", "connections": 4})
        events = collect(profile)  # the engine's run: the file fails, the run goes on
        code, report = stage_json(profile, capsys)
    assert code != 0 and "md5" in json.dumps(report)
    target = tmp_path / "root" / "part2" / "luna"
    assert any(event == "unpacked" for event, _ in events), "members did land before the md5 failed"
    assert not list(target.rglob("*")), "no member of a damaged archive keeps a final name, nor a folder it made"


def test_a_body_damaged_once_is_fetched_again_and_its_members_unpacked_again(tmp_path: Path, write_profile, capsys) -> None:
    data = build_luna_like(tmp_path / "d", subsets=2, scans=3, raw_bytes=600_000, extra_plain=False)
    with FileServer(data.folder, Faults(corrupt_once_at={"subset1.zip": 5000}), records=records_of(data)) as srv:
        profile = write_profile({"dataset": str(data.manifest), "sources": [srv.url + "/mirror/"], "mode": "archive", "connections": 4})
        code, report = stage_json(profile, capsys)
    assert code == 0, report
    target = tmp_path / "root" / "part2" / "luna"
    assert tree_md5s(target) == expected_tree(data) and not temp_files(target)
    retried = next(f for f in report["files"] if f["key"] == "subset1.zip")["retries"]
    assert any("md5" in r for r in retried), retried


def two_archives(folder: Path) -> tuple[Path, Path]:
    """An archive of two members, and one of the same two (same bytes, same offsets) and a third after them."""
    folder.mkdir(parents=True)
    members = [(f"subset0/scan{i}.raw", bytes([i]) * 300_000 + os.urandom(50_000)) for i in range(3)]
    paths = []
    for name, count in (("two.zip", 2), ("three.zip", 3)):
        with zipfile.ZipFile(folder / name, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for member, blob in members[:count]:
                zf.writestr(member, blob)
        paths.append(folder / name)
    return paths[0], paths[1]


def test_members_cut_by_another_directory_than_the_archive_own_are_removed(tmp_path: Path) -> None:
    """The directory read before the download (a mirror's tail that lied) lists two members; the archive that arrived
    (md5 and all) holds three. Both members check out against the directory they were cut by, yet they go, and the
    archive is left to be unpacked the ordinary way."""
    two, three = two_archives(tmp_path / "zips")
    target = tmp_path / "target"
    layout = read_layout(LocalTransfer(str(two)), two.stat().st_size, target, "subset0.zip")
    run = landing.Landing(lambda halt: layout, three, lambda start, end: end, target=target, workers=2, stop=StopSignal())
    assert run.finish(three) is None
    assert len(run.written) == 0 and not list(target.rglob("*"))
    assert landing.same_directory(three, read_layout(LocalTransfer(str(three)), three.stat().st_size, target, "subset0.zip"))


def test_a_landing_takes_a_member_only_once_all_its_bytes_are_there(tmp_path: Path) -> None:
    two, _ = two_archives(tmp_path / "zips")
    target = tmp_path / "target"
    layout = read_layout(LocalTransfer(str(two)), two.stat().st_size, target, "subset0.zip")
    second = layout.members[1].header_offset
    landed = {"upto": second}  # the first member's bytes are there, the second's not yet
    run = landing.Landing(lambda halt: layout, two, lambda start, end: min(end, max(start, landed["upto"])), target=target, workers=2,
                          stop=StopSignal())
    first, second = (sm.member for sm in layout.members)
    deadline = time.monotonic() + 10
    while not is_held(first, "subset0.zip") and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    assert is_held(first, "subset0.zip") and not is_held(second, "subset0.zip")
    assert not list(target.rglob("*.raw")), "held, not named: the archive is not vouched for yet"
    members = run.finish(two)
    assert members is not None and {m.name for m in members} == {"subset0/scan0.raw", "subset0/scan1.raw"}
    with zipfile.ZipFile(two) as zf:
        assert all((target / name).read_bytes() == zf.read(name) for name in zf.namelist())


def test_a_member_still_landing_is_followed_and_named_only_once_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Half of the first member's bytes have landed: its inflation is under way (a temporary file with bytes in it),
    it has no name yet; once the rest lands it takes its name, whole. A landing abandoned with a member half way
    leaves no temporary file."""
    monkeypatch.setattr(landing, "FOLLOW_BYTES", 8 * 1024)
    two, _ = two_archives(tmp_path / "zips")
    with zipfile.ZipFile(two) as zf:
        want = {name: zf.read(name) for name in zf.namelist()}
    for finish in (True, False):
        target = tmp_path / f"target-{finish}"
        layout = read_layout(LocalTransfer(str(two)), two.stat().st_size, target, "subset0.zip")
        half = layout.members[0].header_offset + (layout.members[1].header_offset - layout.members[0].header_offset) // 2
        landed = {"upto": half}
        run = landing.Landing(lambda halt, layout=layout: layout, two, lambda start, end, landed=landed: min(end, max(start, landed["upto"])),
                              target=target, workers=2, stop=StopSignal())
        deadline = time.monotonic() + 10
        while not [t for t in target.rglob("*.provision-tmp") if t.stat().st_size] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [t for t in target.rglob("*.provision-tmp") if t.stat().st_size], "the first member is being inflated"
        assert not (target / "subset0" / "scan0.raw").exists(), "no name before all its bytes are in"
        if finish:
            landed["upto"] = two.stat().st_size
            members = run.finish(two)
            assert members is not None and all((target / name).read_bytes() == blob for name, blob in want.items())
        else:
            run.abandon(remove=True)
        assert not list(target.rglob("*.provision-tmp")), "no temporary file left, finished or abandoned"


def test_ctrl_c_while_members_land_stops_at_once_and_the_rerun_resumes(tmp_path: Path, write_profile) -> None:
    """SIGINT three quarters through an archive whose first members have landed: exit 130 promptly, its members held (no
    half-written temporary file), nothing under a final name; the rerun resumes the download, with the range bounds it saved (moved to member
    headers), and ends with the whole tree."""
    data = build_luna_like(tmp_path / "d", subsets=1, scans=12, raw_bytes=700_000, extra_plain=False)
    size = data.files["subset0.zip"]["size"]
    with zipfile.ZipFile(data.folder / "subset0.zip") as zf:
        heads = {i.header_offset for i in zf.infolist()}
    target = tmp_path / "root" / "part2" / "luna"
    with FileServer(data.folder, Faults(rate_per_conn=1_000_000, hold_after=size * 3 // 4), records=records_of(data)) as srv:
        profile = write_profile({"dataset": str(data.manifest), "sources": [srv.url + "/mirror/"], "mode": "archive", "connections": 2})
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen([sys.executable, "-m", "provision", "stage", "-c", str(profile)], env=env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while not list(target.rglob("*.held.provision-tmp")) and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.02)
            assert list(target.rglob("*.held.provision-tmp")), "a member landed before the download was half done"
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 130, out + err
        assert "Traceback" not in err, err
        assert not [p for p in temp_files(target) if not p.name.endswith(".held.provision-tmp")], "only members held, none half written"
        assert not list(target.rglob("*.raw")) and not (target / "subset0.zip").exists(), "nothing under a final name"
        saved = json.loads(next((tmp_path / "root").rglob("subset0.zip.progress.json")).read_text())
        assert len(saved["starts"]) >= 3 and set(saved["starts"][2:]) <= heads, f"the bounds moved to member headers: {saved}"
        srv.release()
        srv.faults.rate_per_conn = None
        done = stage_in_child(profile)
        assert done.returncode == 0, done.stderr
        assert srv.stats.bytes_sent <= 1.25 * size + 4 * 64 * 1024, "the rerun fetched little twice"
    assert tree_md5s(target) == expected_tree(data) and not temp_files(target)


def test_the_directory_read_takes_no_connection_beyond_the_host_cap(tmp_path: Path, write_profile) -> None:
    """A host that blocks a client opening more connections than it allows (Zenodo): the directory is read on one of
    the allowed connections right after the first answer, while the other byte ranges wait for it (not once a range
    has ended), so nothing is refused and members land early."""
    data = build_luna_like(tmp_path / "d", subsets=1, scans=4, raw_bytes=700_000, extra_plain=False)
    with FileServer(data.folder, Faults(rate_per_conn=500_000, max_conns=2), records=records_of(data)) as srv:
        profile = write_profile({"dataset": str(data.manifest), "sources": [srv.url + "/mirror/"], "mode": "archive", "connections": 2})
        events = collect(profile)
    assert tree_md5s(tmp_path / "root" / "part2" / "luna") == expected_tree(data)
    assert srv.stats.max_in_flight <= 2 and 403 not in srv.stats.statuses(), srv.stats.statuses()
    last_byte = max(i for i, (event, _) in enumerate(events) if event == "bytes")
    assert min(i for i, (event, _) in enumerate(events) if event == "unpacked") < last_byte
    ranges = [r["range"] for r in sorted(srv.stats.requests, key=lambda r: r["started"]) if r["key"] == "subset0.zip"]
    assert len(ranges) <= 4 + 2, ranges  # two segments a connection, and the directory's block or two
    size = data.files["subset0.zip"]["size"]
    first, second = (int(r.split("=")[1].split("-")[0]) for r in ranges[:2])
    assert first == 0 and second >= size - 2 * 64 * 1024, f"the directory is asked for right after the first answer: {ranges}"
