"""The book's Part 2, run for real: synthetic scans (real series UIDs, nodules where the book's CSVs put them)
staged by the tool, the book cloned and fixed by the tool, requirements installed by the tool, then
`provision book --smoke` on the CPU build of torch."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from provision.cli import main
from tests.conftest import REPO, Scans
from tests.support.book_data import candidates_csv

pytestmark = pytest.mark.slow
SMOKE = [e["name"] for e in yaml.safe_load((REPO / "configs" / "book" / "dlwpt-code.yaml").read_text())["smoke"]]


def ready_book(book_profile, scans: Scans, python: str, subsets: str, tmp_path: Path, **book: object) -> Path:
    """Stage ``subsets`` with the tool, get the book with the tool, write the candidates CSV the bundle lacks."""
    profile = book_profile(book=book, data={"dataset": str(scans.manifest), "sources": [str(scans.folder)], "subsets": subsets},
                           requirements={"files": [], "venv": str(Path(python).parent.parent)})
    assert main(["stage", "-c", str(profile)]) == 0
    assert main(["book", "-c", str(profile)]) == 0
    checkout = Path(yaml.safe_load(profile.read_text())["book"].get("dir") or tmp_path / "dlwpt-code")
    candidates_csv(checkout / "data" / "part2" / "luna" / "candidates.csv", [s for group in scans.subsets for s in group], scans.absent)
    return profile


def smoke_json(capsys: pytest.CaptureFixture[str], profile: Path) -> tuple[int, dict]:
    code = main(["book", "--smoke", "--json", "-c", str(profile)])
    return code, json.loads(capsys.readouterr().out)["smoke"]


def test_every_part2_entry_point_runs_with_only_some_subsets_staged(book_profile, scans: Scans, book_python: str, tmp_path: Path,
                                                                     capsys) -> None:
    profile = ready_book(book_profile, scans, book_python, "0", tmp_path)
    capsys.readouterr()
    code, smoke = smoke_json(capsys, profile)
    table = {r["name"]: r for r in smoke["rows"]}
    assert code == 0, json.dumps(smoke["rows"], indent=1)
    assert list(table) == SMOKE and {r["outcome"] for r in smoke["rows"]} == {"ok"}
    assert smoke["device"] == "cpu" and smoke["python"] == book_python
    assert sorted(smoke["series"]) == sorted(s.uid for s in scans.subsets[0]), "only staged scans are used"
    view = Path(smoke["view"])
    models = sorted(p.name for p in (view / "data-unversioned" / "part2" / "models").rglob("*.state"))
    assert any(m.startswith("seg_") for m in models) and any("_smoke-mal." in m for m in models)
    log = (view / "logs" / "p2ch14_analysis_models_trained_here.log").read_text()
    assert "Total" in log and "Malignant" in log, "the analysis printed its confusion table"
    root = tmp_path / "dlwpt-code" / "data-unversioned"
    assert not (root / "cache").exists() and not (root / "part2" / "models").exists(), "the reader's cache and models are not touched"
    assert not (view / "data-unversioned" / "cache").exists(), "the smoke's own cache is removed"


def test_the_unfixed_book_fails_where_the_fixes_say(book_profile, scans: Scans, book_python: str, tmp_path: Path, capsys) -> None:
    from provision.book.fixes import load_book_manifest
    from provision.book.smoke import run_smoke
    from provision.config import configs_dir, load_config

    profile = ready_book(book_profile, scans, book_python, "0-1", tmp_path)
    assert main(["book", "--undo", "-c", str(profile)]) == 0
    config = load_config(profile)
    entries = load_book_manifest(config.book.fixes, configs_dir()).smoke
    result = run_smoke(tmp_path / "dlwpt-code", Path(config.data.root) / "part2" / "luna", entries, config.book.smoke, book_python,
                       tmp_path / "view")
    rows = {r.name: r for r in result.rows}
    assert rows["p2ch11 training"].outcome == "ok"
    assert rows["p2ch13 segmentation"].outcome == "failed" and rows["p2ch13 segmentation"].last_line == "IndexError: list index out of range"
    assert rows["p2ch14 classification"].outcome == "failed"
    assert "deserialize object on a CUDA device" in rows["p2ch14 analysis, shipped models"].last_line
    assert rows["p2ch14 analysis, models trained here"].outcome == "skipped"
    assert not result.ok


def test_each_chapter14_fix_is_needed(book_profile, scans: Scans, book_python: str, tmp_path: Path, capsys) -> None:
    """With the annotation fixes only, chapter 14's training meets the hard-coded .cuda(); with that fixed too, linspace."""
    manifest = yaml.safe_load((REPO / "configs" / "book" / "dlwpt-code.yaml").read_text())
    expected = {"augment-device": "Torch not compiled with CUDA enabled", "linspace-steps": "linspace()"}
    kept = [f for f in manifest["fixes"] if f["id"] not in expected]
    for missing, message in expected.items():
        variant = tmp_path / f"without-{missing}.yaml"
        variant.write_text(yaml.safe_dump({**manifest, "fixes": kept, "smoke": [e for e in manifest["smoke"] if "p2ch14 " in e["name"]][:2]}))
        profile = ready_book(book_profile, scans, book_python, "0", tmp_path, fixes=str(variant), dir=str(tmp_path / f"code-{missing}"))
        capsys.readouterr()
        code, smoke = smoke_json(capsys, profile)
        row = {r["name"]: r for r in smoke["rows"]}["p2ch14 classification"]
        assert code == 1 and row["outcome"] == "failed" and message in row["last_line"], row
        kept.append(next(f for f in manifest["fixes"] if f["id"] == missing))
        shutil.rmtree(tmp_path / "dlwpt-code" / "data-unversioned" / ".provision" / "smoke", ignore_errors=True)


