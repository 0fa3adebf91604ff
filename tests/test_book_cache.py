"""`provision cache`: the book's per-chapter caches, built through the book's own memoized functions on every
core, compressed by the book's fixes, resumable, and read by the book's unchanged training with no miss.
Synthetic scans (real series UIDs) staged by the tool, the book cloned and fixed by the tool, on the CPU build of torch."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provision.cli import main
from tests.conftest import REPO, Scans
from tests.test_book_smoke import ready_book

pytestmark = pytest.mark.slow


def epoch_counting_misses(chapter: str) -> str:
    """A child's code: one epoch of the book's ``chapter`` training (p2ch11, p2ch13), printing how many crops were not
    in the cache (computed from their scan)."""
    return f"""
import json, runpy, sys
sys.path.insert(0, "")
import {chapter}.dsets as dsets
real, misses = dsets.getCt, [0]
def counting(uid):
    misses[0] += 1
    return real(uid)
dsets.getCt = counting  # a crop that is not in the cache is computed from its scan: count those
sys.argv = ["{chapter}.training", "--epochs", "1", "--num-workers", "0", "--batch-size", "8"]
runpy.run_module("{chapter}.training", run_name="__main__", alter_sys=True)
print(json.dumps({{"misses": misses[0]}}))
"""


def cache_json(capsys: pytest.CaptureFixture[str], profile: Path, *args: str) -> tuple[int, dict]:
    code = main(["cache", "--json", "-c", str(profile), *args])
    return code, json.loads(capsys.readouterr().out)


def candidates_of(checkout: Path, series: set[str]) -> int:
    with open(checkout / "data" / "part2" / "luna" / "candidates.csv", newline="") as fh:
        return sum(1 for row in list(csv.reader(fh))[1:] if row[0] in series)


def test_the_cache_holds_every_entry_the_books_training_reads_compressed(book_profile, scans: Scans, book_python: str, tmp_path: Path,
                                                                         capsys) -> None:
    profile = ready_book(book_profile, scans, book_python, "0-1", tmp_path)
    checkout = tmp_path / "dlwpt-code"
    staged = {s.uid for group in scans.subsets for s in group}
    capsys.readouterr()
    code, result = cache_json(capsys, profile, "--chapters", "11", "--workers", "2")
    assert code == 0, result
    chapter = result["chapters"][0]
    assert (chapter["series"], chapter["built"], chapter["entries"]) == (6, 6, candidates_of(checkout, staged)), chapter
    raw = chapter["entries"] * 295_114
    assert chapter["bytes"] <= 0.55 * raw, f"the cache fixes compress the crops: {chapter['bytes']} bytes for {raw} raw"

    assert main(["plan", "-c", str(profile)]) in (0, 3)
    plan_text = capsys.readouterr().out
    assert "chapter 11:" in plan_text and "cache build ~" in plan_text.split("chapter 11:")[1].split("chapter 12:")[0], plan_text
    code, again = cache_json(capsys, profile, "--chapters", "11")
    assert code == 0 and again["chapters"][0]["built"] == 0 and again["chapters"][0]["complete_before"] == 6, "complete: a no-op"

    epoch = subprocess.run([book_python, "-c", epoch_counting_misses("p2ch11")], cwd=checkout, capture_output=True, text=True, timeout=900,
                           env={**os.environ, "MPLBACKEND": "Agg"})
    assert epoch.returncode == 0, epoch.stderr[-3000:]
    assert json.loads(epoch.stdout.strip().splitlines()[-1]) == {"misses": 0}, "one epoch of chapter 11 computes no crop itself"

    assert main(["status", "-c", str(profile), "--json"]) == 0
    caches = {c["name"]: c for c in json.loads(capsys.readouterr().out)["caches"]}
    assert caches["part2ch11_raw"]["bytes"] > 0
    assert caches["part2ch11_raw"]["entries_built"] == caches["part2ch11_raw"]["entries_needed"] == chapter["entries"], caches
    assert main(["status", "-c", str(profile)]) == 0
    assert f"{chapter['entries']:,} of {chapter['entries']:,} entries built (complete)" in capsys.readouterr().out
    code, dropped = cache_json(capsys, profile, "--drop", "11")
    assert code == 0 and dropped["dropped"][0]["bytes"] > 0
    assert not (checkout / "data-unversioned" / "cache" / "part2ch11_raw").exists()


def test_a_killed_build_continues_and_an_unreadable_scan_is_named(book_profile, scans: Scans, book_python: str, tmp_path: Path,
                                                                 capsys) -> None:
    profile = ready_book(book_profile, scans, book_python, "0-1", tmp_path)
    checkout = tmp_path / "dlwpt-code"
    built = checkout / "data-unversioned" / "cache" / "part2ch13_raw" / ".provision-built.json"
    proc = subprocess.Popen([sys.executable, "-m", "provision", "cache", "--chapters", "13", "--workers", "1", "-c", str(profile)],
                            cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if built.is_file() and json.loads(built.read_text())["series"]:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the build ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the build and its children, as kill -9 of a session would
    proc.wait()
    done = json.loads(built.read_text())["series"]
    done_before = len(done)
    assert 1 <= done_before < 6

    victim = next(s.uid for s in sorted(scans.subsets[1], key=lambda s: s.uid, reverse=True) if s.uid not in done)
    raw = next((checkout / "data-unversioned" / "part2" / "luna").rglob(f"{victim}.raw"))
    with open(raw, "r+b") as fh:
        fh.truncate(1000)  # a scan that cannot be read
    capsys.readouterr()
    code, result = cache_json(capsys, profile, "--chapters", "13", "--workers", "2")
    chapter = result["chapters"][0]
    assert code == 1
    assert chapter["complete_before"] == done_before and chapter["built"] == 6 - done_before - 1, chapter
    assert [(f["subset"], f["series"]) for f in chapter["failed"]] == [("subset1", victim)], chapter["failed"]


def test_up_builds_a_subsets_cache_while_the_next_subset_downloads(book_profile, scans: Scans, book_python: str, tmp_path: Path,
                                                                   capsys) -> None:
    """book.cache: [11] in `provision up`: subset 0's cache is complete while subset 1 is still arriving (one slow connection)."""
    import threading

    from tests.support.book_data import candidates_csv
    from tests.support.server import Faults, FileServer

    with FileServer(scans.folder, Faults(rate_per_conn=1_500_000)) as srv:
        profile = book_profile(data={"dataset": str(scans.manifest), "sources": [srv.url + "/mirror/"], "subsets": "0-1",
                                     "connections": 1, "files_in_flight": 1},
                               book={"cache": [11]}, requirements={"files": [], "venv": str(Path(book_python).parent.parent)})
        assert main(["book", "-c", str(profile)]) == 0
        checkout = tmp_path / "dlwpt-code"
        candidates_csv(checkout / "data" / "part2" / "luna" / "candidates.csv", [s for group in scans.subsets for s in group], scans.absent)
        built = checkout / "data-unversioned" / "cache" / "part2ch11_raw" / ".provision-built.json"
        state = checkout / "data-unversioned" / ".provision" / "state.json"
        seen: dict[str, object] = {}

        def watch() -> None:  # the moment the first series' cache is complete: where does subset 1 stand?
            while "first" not in seen and "done" not in seen:
                if built.is_file() and json.loads(built.read_text())["series"]:
                    files = json.loads(state.read_text())["files"] if state.is_file() else {}
                    seen["first"] = files.get("subset1.zip", {}).get("extracted", False)
                time.sleep(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()
        capsys.readouterr()
        code = main(["up", "--only", "data", "--only", "cache", "-c", str(profile), "--json"])
        seen["done"] = True
        watcher.join()
        summary = json.loads(capsys.readouterr().out)
    assert code == 0, summary
    assert seen.get("first") is False, "subset 0's cache was built while subset 1 was still being staged"
    chapter = summary["steps"]["cache"]["chapters"][0]
    assert chapter["series"] == 6 and chapter["built"] == 6 and chapter["ok"], chapter
