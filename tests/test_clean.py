"""`provision clean`: the staged data of some subsets, or all, removed after being shown; only what staging recorded,
never the reader's files, never through a link out of the data root, never a read-only copy's scans (only the links to
them); records that point elsewhere are refused by name; `status` and a rerun of `stage` agree with what is left."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from provision.cli import main
from tests.support.dataset import Built, build_luna_like, records_of, tree_md5s
from tests.support.kill import stage_killed_at
from tests.support.server import Faults, FileServer
from tests.test_kaggle_and_copies import tree_digest, unpack_like_kaggle
from tests.test_stage import expected_tree, stage_json


def statuses(profile: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    assert main(["status", "-c", str(profile), "--subsets", "all", "--json"]) == 0
    return {f["key"]: f["stage"] for f in json.loads(capsys.readouterr().out)["files"]}


def test_clean_shows_first_asks_then_removes_only_the_chosen_subsets(built: Built, write_profile, tmp_path: Path, capsys) -> None:
    profile = write_profile({"dataset": str(built.manifest), "sources": [str(built.folder)], "subsets": "all", "keep_archives": True})
    assert stage_json(profile, capsys)[0] == 0
    target = tmp_path / "root" / "part2" / "luna"
    before = tree_md5s(target)
    notes = target / "subset0" / "my-notes.txt"  # the reader's own files, beside the staged ones
    notes.write_text("mine")
    (target / "subset1" / "nested").mkdir()

    assert main(["clean", "-c", str(profile), "--subsets", "0-1", "--dry-run"]) == 0
    shown = capsys.readouterr().out
    assert "subset0.zip" in shown and "subset1.zip" in shown and "would remove" in shown and "subset2.zip" not in shown, shown
    assert tree_md5s(target) == {**before, "subset0/my-notes.txt": tree_md5s(target)["subset0/my-notes.txt"]}, "a dry run removes nothing"

    assert main(["clean", "-c", str(profile), "--subsets", "0-1"]) == 2, "not a terminal and no --yes: it does not guess"
    err = capsys.readouterr().err
    assert "asks first" in err and "--yes" in err
    assert main(["clean", "-c", str(profile)]) == 2
    assert "clean needs --subsets" in capsys.readouterr().err
    assert main(["clean", "-c", str(profile), "--subsets", "fit", "--yes"]) == 2
    capsys.readouterr()

    assert main(["clean", "-c", str(profile), "--subsets", "0-1", "--yes", "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["done"] and sorted(done["keys"]) == ["subset0.zip", "subset1.zip"] and done["bytes"] > 0
    left = tree_md5s(target)
    assert left == {k: v for k, v in before.items() if not k.startswith(("subset0", "subset1"))} | {"subset0/my-notes.txt": left["subset0/my-notes.txt"]}
    assert notes.read_text() == "mine" and (target / "subset1" / "nested").is_dir(), "nothing staging did not record is touched"
    assert (target / "subset2.zip").is_file() and (target / "annotations.csv").is_file()
    assert statuses(profile, capsys) == {"subset0.zip": "missing", "subset1.zip": "missing", "subset2.zip": "extracted",
                                         "subset3.zip": "extracted", "annotations.csv": "verified"}

    code, report = stage_json(profile, capsys)
    assert code == 0 and {f["key"]: f["outcome"] for f in report["files"]}["subset0.zip"] == "staged"
    assert {f["key"]: f["outcome"] for f in report["files"]}["subset2.zip"] == "already staged"
    assert tree_md5s(target) == {**before, "subset0/my-notes.txt": left["subset0/my-notes.txt"]}

    assert main(["clean", "-c", str(profile), "--subsets", "all", "--yes"]) == 0
    assert "removed" in capsys.readouterr().out
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == ["subset0", "subset0/my-notes.txt", "subset1",
                                                                                     "subset1/nested"]
    assert set(statuses(profile, capsys).values()) == {"missing"}
    assert main(["clean", "-c", str(profile), "--subsets", "all", "--yes"]) == 0
    assert "nothing staged" in capsys.readouterr().out


def test_clean_takes_only_the_links_to_a_read_only_copy(built: Built, write_profile, tmp_path: Path, read_only, capsys) -> None:
    data_sets = tmp_path / "kaggle" / "input"
    copy = read_only(unpack_like_kaggle(built, data_sets / "luna16", [0, 1, 2, 3]))
    before = tree_digest(copy)
    profile = write_profile({"dataset": str(built.manifest), "sources": [f"kaggle:{data_sets}"], "subsets": "0-1"})
    code, report = stage_json(profile, capsys)
    assert code == 0 and {f["outcome"] for f in report["files"] if f["key"].startswith("subset")} == {"linked"}, report
    target = tmp_path / "root" / "part2" / "luna"
    assert main(["clean", "-c", str(profile), "--subsets", "0", "--yes"]) == 0
    out = capsys.readouterr().out
    assert "links (the files they lead to are kept)" in out, out
    assert not (target / "subset0").exists() and any((target / "subset1").iterdir())
    assert tree_digest(copy) == before, "the copy's scans are untouched"


def test_records_and_links_that_lead_elsewhere_are_refused_by_name(built: Built, write_profile, tmp_path: Path, capsys) -> None:
    profile = write_profile({"dataset": str(built.manifest), "sources": [str(built.folder)], "subsets": "0-2"})
    assert stage_json(profile, capsys)[0] == 0
    root = tmp_path / "root"
    target = root / "part2" / "luna"
    elsewhere = tmp_path / "other-disk" / "subset1"  # the reader moved a subset away and left a link in its place
    elsewhere.parent.mkdir()
    os.rename(target / "subset1", elsewhere)
    os.symlink(elsewhere, target / "subset1")
    moved = tree_md5s(elsewhere)
    victim = tmp_path / "victim.txt"  # a hostile or damaged record names a file outside the data set
    victim.write_text("not provision's")
    state_path = root / ".provision" / "state.json"
    state = json.loads(state_path.read_text())
    state["files"]["subset2.zip"]["members"]["../../../victim.txt"] = [15, None]
    state["files"]["subset2.zip"]["members"]["/etc/hostname"] = [15, None]
    state_path.write_text(json.dumps(state))

    assert main(["clean", "-c", str(profile), "--subsets", "1-2", "--yes"]) == 0
    out = capsys.readouterr().out
    assert "'../../../victim.txt', which is not a path inside" in out and "'/etc/hostname'" in out, out
    assert "leading out of" in out, out
    assert victim.read_text() == "not provision's" and tree_md5s(elsewhere) == moved, "nothing outside the data set's folder goes"
    assert (target / "subset1").is_symlink(), "the link is the reader's: left alone"
    assert not (target / "subset2").exists() and (target / "subset0").is_dir()
    assert tree_md5s(target / "subset0") == {k[len("subset0/"):]: v for k, v in expected_tree(built).items() if k.startswith("subset0/")}


@pytest.mark.parametrize("mode", ["archive", "stream"])
def test_members_held_by_a_killed_run_are_cleaned_with_their_subset(tmp_path: Path, write_profile, capsys, mode: str) -> None:
    """A run killed while members are held (checked, not yet named: their archive was not vouched for yet) leaves them under
    their archive's temporary names; `clean` removes those too, and its dry run writes nothing, not even to a damaged state."""
    data = build_luna_like(tmp_path / "d", subsets=1, scans=4, raw_bytes=700_000, extra_plain=False)
    root = tmp_path / "root"
    target = root / "part2" / "luna"
    with FileServer(data.folder, Faults(rate_per_conn=2_000_000), records=records_of(data)) as srv:
        profile = write_profile({"dataset": str(data.manifest), "sources": [srv.url + "/mirror/"], "mode": mode, "connections": 2,
                                 "extract_workers": 1})
        stage_killed_at(profile, "provision.staging.archive.members:MemberWriter.finish", nth=3)
    held = [p for p in target.rglob("*.provision-tmp")]
    assert len(held) >= 3
    state_dir = root / ".provision"
    before = sorted(p.name for p in state_dir.iterdir())
    assert main(["clean", "-c", str(profile), "--subsets", "0", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in state_dir.iterdir()) == before and all(p.exists() for p in held), "a dry run writes nothing"
    counted = re.search(r"would remove (\d+) files", out)
    assert counted and int(counted.group(1)) >= len(held), out
    assert main(["clean", "-c", str(profile), "--subsets", "0", "--yes"]) == 0
    capsys.readouterr()
    assert not [p for p in target.rglob("*") if p.is_file()], "every file of the subset went, held ones too"
