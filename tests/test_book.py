"""`provision book`: the book's code cloned from a real git bundle of it, its fixes applied, undone, refused."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from provision.cli import main
from tests.conftest import REPO

FIXES = yaml.safe_load((REPO / "configs" / "book" / "dlwpt-code.yaml").read_text())["fixes"]
FIXED_FILES = sorted({f["file"] for f in FIXES})


def git(checkout: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=checkout, capture_output=True, text=True, check=True).stdout


def committed(checkout: Path, file: str) -> bytes:
    return subprocess.run(["git", "show", f"HEAD:{file}"], cwd=checkout, capture_output=True, check=True).stdout


def book_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    code = main(["book", "--json", *args])
    return code, json.loads(capsys.readouterr().out)


def test_clones_around_staged_data_and_applies_every_fix(book_profile, tmp_path: Path, capsys, book_bundle) -> None:
    checkout = tmp_path / "dlwpt-code"
    staged = checkout / "data-unversioned" / "part2" / "luna" / "subset0" / "scan.mhd"
    staged.parent.mkdir(parents=True)
    staged.write_text("already staged")
    code, result = book_json(capsys, "-c", str(book_profile()))
    assert code == 0, result
    assert result["cloned"] and result["commit"] == book_bundle[1]
    assert git(checkout, "rev-parse", "HEAD").strip() == book_bundle[1]
    assert staged.read_text() == "already staged", "the staged data is kept"
    assert sorted(result["changed_files"]) == FIXED_FILES
    assert sorted(git(checkout, "diff", "--name-only").split()) == FIXED_FILES, "git diff shows exactly the fixed files"
    status = git(checkout, "status", "--porcelain", "--untracked-files=all").splitlines()
    assert sorted(status) == sorted(f" M {f}" for f in FIXED_FILES), "only the fixes show; the staged data is not untracked noise"
    for fix in FIXES:
        text = (checkout / fix["file"]).read_text()
        assert text.count(fix["after"]) >= fix["count"], fix["id"]
    diff = git(checkout, "diff", "p2ch14/training.py")
    assert "-        threshold = torch.linspace(1, 0)\n+        threshold = torch.linspace(1, 0, steps=100)" in diff


def test_fixes_are_idempotent_and_undo_restores_the_book_byte_for_byte(book_profile, tmp_path: Path, capsys) -> None:
    profile = book_profile()
    checkout = tmp_path / "dlwpt-code"
    assert book_json(capsys, "-c", str(profile))[0] == 0
    fixed = {f: (checkout / f).read_bytes() for f in FIXED_FILES}
    stamps = {f: os.stat(checkout / f).st_mtime_ns for f in FIXED_FILES}
    code, again = book_json(capsys, "-c", str(profile))
    assert code == 0 and again["changed_files"] == [] and not again["cloned"]
    assert {r["result"] for r in again["fixes"]} == {"already applied"}
    assert {f: (checkout / f).read_bytes() for f in FIXED_FILES} == fixed
    assert {f: os.stat(checkout / f).st_mtime_ns for f in FIXED_FILES} == stamps, "nothing is rewritten"
    code, undone = book_json(capsys, "-c", str(profile), "--undo")
    assert code == 0 and sorted(undone["changed_files"]) == FIXED_FILES
    for f in FIXED_FILES:
        assert (checkout / f).read_bytes() == committed(checkout, f)
    assert git(checkout, "status", "--porcelain") == ""
    assert book_json(capsys, "-c", str(profile), "--undo")[1]["changed_files"] == [], "undoing twice changes nothing"


def test_a_file_the_reader_changed_is_refused_and_left_alone(book_profile, tmp_path: Path, capsys) -> None:
    profile = book_profile()
    checkout = tmp_path / "dlwpt-code"
    assert main(["book", "-c", str(profile), "--undo"]) == 1, "no checkout yet: nothing to undo"
    capsys.readouterr()
    assert book_json(capsys, "-c", str(profile))[0] == 0
    assert main(["book", "-c", str(profile), "--undo"]) == 0
    capsys.readouterr()
    mine = checkout / "p2ch14" / "training.py"
    mine.write_text(mine.read_text() + "\n# my experiment\n")
    before = {f: (checkout / f).read_bytes() for f in FIXED_FILES}
    assert main(["book", "-c", str(profile)]) == 3
    err = capsys.readouterr().err
    assert "p2ch14/training.py" in err and "your own edits" in err and "checkout --" in err
    assert {f: (checkout / f).read_bytes() for f in FIXED_FILES} == before, "no file is touched, the others neither"
    code = main(["plan", "-c", str(profile), "--set", "book.enabled=true"])
    assert code == 3 and "edited" in capsys.readouterr().out


def test_a_fix_that_no_longer_matches_stops_before_writing(book_profile, tmp_path: Path, capsys) -> None:
    manifest = yaml.safe_load((REPO / "configs" / "book" / "dlwpt-code.yaml").read_text())
    np_int = next(f for f in manifest["fixes"] if f["id"] == "np-int")
    np_int["count"] = 2  # the book has three
    changed = tmp_path / "fixes.yaml"
    changed.write_text(yaml.safe_dump(manifest))
    profile = book_profile(book={"fixes": str(changed)})
    assert main(["book", "-c", str(profile), "--dry-run"]) == 0
    capsys.readouterr()
    assert main(["book", "-c", str(profile)]) == 1, "the clone happens, then the judgement refuses"
    err = capsys.readouterr().err
    assert "fix 'np-int' expects 2 occurrence(s)" in err and "p2ch14/nodule_analysis.py" in err and "has 3" in err
    checkout = tmp_path / "dlwpt-code"
    assert git(checkout, "status", "--porcelain") == "", "nothing is half-applied"
    assert main(["book", "-c", str(profile)]) == 3, "a second run refuses up front (the plan sees it)"
    assert "do not match" in capsys.readouterr().err


def test_the_plan_lists_the_fixes_and_the_clone(book_profile, capsys) -> None:
    profile = book_profile(book={"enabled": True})
    assert main(["plan", "-c", str(profile)]) == 0
    text = capsys.readouterr().out
    assert "clone" in text and "after clone" in text
    for fix in FIXES:
        assert fix["id"] in text
    assert main(["book", "-c", str(profile)]) == 0
    capsys.readouterr()
    assert main(["plan", "-c", str(profile), "--json"]) == 0
    book = json.loads(capsys.readouterr().out)["book"]
    assert {f["state"] for f in book["fixes"]} == {"applied"} and book["head"]
    assert main(["book", "-c", str(profile), "--dry-run"]) == 0
    assert "torch 1.11 removed linspace" in capsys.readouterr().out, "the dry run gives each fix's reason"


def test_a_folder_with_other_files_is_not_cloned_into(book_profile, tmp_path: Path, capsys) -> None:
    checkout = tmp_path / "dlwpt-code"
    checkout.mkdir()
    (checkout / "notes.txt").write_text("mine")
    assert main(["book", "-c", str(book_profile())]) == 3
    assert "notes.txt" in capsys.readouterr().err
    assert not (checkout / ".git").exists() and (checkout / "notes.txt").read_text() == "mine"


def test_data_elsewhere_is_linked_into_the_checkout(book_profile, tmp_path: Path, capsys) -> None:
    root = tmp_path / "big-disk" / "luna-root"
    (root / "part2").mkdir(parents=True)
    book = tmp_path / "code"
    profile = book_profile(book={"dir": str(book)}, data={"root": str(root)})
    assert main(["book", "-c", str(profile)]) == 0
    link = book / "data-unversioned"
    assert link.is_symlink() and link.resolve() == root.resolve()
    assert (book / "p2ch11" / "training.py").is_file()
    status = git(book, "status", "--porcelain", "--untracked-files=all").splitlines()
    assert not [line for line in status if "data-unversioned" in line], f"the link is excluded as the folder is: {status}"


def test_up_runs_the_book_step_where_the_profile_enables_it(book_profile, tmp_path: Path, capsys) -> None:
    off = book_profile(name="off.yaml")
    assert main(["up", "-c", str(off), "--only", "preflight", "--only", "book", "--json"]) == 0
    assert "book" not in json.loads(capsys.readouterr().out)["steps"]
    assert not (tmp_path / "dlwpt-code" / ".git").exists()
    on = book_profile(book={"enabled": True}, name="on.yaml")
    assert main(["up", "-c", str(on), "--only", "preflight", "--only", "book", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"]["book"]["cloned"] and (tmp_path / "dlwpt-code" / "p2ch14" / "training.py").is_file()
    for profile in ("colab", "vm", "local"):
        from provision.config import load_config

        assert load_config(profile, environ={"HOME": str(tmp_path)}).book.enabled


def test_the_fixes_file_is_validated(tmp_path: Path, book_profile, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "fixes": [
        {"id": "a", "file": "../outside.py", "before": "x", "after": "y", "why": "w"}]}))
    assert main(["plan", "-c", str(book_profile(book={"fixes": str(bad)}))]) == 2
    assert "must be a path inside the book's checkout" in capsys.readouterr().err
    bad.write_text(yaml.safe_dump({"name": "x", "fixes": [
        {"id": "a", "file": "f.py", "before": "x", "after": "y", "why": "w", "cout": 1}]}))
    assert main(["plan", "-c", str(book_profile(book={"fixes": str(bad)}))]) == 2
    assert "did you mean 'count'?" in capsys.readouterr().err
