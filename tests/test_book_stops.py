"""`provision cache` and the smoke run against what an unlucky reader meets (issue #31): TERM during a build or a smoke run,
damaged staged scans, a cache folder that cannot be written. Clear errors, nothing complete lost, no traceback, and a rerun that
continues. The book's real code from the bundle, scans staged by the tool, the children run in the book's interpreter."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, Scans
from tests.test_book_cache import cache_json
from tests.test_book_smoke import ready_book
from tests.test_terminate import INTERRUPTED, descendants, running

pytestmark = pytest.mark.slow


def no_traceback(text: str) -> None:
    assert "Traceback" not in text and "internal error" not in text, text


def test_term_during_a_build_ends_its_children_and_the_rerun_continues(book_profile, scans: Scans, book_python: str, tmp_path: Path,
                                                                       capsys) -> None:
    profile = ready_book(book_profile, scans, book_python, "0-1", tmp_path)
    built = tmp_path / "dlwpt-code" / "data-unversioned" / "cache" / "part2ch13_raw" / ".provision-built.json"
    proc = subprocess.Popen([sys.executable, "-m", "provision", "cache", "--chapters", "13", "--workers", "2", "-c", str(profile)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if built.is_file() and json.loads(built.read_text())["series"]:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the build ended before it could be stopped"
    children = descendants(proc.pid)
    assert any("cache_child" in cmd for cmd in children.values()), children
    proc.send_signal(signal.SIGTERM)  # to the process alone, as docker stop or a scheduler sends it
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, out + err
    assert INTERRUPTED in err
    no_traceback(err)
    time.sleep(0.5)
    assert not [pid for pid in children if running(pid)], "every child of the build ended with it"
    done_before = len(json.loads(built.read_text())["series"])
    assert 1 <= done_before < 6
    capsys.readouterr()
    code, result = cache_json(capsys, profile, "--chapters", "13", "--workers", "2")
    chapter = result["chapters"][0]
    assert code == 0 and chapter["complete_before"] == done_before and chapter["built"] == 6 - done_before, chapter


def test_damaged_scans_are_named_with_what_to_do_and_the_others_are_built(book_profile, scans: Scans, book_python: str,
                                                                          tmp_path: Path, capsys) -> None:
    profile = ready_book(book_profile, scans, book_python, "0", tmp_path)
    luna = tmp_path / "dlwpt-code" / "data-unversioned" / "part2" / "luna" / "subset0"
    first, second, third = sorted(s.uid for s in scans.subsets[0])
    (luna / f"{first}.mhd").write_bytes(os.urandom(300))  # garbage where the header was
    with open(luna / f"{second}.raw", "r+b") as fh:
        fh.truncate(1000)
    capsys.readouterr()
    code = main_cache(profile)
    out, err = capsys.readouterr()
    no_traceback(out + err)
    assert code == 1
    assert first in out and second in out and third not in out.split("FAILED")[-1], out
    assert "provision verify --full" in out, out
    code, result = cache_json(capsys, profile, "--chapters", "11")
    chapter = result["chapters"][0]
    assert chapter["complete_before"] == 1 and sorted(f["series"] for f in chapter["failed"]) == sorted([first, second]), chapter


def main_cache(profile: Path) -> int:
    from provision.cli import main

    return main(["cache", "--chapters", "11", "--workers", "2", "-c", str(profile)])


@pytest.mark.parametrize("how", ["a file in its place", "read-only"])
def test_a_cache_folder_that_cannot_be_written_is_a_clear_error(book_profile, scans: Scans, book_python: str, tmp_path: Path,
                                                                capsys, small_tmpfs, how: str) -> None:
    profile = ready_book(book_profile, scans, book_python, "0", tmp_path)
    cache = tmp_path / "dlwpt-code" / "data-unversioned" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    if how == "a file in its place":
        (cache / "part2ch11_raw").write_text("not a folder")
    else:
        disk = small_tmpfs(1 << 20)
        (cache / "part2ch11_raw").symlink_to(disk, target_is_directory=True)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    capsys.readouterr()
    code = main_cache(profile)
    out, err = capsys.readouterr()
    no_traceback(out + err)
    assert code in (1, 2, 3) and "error:" in err and "hint:" in err and "part2ch11_raw" in err, out + err
    assert not list(cache.glob(".provision-ch11-*.log")), "no worker's log left behind"
    if how == "read-only":
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)


def test_term_during_the_smoke_run_ends_it_and_its_workers(book_profile, scans: Scans, book_python: str, tmp_path: Path) -> None:
    """The smoke run's children have a session of their own (so a timeout ends their DataLoader workers): no terminal's
    Ctrl-C reaches them, and TERM reaches the tool alone. Both end with it."""
    profile = ready_book(book_profile, scans, book_python, "0", tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "provision", "book", "--smoke", "-c", str(profile)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not any("smoke_child" in c for c in descendants(proc.pid).values()):
        time.sleep(0.05)
    time.sleep(1.0)  # the child under way, its workers starting
    children = descendants(proc.pid)
    assert any("smoke_child" in cmd for cmd in children.values()), children
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, out + err
    assert INTERRUPTED in err
    no_traceback(err)
    time.sleep(0.5)
    assert not [pid for pid in children if running(pid)], "the smoke run and its workers ended with the tool"
