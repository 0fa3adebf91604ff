"""The second edition's code (dlwpt-code-2e) from a real git bundle of it: its fixes applied and undone, the cache
compressed by them and read back by the book's own functions, and every LUNA entry point run by `provision book --smoke`
on synthetic scans staged by the tool, in an interpreter `provision install` filled from dlwpt-2e.txt."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from provision.cli import main
from tests.conftest import REPO, Scans
from tests.support.book_data import candidates_csv
from tests.test_book_cache import epoch_counting_misses

MANIFEST = yaml.safe_load((REPO / "configs" / "book" / "dlwpt-code-2e.yaml").read_text())
FIXED_FILES = sorted({f["file"] for f in MANIFEST["fixes"]})
SMOKE = [e["name"] for e in MANIFEST["smoke"]]
# one chapter-13 crop as the book stores it: a pickled (float32 32x48x48 array, IrcTuple), 295,112-295,113 bytes measured
CROP_BYTES = 32 * 48 * 48 * 4


def git(checkout: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=checkout, capture_output=True, text=True, check=True).stdout


def test_the_fixes_apply_and_undo_byte_for_byte(book2_profile, tmp_path: Path, capsys) -> None:
    profile = book2_profile()
    checkout = tmp_path / "dlwpt-code-2e"
    assert main(["book", "--json", "-c", str(profile)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert sorted(result["changed_files"]) == FIXED_FILES
    assert sorted(git(checkout, "diff", "--name-only").split()) == FIXED_FILES
    assert "f'{mhd_data_folder}/subset*/{series_uid}.mhd'" in (checkout / "p2ch12" / "dsets.py").read_text()
    assert main(["book", "-c", str(profile)]) == 0 and "nothing to do" in capsys.readouterr().out, "a second run changes nothing"
    assert main(["book", "--undo", "-c", str(profile)]) == 0
    assert git(checkout, "status", "--porcelain") == "", "the book's files as committed"


CACHE_PROBE = """
import json, os, sys
sys.path.insert(0, "")
import numpy as np
from p2ch13 import dsets
c = dsets.getCandidateInfoList()[0]
fresh, _ = dsets.Ct(c.series_uid).getRawCandidate(c.center_xyz, (32, 48, 48))
dsets.getCtRawCandidate(c.series_uid, c.center_xyz, (32, 48, 48))
calls = []
real = dsets.getCt
dsets.getCt = lambda uid: calls.append(uid) or real(uid)
again, irc = dsets.getCtRawCandidate(c.series_uid, c.center_xyz, (32, 48, 48))
folder = "data-unversioned/cache/part2ch13_raw"
sizes = [os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs if f.endswith(".val")]
print(json.dumps({"sizes": sizes, "same": bool(np.array_equal(fresh, again)), "misses": len(calls), "irc": list(irc)}))
"""


def cache_probe(python: str, checkout: Path) -> dict:
    proc = subprocess.run([python, "-c", CACHE_PROBE], cwd=checkout, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_cache_is_stored_compressed_and_read_back(book2_profile, scans: Scans, book2_python: str, tmp_path: Path, capsys) -> None:
    import shutil

    profile = ready_book(book2_profile, scans, book2_python, "0", tmp_path)
    checkout = tmp_path / "dlwpt-code-2e"
    assert main(["book", "--undo", "-c", str(profile)]) == 0
    raw = cache_probe(book2_python, checkout)
    assert raw["same"] and raw["misses"] == 0
    assert len(raw["sizes"]) == 1 and CROP_BYTES < raw["sizes"][0] < CROP_BYTES + 400, "unfixed, the book stores its crops raw"
    assert main(["book", "-c", str(profile)]) == 0
    old = cache_probe(book2_python, checkout)
    assert old["same"] and old["misses"] == 0, "with the fixes, an entry written before them is still read as the book wrote it"
    shutil.rmtree(checkout / "data-unversioned" / "cache")
    fixed = cache_probe(book2_python, checkout)
    assert fixed["same"] and fixed["misses"] == 0, "the second call is a cache hit, and returns the crop the scan gives"
    assert len(fixed["sizes"]) == 1 and fixed["sizes"][0] < CROP_BYTES / 2, fixed


# ---------------------------------------------------------------- the smoke run


def ready_book(book2_profile, scans: Scans, python: str, subsets: str, tmp_path: Path, **book: object) -> Path:
    """Stage ``subsets`` with the tool, get the second edition with the tool, write the candidates CSV the bundle lacks."""
    profile = book2_profile(book=book, data={"dataset": str(scans.manifest), "sources": [str(scans.folder)], "subsets": subsets},
                            requirements={"files": [], "venv": str(Path(python).parent.parent)})
    assert main(["stage", "-c", str(profile)]) == 0
    assert main(["book", "-c", str(profile)]) == 0
    candidates_csv(tmp_path / "dlwpt-code-2e" / "data" / "part2" / "luna" / "candidates.csv", [s for group in scans.subsets for s in group],
                   scans.absent)
    return profile


@pytest.mark.slow
def test_every_luna_entry_point_of_the_second_edition_runs(book2_profile, scans: Scans, book2_python: str, tmp_path: Path,
                                                           capsys) -> None:
    profile = ready_book(book2_profile, scans, book2_python, "0-1", tmp_path)
    capsys.readouterr()
    code = main(["book", "--smoke", "--json", "-c", str(profile)])
    smoke = json.loads(capsys.readouterr().out)["smoke"]
    assert code == 0, json.dumps(smoke["rows"], indent=1)
    assert [r["name"] for r in smoke["rows"]] == SMOKE and {r["outcome"] for r in smoke["rows"]} == {"ok"}
    assert smoke["device"] == "cpu" and smoke["python"] == book2_python
    view = Path(smoke["view"])
    logs = {p.stem: p.read_text() for p in (view / "logs").glob("*.log")}
    assert "E1 val_pos" in logs["p2ch13_training"], "chapter 13 trained and validated"
    assert "ratio" in logs["p2ch14_training_balanced"] and "1:1 ratio" in logs["p2ch14_training_balanced"], "the balanced dataset"
    assert "code cells ran" in logs["p2ch14_F1_notebook"]
    assert not (tmp_path / "dlwpt-code-2e" / "data-unversioned" / "cache").exists(), "the reader's cache is not touched"


@pytest.mark.slow
def test_unfixed_chapter_12_fails_where_the_fix_says(book2_profile, scans: Scans, book2_python: str, tmp_path: Path, capsys) -> None:
    from provision.book.fixes import load_book_manifest
    from provision.book.smoke import run_smoke
    from provision.config import configs_dir, load_config

    profile = ready_book(book2_profile, scans, book2_python, "0", tmp_path)
    assert main(["book", "--undo", "-c", str(profile)]) == 0
    config = load_config(profile)
    entries = [e for e in load_book_manifest(config.book.fixes, configs_dir()).smoke if e.name in ("p2ch12 dataset", "p2ch13 prepcache")]
    result = run_smoke(tmp_path / "dlwpt-code-2e", Path(config.data.root) / "part2" / "luna", entries, config.book.smoke, book2_python,
                       tmp_path / "view")
    rows = {r.name: r for r in result.rows}
    assert rows["p2ch12 dataset"].outcome == "failed" and rows["p2ch12 dataset"].last_line == "IndexError: list index out of range"
    assert rows["p2ch13 prepcache"].outcome == "ok", "chapter 13 looks in subset*/ already"


# ---------------------------------------------------------------- provision cache



@pytest.mark.slow
def test_provision_cache_builds_the_second_editions_chapters(book2_profile, scans: Scans, book2_python: str, tmp_path: Path,
                                                             capsys) -> None:
    import csv
    import os

    profile = ready_book(book2_profile, scans, book2_python, "0", tmp_path)
    checkout = tmp_path / "dlwpt-code-2e"
    staged = {s.uid for s in scans.subsets[0]}
    with open(checkout / "data" / "part2" / "luna" / "candidates.csv", newline="") as fh:
        candidates = sum(1 for row in list(csv.reader(fh))[1:] if row[0] in staged)
    capsys.readouterr()
    assert main(["cache", "--json", "-c", str(profile), "--workers", "2"]) == 0
    chapters = json.loads(capsys.readouterr().out)["chapters"]
    assert [c["chapter"] for c in chapters] == [13], "without --chapters: the edition's first chapter with a cache"
    assert (chapters[0]["series"], chapters[0]["built"], chapters[0]["entries"]) == (3, 3, candidates), chapters[0]
    values = [p.stat().st_size for p in (checkout / "data-unversioned" / "cache" / "part2ch13_raw").rglob("*.val")]
    assert chapters[0]["bytes"] > sum(values) > 0 and sum(values) <= 0.5 * candidates * CROP_BYTES, "the cache fixes compress the crops"
    assert main(["cache", "--json", "-c", str(profile), "--chapters", "14"]) == 0
    assert json.loads(capsys.readouterr().out)["chapters"][0]["scope"] == "part2ch14_raw"
    epoch = subprocess.run([book2_python, "-c", epoch_counting_misses("p2ch13")], cwd=checkout, capture_output=True, text=True, timeout=900,
                           env={**os.environ, "MPLBACKEND": "Agg"})
    assert epoch.returncode == 0, epoch.stderr[-3000:]
    assert json.loads(epoch.stdout.strip().splitlines()[-1]) == {"misses": 0}, "one epoch of chapter 13 computes no crop itself"
    assert main(["cache", "-c", str(profile), "--chapters", "11"]) == 2
    assert "chapter 11 has no cache to build (chapters with one: 13, 14)" in capsys.readouterr().err
