"""One setting picks the book's edition (book.edition, --edition), and a checkout on disk is recognised as the one it is:
the plan, the fixes and the requirements follow it; the first edition stays the default."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from provision.book import editions
from provision.cli import main
from provision.config import load_config


def plan_json(capsys: pytest.CaptureFixture[str], *args: str, home: Path) -> dict:
    main(["plan", "--json", "-c", "vm", *args], environ={"HOME": str(home)})
    return json.loads(capsys.readouterr().out)


def requirement_names(plan: dict) -> set[str]:
    return {r["requirement"] for r in plan["install"]["requirements"]}


def test_the_first_edition_stays_the_default_and_the_plan_says_how_to_pick_the_second(tmp_path: Path, capsys) -> None:
    plan = plan_json(capsys, home=tmp_path)
    assert plan["book"]["repo"] == "https://github.com/deep-learning-with-pytorch/dlwpt-code"
    assert plan["book"]["ref"] == "d6c0210143daa133bbdeddaffc8993b1e17b5174"
    assert plan["book"]["manifest"].endswith("configs/book/dlwpt-code.yaml")
    assert "diskcache==4.1.0" in requirement_names(plan)
    assert plan["book"]["edition"].startswith("the first edition, 2020 (dlwpt-code), from the default")
    assert plan["book"]["other_edition"].startswith("--edition 2 ")
    main(["plan", "-c", "vm"], environ={"HOME": str(tmp_path)})
    assert "  edition    the first edition, 2020 (dlwpt-code), from the default; --edition 2" in capsys.readouterr().out


@pytest.mark.parametrize("how", [["--edition", "2"], ["--edition", "dlwpt-code-2e"], ["--set", "book.edition=2e"]])
def test_edition_2_sets_the_repository_commit_fixes_and_requirements(how: list[str], tmp_path: Path, capsys) -> None:
    plan = plan_json(capsys, *how, home=tmp_path)
    assert plan["book"]["repo"] == "https://github.com/deep-learning-with-pytorch/dlwpt-code-2e" and plan["book"]["ref"] == "d220a25"
    assert plan["book"]["manifest"].endswith("configs/book/dlwpt-code-2e.yaml")
    assert [f["id"] for f in plan["book"]["fixes"]][0] == "ct-path-ch12"
    names = requirement_names(plan)
    assert "diskcache==5.6.3" in names and "diskcache==4.1.0" not in names, "the second edition's requirements, not the first's"
    assert plan["book"]["edition"].startswith("the second edition, 2026 (dlwpt-code-2e), from book.edition")
    assert plan["book"]["other_edition"].startswith("--edition 1 ")


def test_chapter_15_extras_only_when_asked_for(tmp_path: Path) -> None:
    plain = load_config("vm", ["book.edition=2"], environ={"HOME": str(tmp_path)})
    extras = load_config("vm", ["book.edition=2", "book.extras=true"], environ={"HOME": str(tmp_path)})
    assert [Path(f).name for f in plain.requirements.files] == ["dlwpt-2e.txt", "notebook.txt"]
    assert [Path(f).name for f in extras.requirements.files] == ["dlwpt-2e.txt", "dlwpt-2e-ch15.txt", "notebook.txt"]
    first = load_config("vm", ["book.extras=true"], environ={"HOME": str(tmp_path)})
    assert [Path(f).name for f in first.requirements.files] == ["dlwpt.txt", "notebook.txt"], "the first edition has no extras"


def test_a_setting_the_profile_gives_is_kept(tmp_path: Path) -> None:
    config = load_config("vm", ["book.edition=2", "book.ref=main", f"book.fixes={tmp_path / 'mine.yaml'}"], environ={"HOME": str(tmp_path)})
    assert config.book.ref == "main" and config.book.fixes == str(tmp_path / "mine.yaml")
    assert config.book.repo.endswith("/dlwpt-code-2e"), "what it leaves unset still comes from the edition"


def test_an_unknown_edition_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert main(["plan", "-c", "vm", "--edition", "3"], environ={"HOME": str(tmp_path)}) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "3 is not an edition of the book: 1 (dlwpt-code), 2 (dlwpt-code-2e) or auto" in err and "hint: " in err


def test_a_checkout_on_disk_is_recognised_by_its_files_and_followed(book2_bundle, tmp_path: Path, capsys) -> None:
    """The second edition cloned by the reader into the default folder: `auto` prepares that edition, and asking for the
    first one explicitly is refused before anything is written, with what to do."""
    checkout = tmp_path / "dlwpt-code"
    subprocess.run(["git", "clone", "-q", book2_bundle[0], str(checkout)], check=True)
    assert editions.recognise(checkout) == 2
    plan = plan_json(capsys, home=tmp_path)
    assert plan["book"]["edition"].startswith("the second edition, 2026 (dlwpt-code-2e), from the checkout on disk")
    assert {f["state"] for f in plan["book"]["fixes"]} == {"to apply"}, "the second edition's fixes, judged against it"
    assert "diskcache==5.6.3" in requirement_names(plan)
    before = subprocess.run(["git", "status", "--porcelain"], cwd=checkout, capture_output=True, text=True, check=True).stdout
    assert main(["book", "-c", "vm", "--edition", "1"], environ={"HOME": str(tmp_path)}) == 3
    err = capsys.readouterr().err
    assert f"{checkout} holds the second edition, 2026 (dlwpt-code-2e), and the profile asks for the first edition" in err
    assert "hint: keep working with the checkout: --edition 2" in err
    assert subprocess.run(["git", "status", "--porcelain"], cwd=checkout, capture_output=True, text=True, check=True).stdout == before


def test_a_first_edition_checkout_is_recognised_too(book_bundle, tmp_path: Path) -> None:
    checkout = tmp_path / "dlwpt-code"
    subprocess.run(["git", "clone", "-q", book_bundle[0], str(checkout)], check=True)
    assert editions.recognise(checkout) == 1
    assert editions.recognise(tmp_path / "elsewhere") is None
    assert editions.recognise(tmp_path, "d6c0210143daa133bbdeddaffc8993b1e17b5174") == 1, "the pinned commit names it"
    config = load_config("vm", [], environ={"HOME": str(tmp_path)})
    assert config.book.edition == 1 and config.book.edition_from == "the checkout on disk"
