"""Hostile state, lock and path input (issue #31): never "internal error", never a traceback, and never a read of a
file outside the data root. A damaged state file is set aside (renamed, said so) and the staging converges again;
a lock of another shape is either taken over (it names no live process of this host) or named in the error."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from provision.cli import main
from tests.support.dataset import Built, build_luna_like, tree_md5s
from tests.test_stage import expected_tree


@pytest.fixture
def small(tmp_path: Path) -> Built:
    return build_luna_like(tmp_path / "src", subsets=2, scans=2, raw_bytes=60_000)


@pytest.fixture
def staged(small: Built, write_profile: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> Path:
    """A profile whose data set (two archives from a local folder, and a plain file) is staged."""
    profile = write_profile({"dataset": str(small.manifest), "sources": [str(small.folder)], "mode": "archive"})
    assert main(["stage", "-c", str(profile)]) == 0
    capsys.readouterr()
    return profile


@pytest.fixture
def capsys(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> Any:
    """What a command printed and logged (the log goes to stderr on the command line), read once each."""

    class Both:
        def readouterr(self) -> tuple[str, str]:
            captured = capsys.readouterr()
            logged = caplog.text
            caplog.clear()
            return captured.out, captured.err + logged

    return Both()


def run(capsys: Any, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    err = out + err
    assert "internal error" not in err and "Traceback" not in err, err
    return code, err


def state_path(tmp_path: Path) -> Path:
    return tmp_path / "root" / ".provision" / "state.json"


def target(tmp_path: Path) -> Path:
    return tmp_path / "root" / "part2" / "luna"


def one_record(tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
    def write() -> None:
        data = json.loads(state_path(tmp_path).read_text())
        change(data["files"]["subset0.zip"])
        state_path(tmp_path).write_text(json.dumps(data))
    return write


def whole(text: str | bytes) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.unlink()
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return write


DEEP = "[" * 100_000 + "]" * 100_000

STATE_SHAPES: dict[str, Callable[[Path], None]] = {
    "files is a list": whole('{"version": 1, "files": [1, 2]}'),
    "files is missing": whole('{"version": 1}'),
    "nested 100,000 deep": whole('{"version": 1, "files": ' + DEEP + "}"),
    "a list": whole("[]"),
    "a number": whole("1e999"),
    "not UTF-8": whole(b'{"version": 1, "files": {"\xff\xfe": 1}}'),
    "another version": whole('{"version": {"a": 1}, "files": {}}'),
    "a folder": lambda p: (p.unlink(), p.mkdir(), (p / "x").write_text("{}")),
    "a link out": lambda p: (p.unlink(), (p.parent.parent.parent / "elsewhere.json").write_text('{"version": 1, "files": {}}'),
                            p.symlink_to(p.parent.parent.parent / "elsewhere.json")),
}

RECORD_SHAPES: dict[str, Callable[[dict[str, Any]], None]] = {
    "a record is a string": lambda r: r.clear(),  # replaced below
    "sizes are strings": lambda r: r.update(size=str(r["size"]), members={n: [str(v[0]), str(v[1])] for n, v in r["members"].items()}),
    "a size that fits no int": lambda r: r.update(members={n: [10**40, v[1]] for n, v in r["members"].items()}),
    "a negative size": lambda r: r.update(size=-5),
    "members is a list": lambda r: r.update(members=list(r["members"])),
    "a member is a string": lambda r: r.update(members={n: "big" for n in r["members"]}),
    "flags are strings": lambda r: r.update(extracted="no", verified="yes"),
    "the stamp is text": lambda r: r.update(stamp="yesterday"),
    "damaged is an object": lambda r: r.update(damaged={"a": 1}),
    "a member outside by ..": lambda r: r["members"].update({"../../outside.raw": [5, 0]}),
    "a member by an absolute path": lambda r: r["members"].update({"/etc/hostname": [5, 0]}),
}


@pytest.mark.parametrize("shape", sorted(STATE_SHAPES))
def test_a_damaged_state_file_is_set_aside_and_staging_converges(staged: Path, small: Built, tmp_path: Path, capsys, shape: str) -> None:
    path = state_path(tmp_path)
    STATE_SHAPES[shape](path)
    for command in (["status"], ["plan"]):
        code, _ = run(capsys, *command, "-c", str(staged))
        assert code in (0, 3)
    code, err = run(capsys, "stage", "-c", str(staged))
    assert code == 0, err
    assert "was damaged" in err and "set aside as state.damaged-" in err, err
    assert [p.name for p in path.parent.glob("state.damaged-*.json")], "the damaged file is kept, renamed aside"
    assert json.loads(path.read_text())["files"].keys() >= {"subset0.zip", "subset1.zip"}
    assert tree_md5s(target(tmp_path)) == expected_tree(small)
    code, err = run(capsys, "verify", "--full", "-c", str(staged))
    assert code == 0, err
    if shape == "a link out":
        assert json.loads((tmp_path / "elsewhere.json").read_text()) == {"version": 1, "files": {}}, "what the link led to is untouched"


@pytest.mark.parametrize("shape", sorted(RECORD_SHAPES))
def test_a_damaged_record_is_set_aside_and_its_file_staged_again(staged: Path, small: Built, tmp_path: Path, capsys, monkeypatch,
                                                                 shape: str) -> None:
    import provision.staging.archive.extract as extract

    outside = tmp_path / "outside.raw"
    outside.write_bytes(b"12345")
    if shape == "a record is a string":
        data = json.loads(state_path(tmp_path).read_text())
        data["files"]["subset0.zip"] = "extracted"
        state_path(tmp_path).write_text(json.dumps(data))
    else:
        one_record(tmp_path, RECORD_SHAPES[shape])()
    read: list[str] = []
    real = extract.crc_of
    monkeypatch.setattr(extract, "crc_of", lambda path: (read.append(str(path)), real(path))[1])
    code, err = run(capsys, "verify", "--full", "-c", str(staged))
    assert code == 1 and "was damaged" in err and "subset0.zip" in err, err
    assert all(Path(p).resolve().is_relative_to(target(tmp_path).resolve()) for p in read), read
    code, err = run(capsys, "stage", "-c", str(staged))
    assert code == 0, err
    assert tree_md5s(target(tmp_path)) == expected_tree(small)
    assert outside.read_bytes() == b"12345"
    for _ in range(2):  # stage and verify agree, and stay agreed
        code, err = run(capsys, "verify", "--full", "-c", str(staged))
        assert code == 0, err
        code, err = run(capsys, "stage", "-c", str(staged), "--json")
        assert code == 0 and "repaired" not in err, err


def test_a_member_folder_that_leads_out_of_the_data_root_is_never_read(staged: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """subset0/ replaced by a link to a folder elsewhere holding the same files: verify reads none of them."""
    import shutil

    import provision.staging.archive.extract as extract

    elsewhere = tmp_path / "elsewhere"
    shutil.move(target(tmp_path) / "subset0", elsewhere)
    (target(tmp_path) / "subset0").symlink_to(elsewhere, target_is_directory=True)
    read: list[str] = []
    real = extract.crc_of
    monkeypatch.setattr(extract, "crc_of", lambda path: (read.append(str(path)), real(path))[1])
    code, err = run(capsys, "verify", "--full", "-c", str(staged))
    assert code == 1, err
    assert read and not [p for p in read if "subset0" in p], read


LOCK_SHAPES: dict[str, str] = {
    "a pid that fits no int": '{"pid": 1' + "0" * 40 + ', "host": "%s"}',
    "a negative pid": '{"pid": -1, "host": "%s"}',
    "pid 0": '{"pid": 0, "host": "%s"}',
    "pid true": '{"pid": true, "host": "%s"}',
    "a pid as text": '{"pid": "1234", "host": "%s"}',
    "a fractional pid": '{"pid": 1.5, "host": "%s"}',
    "a list": '[1, "%s"]',
    "text": '"%s"',
    "nested 100,000 deep": '{"pid": ' + DEEP + ', "host": "%s"}',
    "the host is an object": '{"pid": 1' + "0" * 30 + ', "host": {"name": "%s"}}',
}


@pytest.mark.parametrize("shape", sorted(LOCK_SHAPES))
def test_a_lock_of_another_shape_is_taken_over_or_named(staged: Path, tmp_path: Path, capsys, shape: str) -> None:
    import socket

    lock = tmp_path / "root" / ".provision" / "lock"
    lock.write_text(LOCK_SHAPES[shape].replace("%s", socket.gethostname()))
    old = os.stat(lock).st_mtime - 3600
    os.utime(lock, (old, old))  # as a lock torn long ago would be
    for command in ("stage", "verify"):
        code, err = run(capsys, command, "-c", str(staged))
        assert code == 0 or (code == 1 and str(lock) in err and "hint:" in err), err


@pytest.mark.parametrize("kind", ["a folder", "a dangling link"])
def test_a_lock_that_is_no_file_is_named(staged: Path, tmp_path: Path, capsys, kind: str) -> None:
    lock = tmp_path / "root" / ".provision" / "lock"
    if kind == "a folder":
        lock.mkdir()
    else:
        lock.symlink_to(tmp_path / "nowhere")
    code, err = run(capsys, "stage", "-c", str(staged))
    assert code == 1 and str(lock) in err and "hint: remove" in err, err


@pytest.mark.parametrize("where", ["--root", "a config path", "data.dataset"])
def test_a_path_component_over_255_bytes_is_a_user_error(small: Built, write_profile: Callable[..., Path], tmp_path: Path, capsys,
                                                         where: str) -> None:
    long = "x" * 300
    profile = write_profile({"dataset": str(small.manifest) if where != "data.dataset" else str(tmp_path / long / "m.yaml"),
                             "sources": [str(small.folder)]})
    for command in ("plan", "stage", "status", "verify"):
        argv = [command, "-c", str(tmp_path / long / "p.yaml") if where == "a config path" else str(profile)]
        if where == "--root":
            argv += ["--root", str(tmp_path / long / "root")]
        code, err = run(capsys, *argv)
        assert code in (1, 2, 3) and "error:" in err and "hint:" in err and long in err, err


AUX_SHAPES: dict[str, list[str]] = {
    "timings.json": ["[]", '{"cache": []}', '{"cache": {"11": {"core_s_per_entry": "fast"}}}', '{"cache": {"11": {"core_s_per_entry": 1e999}}}',
                     '{"cache": {"11": {"core_s_per_entry": 0.01, "measured_on": 5}}}', '{"epoch": {"p2ch11 training": []}}',
                     '{"epoch": ' + DEEP + "}"],
    "cache record": ["[]", '{"series": []}', '{"series": {"a": 1e999}}', '{"series": {"a": "many"}}', '{"series": ' + DEEP + "}"],
}


@pytest.mark.parametrize("shape", range(7))
@pytest.mark.parametrize("kind", sorted(AUX_SHAPES))
def test_what_plan_and_status_read_beside_the_state_is_never_an_internal_error(staged: Path, tmp_path: Path, capsys, kind: str,
                                                                                shape: int) -> None:
    shapes = AUX_SHAPES[kind]
    if shape >= len(shapes):
        pytest.skip("fewer shapes of this kind")
    path = (tmp_path / "root" / ".provision" / "timings.json" if kind == "timings.json"
            else tmp_path / "root" / "cache" / "part2ch11_raw" / ".provision-built.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(shapes[shape])
    for command in ("plan", "status"):
        code, err = run(capsys, command, "-c", str(staged))
        assert code in (0, 3), err


@pytest.mark.parametrize("stamps", ['{"subset0.zip": ["x"]}', '{"subset0.zip": {"md5": 5, "stat": []}}', "[]", DEEP])
def test_a_mirror_folders_stamps_of_another_shape_vouch_for_nothing(staged: Path, small: Built, tmp_path: Path, capsys,
                                                                   stamps: str) -> None:
    dest = tmp_path / "drive"
    dest.mkdir()
    (dest / ".provision-mirror.json").write_text(stamps)
    code, err = run(capsys, "mirror", "--to", str(dest), "-c", str(staged))
    assert code == 0, err
    assert all((dest / key).read_bytes() == (small.folder / key).read_bytes() for key in small.files)
