"""What is forced to disk (fsync) before it takes its final name: kept archives and every unpacked member; not an
archive that is unpacked and deleted a moment later (its md5 and its members' CRCs vouch for its bytes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from provision.staging.archive import writeback
from tests.support.dataset import Built, tree_md5s
from tests.test_stage import expected_tree, stage_json


@pytest.fixture
def fsynced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files fsync'd during the test (read from the descriptor before the real fsync)."""
    names: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        names.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return names


@pytest.fixture
def forgotten(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files whose whole page cache was let go during the test (after their fsync)."""
    names: list[str] = []
    real = writeback.forget

    def spy(fd: int, offset: int = 0, length: int = 0) -> None:
        if offset == length == 0:
            names.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd, offset, length)

    monkeypatch.setattr(writeback, "forget", spy)
    return names


@pytest.mark.parametrize("mode", ["archive", "stream"])
def test_members_are_durable_and_a_deleted_archive_is_not_forced_to_disk(built: Built, serve, write_profile, capsys, tmp_path: Path,
                                                                           fsynced: list[str], forgotten: list[str], mode: str) -> None:
    srv = serve()
    profile = write_profile({"dataset": str(built.manifest), "sources": [srv.url + "/mirror/"], "mode": mode})
    code, report = stage_json(profile, capsys)
    assert code == 0, report
    assert tree_md5s(tmp_path / "root" / "part2" / "luna") == expected_tree(built)
    members = [n for f in built.files.values() for n in f.get("members", {})]
    synced_members = [n for n in fsynced if n.endswith(".provision-tmp")]
    assert len(synced_members) == len(members), "every member fsync'd under its temporary name, before the rename"
    assert sorted(n for n in forgotten if n.endswith(".provision-tmp")) == sorted(synced_members), \
        "every member's pages let go once it is on disk"
    assert not [n for n in forgotten if n.endswith(".zip.part")], "an archive that is not on disk keeps its pages"
    assert not [n for n in fsynced if n.endswith(".zip.part")], "no archive that is deleted after unpacking is forced to disk"
    plain = [k for k, f in built.files.items() if not f.get("members")]
    assert all(any(n.endswith(f"{k}.part") for n in fsynced) for k in plain), "a file kept as it is, is"


def test_kept_archives_are_durable(built: Built, serve, write_profile, capsys, fsynced: list[str], forgotten: list[str]) -> None:
    srv = serve()
    profile = write_profile({"dataset": str(built.manifest), "sources": [srv.url + "/mirror/"], "mode": "archive", "keep_archives": True})
    code, report = stage_json(profile, capsys)
    assert code == 0, report
    archives = [k for k, f in built.files.items() if f.get("members")]
    assert archives and all(any(n.endswith(f"{k}.part") for n in fsynced) for k in archives)
    assert all(any(n.endswith(f"{k}.part") for n in forgotten) for k in archives), "a kept archive's pages let go once it is on disk"