def test_requirements_installed_for_the_book(book_python: str) -> None:
    out = subprocess.run([book_python, "-c", "import numpy, scipy, SimpleITK, diskcache, tensorboard; "
                          "print(numpy.__version__, scipy.__version__, diskcache.__version__)"], capture_output=True, text=True, check=True)
    numpy_version, scipy_version, diskcache_version = out.stdout.split()
    assert int(numpy_version.split(".")[0]) >= 2 and int(scipy_version.split(".")[0]) < 2 and diskcache_version == "4.1.0"
    assert subprocess.run([book_python, "-c", "from diskcache.core import BytesType"]).returncode == 0, "util/disk.py's import works"


def test_the_book_reads_scans_linked_from_an_unpacked_copy(book_profile, scans: Scans, book_python: str, tmp_path: Path, read_only,
                                                           capsys) -> None:
    import zipfile

    copy = tmp_path / "kaggle" / "input" / "luna16"
    with zipfile.ZipFile(scans.folder / "subset0.zip") as zf:
        zf.extractall(copy / "subset0")  # subset0/subset0/*.mhd, as the published Kaggle copy nests it
    read_only(copy)
    manifest = yaml.safe_load((REPO / "configs" / "book" / "dlwpt-code.yaml").read_text())
    manifest["smoke"] = [e for e in manifest["smoke"] if e["name"] in ("p2ch10 dataset", "p2ch11 prepcache", "p2ch11 training")]
    fixes = tmp_path / "fixes.yaml"
    fixes.write_text(yaml.safe_dump(manifest))
    profile = book_profile(book={"fixes": str(fixes)}, data={"dataset": str(scans.manifest), "sources": [f"kaggle:{tmp_path / 'kaggle' / 'input'}"],
                                                            "subsets": "0"},
                           requirements={"files": [], "venv": str(Path(book_python).parent.parent)})
    assert main(["stage", "-c", str(profile)]) == 0
    assert main(["book", "-c", str(profile)]) == 0
    candidates_csv(tmp_path / "dlwpt-code" / "data" / "part2" / "luna" / "candidates.csv", scans.subsets[0], scans.absent)
    capsys.readouterr()
    code, smoke = smoke_json(capsys, profile)
    assert code == 0 and [r["outcome"] for r in smoke["rows"]] == ["ok"] * 3, smoke["rows"]
    linked = tmp_path / "dlwpt-code" / "data-unversioned" / "part2" / "luna" / "subset0"
    assert linked.is_dir() and all(p.is_symlink() for p in linked.iterdir())
