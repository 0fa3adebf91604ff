"""Kaggle and data that is already somewhere: detection, staging from an unpacked read-only copy (nothing
downloaded or copied), pinned members, and `mirror --to DIR` for a copy that outlives a Colab session."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import yaml

from provision.cli import main
from provision.environment import detect
from tests.support.dataset import Built, tree_md5s
from tests.support.server import Faults
from tests.test_stage import expected_tree, stage_json, total_bytes


def unpack_like_kaggle(built: Built, where: Path, subsets: list[int]) -> Path:
    """The archives unpacked as the published Kaggle copy has them: <dataset>/subsetN/subsetN/*.mhd, CSV on top."""
    for n in subsets:
        with zipfile.ZipFile(built.folder / f"subset{n}.zip") as zf:
            zf.extractall(where / f"subset{n}")
    shutil.copy(built.folder / "annotations.csv", where / "annotations.csv")
    return where


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def regular_bytes(folder: Path) -> int:
    """Bytes in regular files under ``folder`` (links not followed)."""
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def test_kaggle_is_told_from_colab_with_both_markers_present() -> None:
    both = {"KAGGLE_KERNEL_RUN_TYPE": "Interactive", "COLAB_RELEASE_TAG": "release-colab-20261101"}
    env = detect(both, colab_importable=True, dmi={"product_name": "Google Compute Engine"})
    assert env.kind == "kaggle" and env.profile == "kaggle" and "KAGGLE_KERNEL_RUN_TYPE" in env.reasons[0]
    assert detect({"COLAB_RELEASE_TAG": "x"}, colab_importable=True, dmi={}).kind == "colab"
    assert detect({"PROVISION_ENVIRONMENT": "kaggle"}, colab_importable=False, dmi={}).kind == "kaggle"


def test_the_kaggle_profile(tmp_path: Path, capsys) -> None:
    from provision.config import load_config

    config = load_config("kaggle", environ={})
    assert config.data.root.startswith("/kaggle/tmp/") and not config.data.root.startswith("/kaggle/working")
    assert [s.kind for s in config.data.sources] == ["unpacked", "zenodo"] and config.data.sources[0].location == "/kaggle/input"
    assert config.book.enabled and config.cuda.required
    assert main(["install", "--dry-run", "--json", "-c", "kaggle"], environ={"HOME": str(tmp_path)}) == 0
    assert "jupyter" not in {r["name"] for r in json.loads(capsys.readouterr().out)["requirements"]}


def test_staging_from_a_read_only_unpacked_copy_downloads_and_copies_nothing(built: Built, serve, write_profile, tmp_path: Path,
                                                                            read_only, capsys) -> None:
    data_sets = tmp_path / "kaggle" / "input"
    copy = read_only(unpack_like_kaggle(built, data_sets / "luna16", [0, 1, 2, 3]))
    before = tree_digest(copy)
    srv = serve()
    profile = write_profile({"dataset": str(built.manifest), "sources": [f"kaggle:{data_sets}", srv.url + "/mirror/"]})
    code, report = stage_json(profile, capsys)
    assert code == 0, report
    assert {f["outcome"] for f in report["files"]} == {"linked"}
    assert srv.stats.requests == [], "nothing was downloaded"
    target = tmp_path / "root" / "part2" / "luna"
    assert tree_md5s(target) == expected_tree(built), "the book's layout holds the data set, through the links"
    members = [p for p in target.rglob("*") if p.is_file() or p.is_symlink()]
    assert members and all(p.is_symlink() and str(p.resolve()).startswith(str(copy)) for p in members)
    assert regular_bytes(tmp_path / "root") < 64_000, "no data bytes written: links and the state file only"
    assert tree_digest(copy) == before, "nothing written into the copy"
    assert main(["status", "-c", str(profile), "--json"]) == 0
    assert {r["stage"] for r in json.loads(capsys.readouterr().out)["files"]} == {"linked"}
    assert main(["verify", "--full", "-c", str(profile)]) == 0
    capsys.readouterr()
    code, again = stage_json(profile, capsys)
    assert code == 0 and {f["outcome"] for f in again["files"]} == {"already staged"}


def test_both_kaggle_mount_layouts_are_found(built: Built, serve, write_profile, tmp_path: Path, read_only, capsys) -> None:
    """/kaggle/input/<slug>/ and, since mid-2026, /kaggle/input/datasets/<owner>/<slug>/, with the extra
    <folder>/subsetN/subsetN nesting published copies have: every subset is found and linked, the CSV too."""
    data_sets = tmp_path / "kaggle" / "input"
    unpack_like_kaggle(built, data_sets / "luna16-part" / "luna", [0, 1])
    new_layout = data_sets / "datasets" / "avc0706" / "luna16" / "LUNA16"
    unpack_like_kaggle(built, new_layout, [2, 3])
    (data_sets / "luna16-part" / "luna" / "annotations.csv").unlink()  # only the new layout's copy has the CSV
    read_only(data_sets)
    srv = serve()
    profile = write_profile({"dataset": str(built.manifest), "sources": [f"kaggle:{data_sets}", srv.url + "/mirror/"]})
    code, report = stage_json(profile, capsys)
    assert code == 0, report
    by_key = {f["key"]: f for f in report["files"]}
    assert {k: f["outcome"] for k, f in by_key.items()} == dict.fromkeys(by_key, "linked"), by_key
    assert by_key["subset3.zip"]["source"] == str(new_layout / "subset3" / "subset3")
    assert by_key["subset0.zip"]["source"] == str(data_sets / "luna16-part" / "luna" / "subset0" / "subset0")
    assert by_key["annotations.csv"]["source"] == str(new_layout / "annotations.csv")
    assert srv.stats.requests == [], "nothing was downloaded"
    assert tree_md5s(tmp_path / "root" / "part2" / "luna") == expected_tree(built)


def test_the_search_lists_folders_only_and_stays_shallow(tmp_path: Path) -> None:
    """The walk never enters a subset folder's files or anything deeper than the layouts need."""
    from provision.staging.copies import kaggle_copies

    deep = tmp_path / "input" / "datasets" / "owner" / "slug" / "a" / "b" / "c" / "d" / "subset5"
    deep.mkdir(parents=True)
    (deep / "x.mhd").write_text("too deep")
    found = tmp_path / "input" / "datasets" / "owner" / "slug" / "a" / "subset4" / "subset4"
    found.mkdir(parents=True)
    (found / "y.mhd").write_text("ObjectType = Image")
    (found.parent / "z.mhd").write_text("outer")
    (found / "subset4").mkdir()  # a third level is not a layout anyone publishes, but it must not crash the walk
    assert kaggle_copies(tmp_path / "input") == {4: str(found)}


def test_a_truncated_scan_in_the_copy_is_named_and_its_subset_comes_from_the_next_source(built: Built, serve, write_profile,
                                                                                         tmp_path: Path, capsys) -> None:
    copy = unpack_like_kaggle(built, tmp_path / "share" / "luna16", [0, 1])
    raw = sorted((copy / "subset1" / "subset1").glob("*.raw"))[0]
    with open(raw, "r+b") as fh:
        fh.truncate(raw.stat().st_size - 4096)
    srv = serve()
    profile = write_profile({"dataset": str(built.manifest), "sources": [f"unpacked:{copy}", srv.url + "/mirror/"], "subsets": "0-2"})
    code, report = stage_json(profile, capsys)
    assert code == 0, report
    by_key = {f["key"]: f for f in report["files"]}
    assert by_key["subset0.zip"]["outcome"] == "linked"
    assert by_key["subset1.zip"]["outcome"] == "staged" and by_key["subset1.zip"]["source"] == srv.url + "/mirror/subset1.zip"
    assert any(raw.name in r and "its header" in r for r in by_key["subset1.zip"]["retries"]), by_key["subset1.zip"]["retries"]
    assert by_key["subset2.zip"]["source"] == srv.url + "/mirror/subset2.zip", "not in the copy: downloaded"
    target = tmp_path / "root" / "part2" / "luna"
    assert tree_md5s(target) == {k: v for k, v in expected_tree(built).items() if k.split("/")[0] in ("subset0", "subset1", "subset2", "annotations.csv")}
    assert not any(p.is_symlink() for p in (target / "subset1").iterdir()), "the damaged subset is unpacked from the archive"


def test_the_plan_shows_the_copy_its_zero_disk_and_what_it_lacks(built: Built, write_profile, tmp_path: Path, capsys) -> None:
    copy = unpack_like_kaggle(built, tmp_path / "share", [0, 1])
    profile = write_profile({"dataset": str(built.manifest), "sources": [f"unpacked:{copy}", str(built.folder)]})
    assert main(["plan", "-c", str(profile), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    files = {f["key"]: f for f in plan["data"]["files"]}
    assert files["subset0.zip"]["locations"][0] == {"kind": "unpacked", "url": str(copy / "subset0" / "subset0")}
    assert files["subset3.zip"]["not_in_copies"] and files["subset3.zip"]["locations"][0]["kind"] == "local"
    assert plan["disk"][0]["archive_bytes"] == built.files["subset2.zip"]["size"] + built.files["subset3.zip"]["size"]
    assert main(["plan", "-c", str(profile)]) == 0
    text = capsys.readouterr().out
    assert "unpacked copy" in text and "~0 disk" in text and "not in the unpacked copy: from local" in text


def test_pinned_members_catch_a_scan_of_the_right_size_with_the_wrong_bytes(built: Built, serve, write_profile, tmp_path: Path,
                                                                            capsys) -> None:
    srv = serve()
    profile = write_profile({"dataset": str(built.manifest), "sources": [srv.url + "/mirror/"], "subsets": "0-1"})
    assert main(["pin", "-c", str(profile)]) == 0
    assert "wrote" in capsys.readouterr().out
    pins = yaml.safe_load(built.manifest.with_name(built.manifest.stem + ".members.yaml").read_text())["files"]
    with zipfile.ZipFile(built.folder / "subset0.zip") as zf:
        assert [(m[0], m[1], int(m[2], 16)) for m in pins["subset0.zip"]["members"]] == [(i.filename, i.file_size, i.CRC) for i in zf.infolist()]
    assert main(["pin", "-c", str(profile)]) == 0 and "already has these" in capsys.readouterr().out
    copy = unpack_like_kaggle(built, tmp_path / "share", [0, 1])
    raw = sorted((copy / "subset0" / "subset0").glob("*.raw"))[0]
    data = bytearray(raw.read_bytes())
    data[1000] ^= 0xFF  # same size, same header: only the CRC tells
    raw.write_bytes(bytes(data))
    profile = write_profile({"dataset": str(built.manifest), "sources": [f"unpacked:{copy}", srv.url + "/mirror/"], "subsets": "0-1"},
                            name="copy.yaml")
    code, report = stage_json(profile, capsys)
    assert code == 0
    by_key = {f["key"]: f for f in report["files"]}
    assert by_key["subset0.zip"]["outcome"] == "staged" and any("CRC-32" in r and raw.name in r for r in by_key["subset0.zip"]["retries"])
    assert by_key["subset1.zip"]["outcome"] == "linked"


def test_mirror_to_a_folder_twice_copies_nothing_the_second_time(built: Built, serve, write_profile, tmp_path: Path, capsys) -> None:
    srv = serve()
    drive = tmp_path / "drive" / "MyDrive" / "luna16"
    profile = write_profile({"dataset": str(built.manifest), "sources": [srv.url + "/mirror/"]})
    code = main(["mirror", "-c", str(profile), "--to", str(drive), "--json"])
    done = json.loads(capsys.readouterr().out)
    assert code == 0 and {i["action"] for i in done["items"]} == {"uploaded"}
    for key in built.files:
        assert (drive / key).read_bytes() == (built.folder / key).read_bytes()
    sent = srv.stats.bytes_sent
    code = main(["mirror", "-c", str(profile), "--to", str(drive), "--json"])
    again = json.loads(capsys.readouterr().out)
    assert code == 0 and {i["action"] for i in again["items"]} == {"present"} and again["bytes_to_upload"] == 0
    assert srv.stats.bytes_sent == sent, "nothing fetched or copied the second time"
    # the next session stages from the folder instead of the server: byte-identical
    from_drive = write_profile({"dataset": str(built.manifest), "sources": [str(drive), srv.url + "/mirror/"], "root": str(tmp_path / "next")},
                               name="next.yaml")
    code, report = stage_json(from_drive, capsys)
    assert code == 0 and all(f["source"].startswith(str(drive)) for f in report["files"])
    assert tree_md5s(tmp_path / "next" / "part2" / "luna") == expected_tree(built) and srv.stats.bytes_sent == sent


def test_mirror_to_a_folder_survives_a_kill(tmp_path: Path, serve, write_profile, capsys) -> None:
    from tests.support.dataset import build_luna_like

    data = build_luna_like(tmp_path / "big", subsets=2, scans=2, raw_bytes=2_000_000, extra_plain=False)
    srv = serve(Faults(rate_per_conn=1_500_000), folder=data.folder)
    drive = tmp_path / "drive" / "luna16"
    profile = write_profile({"dataset": str(data.manifest), "sources": [srv.url + "/mirror/"], "connections": 2})
    import signal
    import sys
    import time

    from tests.conftest import REPO

    proc = subprocess.Popen([sys.executable, "-m", "provision", "mirror", "-c", str(profile), "--to", str(drive)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while srv.stats.bytes_sent < total_bytes(data) * 0.6 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "killed before it ended"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert main(["mirror", "-c", str(profile), "--to", str(drive)]) == 0
    capsys.readouterr()
    for key in data.files:
        assert (drive / key).read_bytes() == (data.folder / key).read_bytes()
    assert not list(drive.glob(".*.provision-part")), "no half-copied file is left"
    assert srv.stats.bytes_sent <= 1.3 * total_bytes(data), "the second run continued, it did not start over"


def test_a_drive_folder_without_room_is_refused_with_what_drive_tiers_hold(built: Built, write_profile, tmp_path: Path, small_tmpfs,
                                                                            capsys) -> None:
    small = small_tmpfs(1024 * 1024)
    drive = small / "MyDrive" / "luna16"
    drive.mkdir(parents=True)
    profile = write_profile({"dataset": str(built.manifest), "sources": [str(built.folder)]})
    assert main(["mirror", "-c", str(profile), "--to", str(drive), "--dry-run"]) == 3
    err = capsys.readouterr().err
    assert "needs" in err and "short" in err and not list(drive.iterdir())


def test_kaggle_working_keeps_at_most_20_gb(tmp_path: Path) -> None:
    from provision.config import configs_dir, load_config
    from provision.environment import FsFacts
    from provision.manifest import load_manifest
    from provision.plan import Facts, make_plan

    env = detect({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, colab_importable=True, dmi={})
    config = load_config("kaggle", ["data.root=/kaggle/working/dlwpt-code/data-unversioned", "data.sources=[zenodo]"], environ={})
    fs = FsFacts(path=config.data.root, probe="/kaggle/working", device=1, free_bytes=70 * 10**9, total_bytes=90 * 10**9)
    plan = make_plan(config, load_manifest("luna16", configs_dir()), Facts(environment=env, installed={"torch": "2.10.0"}, nvidia_smi=None,
                                                                           data_fs=fs, statuses={}, environ={}))
    problem = next(p for p in plan.problems if p.step == "data")
    assert "/kaggle/working keeps at most 20 GB" in problem.message and "/kaggle/tmp" in problem.hint
