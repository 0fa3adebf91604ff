"""Nothing false, nothing half, under a final name, even for a moment (issues #30 and #31).

A member is written under a temporary name of its archive's, and takes its final name only once the whole archive is
vouched for (its md5, its own directory, or the data set's pinned CRCs); an archive's members are named together, each
scan's volume (.raw) before its header (.mhd), which is what the book globs. An archive writes, keeps or removes only
the members of its own directory. Each case is a real kill -9 at an exact point (tests/support/kill.py), or a stand-in
server whose answers lie, and then a rerun.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import yaml

from provision.cli import main
from provision.staging.copies import raw_size_from_header, read_header
from tests.conftest import stage_in_child
from tests.support.dataset import build_luna_like, records_of, tree_md5s
from tests.support.kill import stage_killed_at
from tests.support.server import Faults, FileServer
from tests.test_adversarial import manifest_for, twin_archives
from tests.test_stage import expected_tree, total_bytes


def final_names(target: Path) -> list[str]:
    """Files under a final name (not the tool's hidden temporary ones), relative to ``target``."""
    return sorted(str(p.relative_to(target)) for p in target.rglob("*")
                  if (p.is_file() or p.is_symlink()) and not p.name.startswith(".") and not p.name.endswith(".zip"))


def headers_without_their_volume(target: Path) -> list[str]:
    """Every .mhd the book would find (subset*/*.mhd) whose .raw is missing or not of the size its header says."""
    bad = []
    for mhd in sorted(target.glob("subset*/*.mhd")):
        raw = mhd.with_name(read_header(mhd)["ElementDataFile"])
        if not raw.exists() or raw.stat().st_size != raw_size_from_header(read_header(mhd)):
            bad.append(str(mhd.relative_to(target)))
    return bad


# ---------------------------------------------------------------- issue #30: a scan takes its final name only whole


@pytest.mark.parametrize("mode", ["landing", "archive", "stream", "copy"])
def test_no_header_is_seen_without_its_whole_volume_even_killed_as_it_is_named(tmp_path: Path, write_profile, mode: str) -> None:
    """Killed right after the first .mhd took its final name (every mode: archive mode unpacking while the archive lands
    or once it is whole, stream mode, links to an unpacked copy): every .mhd the book finds has its whole .raw beside it;
    the rerun completes the tree."""
    data = build_luna_like(tmp_path / "d", subsets=2, scans=4, raw_bytes=700_000, extra_plain=False)
    target = tmp_path / "root" / "part2" / "luna"
    with FileServer(data.folder, Faults(rate_per_conn=4_000_000), records=records_of(data)) as srv:
        sources = [srv.url + "/mirror/"]
        if mode == "copy":
            copy = tmp_path / "copy"
            for n in range(2):
                with zipfile.ZipFile(data.folder / f"subset{n}.zip") as zf:
                    zf.extractall(copy)
            sources = [f"unpacked:{copy}"]
        profile = write_profile({"dataset": str(data.manifest), "sources": sources, "connections": 4, "files_in_flight": 1,
                                 "mode": "stream" if mode == "stream" else "archive", "unpack_while_downloading": mode == "landing"})
        stage_killed_at(profile, "os:replace", arg=1, suffix=".mhd")
        assert list(target.glob("subset*/*.mhd")), "killed once a header had its final name"
        assert headers_without_their_volume(target) == []
        done = stage_in_child(profile)
        assert done.returncode == 0, done.stderr
    assert {k: v for k, v in tree_md5s(target).items() if not k.startswith(".")} == expected_tree(data)
    assert headers_without_their_volume(target) == []


# ---------------------------------------------------------------- issue #31: another archive's staged files lost


def forge_directory(archive: Path, entry: str, name: str, size_crc: tuple[int, int] | None) -> bytes:
    """``archive``'s bytes with its central directory entry ``entry`` renamed ``name`` (of the same length) and, with
    ``size_crc``, declaring that size and CRC-32: a directory that lies about the body it comes with."""
    blob = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        at = zf.start_dir
    old, new = entry.encode(), name.encode()
    assert len(old) == len(new)
    while blob[at : at + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack("<HHH", blob[at + 28 : at + 34])
        if blob[at + 46 : at + 46 + name_len] == old:
            blob[at + 46 : at + 46 + name_len] = new
            if size_crc is not None:
                struct.pack_into("<I", blob, at + 16, size_crc[1])
                struct.pack_into("<I", blob, at + 24, size_crc[0])
            return bytes(blob)
        at += 46 + name_len + extra_len + comment_len
    raise AssertionError(f"{entry} is not in {archive}")


@pytest.mark.parametrize("mode", ["archive", "stream"])
@pytest.mark.parametrize("lie", ["names its file", "overwrites its file"])
def test_a_directory_that_lies_never_touches_another_archive_s_members(tmp_path: Path, write_profile, capsys, mode: str, lie: str) -> None:
    """subset1 is staged. The server then answers the small ranged reads of subset0.zip's tail (its directory) from a
    stale copy whose directory names one of subset1's scans: with that scan's size and CRC (an archive that would count
    it as its own, then remove it), or with the size and CRC of subset0's own member at that place (one that would write
    subset0's bytes under it). The body, and so the md5, is subset0's own. subset1's scan stays as it was, its record
    true; archive mode stages subset0 from its own directory, stream mode refuses the source."""
    data = build_luna_like(tmp_path / "d", subsets=2, scans=4, raw_bytes=700_000, extra_plain=False)
    target = tmp_path / "root" / "part2" / "luna"
    with zipfile.ZipFile(data.folder / "subset0.zip") as zf:
        mine = sorted((i for i in zf.infolist() if i.filename.endswith(".raw")), key=lambda i: i.header_offset)[1]
    with zipfile.ZipFile(data.folder / "subset1.zip") as zf:
        theirs = min((i for i in zf.infolist() if i.filename.endswith(".raw")), key=lambda i: i.filename)
    stale = tmp_path / "stale" / "subset0.zip"
    stale.parent.mkdir()
    size_crc = (theirs.file_size, theirs.CRC) if lie == "names its file" else None
    stale.write_bytes(forge_directory(data.folder / "subset0.zip", mine.filename, theirs.filename, size_crc))
    with FileServer(data.folder, records=records_of(data)) as srv:
        first = write_profile({"dataset": str(data.manifest), "sources": [srv.url + "/mirror/"], "subsets": "1", "mode": mode})
        staged_first = stage_in_child(first)
        assert staged_first.returncode == 0, staged_first.stdout + staged_first.stderr
        staged = tree_md5s(target)
        srv.faults.small_ranges_from = {"subset0.zip": stale}
        profile = write_profile({"dataset": str(data.manifest), "sources": [srv.url + "/mirror/"], "subsets": "0-1", "mode": mode,
                                 "stream_ranges": 1, "connections": 4})
        done = stage_in_child(profile)
    after = tree_md5s(target)
    assert {k: after.get(k) for k in staged} == staged, f"subset1's files are untouched ({done.stdout}{done.stderr})"
    state = json.loads((tmp_path / "root" / ".provision" / "state.json").read_text())["files"]
    assert state["subset1.zip"]["extracted"] is True
    if mode == "archive":
        assert done.returncode == 0, done.stdout + done.stderr
        assert {k: v for k, v in after.items() if not k.startswith(".")} == expected_tree(data)
    else:
        assert done.returncode != 0 and "directory" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        assert [n for n in final_names(target) if n.startswith("subset0/")] == []


# ---------------------------------------------------------------- issue #31: nothing false under a final name after a kill


@pytest.mark.parametrize("mode", ["archive", "stream"])
def test_killed_once_an_impostor_s_members_check_out_none_has_a_final_name(tmp_path: Path, write_profile, mode: str) -> None:
    """The mirror serves another archive of the same size whose members match its own directory; the kill comes once two
    of them have checked out (their CRCs match), before the archive's md5 is known. None of them has a final name. The
    rerun, against the data set's archive, stages it whole, using none of the impostor's bytes."""
    folder = tmp_path / "mirror"
    real, impostor = twin_archives(folder)
    good = real.read_bytes()
    manifest = manifest_for(folder, ["subset0.zip"])
    real.write_bytes(impostor)
    target = tmp_path / "root" / "part2" / "luna"
    with FileServer(folder, Faults(rate_per_conn=2_000_000)) as srv:
        profile = write_profile({"dataset": str(manifest), "sources": [srv.url + "/mirror/"], "mode": mode, "connections": 4})
        stage_killed_at(profile, "provision.staging.archive.members:MemberWriter.finish", nth=2)
        assert final_names(target) == [], "no member of an archive not vouched for under a final name"
        real.write_bytes(good)
        srv.faults.rate_per_conn = None
        done = stage_in_child(profile)
        assert done.returncode == 0, done.stderr
    with zipfile.ZipFile(real) as zf:
        want = {n: hashlib.md5(zf.read(n)).hexdigest() for n in zf.namelist()}
    assert {k: v for k, v in tree_md5s(target).items() if not k.startswith(".")} == want
    assert not [p for p in target.rglob("*.provision-tmp")], "no temporary file is left"


@pytest.mark.parametrize("mode", ["archive", "stream"])
def test_members_held_at_a_kill_are_taken_up_not_inflated_again(tmp_path: Path, write_profile, mode: str) -> None:
    """Killed once three members are held (checked out, not yet named): the rerun names them as they are, inflating only
    the others (their temporary files are the ones the rerun names, not new ones)."""
    data = build_luna_like(tmp_path / "d", subsets=1, scans=4, raw_bytes=700_000, extra_plain=False)
    target = tmp_path / "root" / "part2" / "luna"
    with FileServer(data.folder, Faults(rate_per_conn=2_000_000), records=records_of(data)) as srv:
        profile = write_profile({"dataset": str(data.manifest), "sources": [srv.url + "/mirror/"], "mode": mode, "connections": 2,
                                 "extract_workers": 1})
        stage_killed_at(profile, "provision.staging.archive.members:MemberWriter.finish", nth=3)
        held = {p: p.stat().st_ino for p in target.rglob("*.provision-tmp")}
        assert len(held) >= 3 and final_names(target) == []
        srv.faults.rate_per_conn = None
        done = stage_in_child(profile)
        assert done.returncode == 0, done.stderr
    assert {k: v for k, v in tree_md5s(target).items() if not k.startswith(".")} == expected_tree(data)
    inodes = {p.stat().st_ino for p in target.rglob("*") if p.is_file()}
    assert len(set(held.values()) & inodes) >= 3, "the held members are the files that took their names"


# ---------------------------------------------------------------- issue #31: a complete download is never fetched again


@pytest.mark.parametrize("point", [
    ("archive", "provision.staging.fetch:verify_and_rename", "before"),
    ("archive", "provision.staging.fetch:verify_and_rename", "after"),
    ("archive", "provision.staging.state:StateStore.fetched", "after"),
    ("stream", "provision.staging.state:StateStore.streamed", "before"),
], ids=["archive: every byte in, not yet renamed", "archive: renamed, not yet recorded", "archive: recorded, not yet unpacked",
        "stream: every member named, not yet recorded"])
def test_killed_once_every_byte_of_an_archive_is_in_the_rerun_fetches_little_again(tmp_path: Path, write_profile,
                                                                                  point: tuple[str, str, str]) -> None:
    """A kill once an archive's every byte is in (at each step from there to its record): the rerun fetches within
    1.25x of the data set in all, counted by the server, and stages the whole tree."""
    mode, where, when = point
    # the other archive, streamed at the same time (two a core), loses what it inflated since its last member: members of
    # a few % of the data set, as LUNA16's (134 MB of 66 GB), not a third of it
    data = build_luna_like(tmp_path / "d", subsets=2, scans=10, raw_bytes=280_000, extra_plain=False)
    target = tmp_path / "root" / "part2" / "luna"
    with FileServer(data.folder, records=records_of(data)) as srv:
        profile = write_profile({"dataset": str(data.manifest), "sources": [srv.url + "/mirror/"], "mode": mode, "connections": 4,
                                 "files_in_flight": 1})
        stage_killed_at(profile, where, when=when, arg=1, suffix=".zip")
        done = stage_in_child(profile)
        assert done.returncode == 0, done.stderr
        sent = srv.stats.bytes_sent
    assert {k: v for k, v in tree_md5s(target).items() if not k.startswith(".")} == expected_tree(data)
    assert sent <= 1.25 * total_bytes(data), f"{sent} bytes sent for a data set of {total_bytes(data)}"


def test_a_complete_archive_under_its_final_name_is_checked_not_fetched(tmp_path: Path, write_profile, capsys) -> None:
    """The archive is already in the target under its own name (a run killed after the rename, or a copy put there):
    its md5 is checked, and it is unpacked without a byte fetched."""
    data = build_luna_like(tmp_path / "d", subsets=1, scans=2, raw_bytes=300_000, extra_plain=False)
    target = tmp_path / "root" / "part2" / "luna"
    target.mkdir(parents=True)
    shutil.copy(data.folder / "subset0.zip", target / "subset0.zip")
    with FileServer(data.folder, records=records_of(data)) as srv:
        profile = write_profile({"dataset": str(data.manifest), "sources": [srv.url + "/mirror/"], "mode": "archive"})
        done = stage_in_child(profile)
        assert done.returncode == 0, done.stderr
        assert srv.stats.bytes_sent == 0
    assert {k: v for k, v in tree_md5s(target).items() if not k.startswith(".")} == expected_tree(data)


@pytest.mark.parametrize("early", [True, False], ids=["unpacked while it lands", "unpacked once whole"])
def test_without_an_md5_the_pinned_members_vouch_for_an_archive_in_archive_mode(tmp_path: Path, write_profile, early: bool) -> None:
    """The manifest has no md5 for the archive, only the members `provision pin` recorded. The mirror then serves another
    archive of the same size, consistent in itself: it is refused before any of its members has a final name."""
    folder = tmp_path / "mirror"
    real, impostor = twin_archives(folder)
    manifest = manifest_for(folder, ["subset0.zip"])
    target = tmp_path / "root" / "part2" / "luna"
    with FileServer(folder) as srv:
        profile = write_profile({"dataset": str(manifest), "sources": [srv.url + "/mirror/"], "mode": "archive",
                                 "unpack_while_downloading": early})
        assert main(["pin", "-c", str(profile)]) == 0
        text = yaml.safe_load(manifest.read_text())
        for entry in text["files"]:
            entry.pop("md5")
        manifest.write_text(yaml.safe_dump(text))
        real.write_bytes(impostor)
        done = stage_in_child(profile)
    assert done.returncode != 0 and "pinned" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert final_names(target) == [], "none of the impostor's members has a final name"
