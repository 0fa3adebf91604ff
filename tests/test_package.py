"""The package is whole however it is installed: a wheel, an sdist and a git URL, each into a fresh venv, run from
another folder, with every shipped profile, manifest, requirement file and table inside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.support.package import REPO, fresh_venv, tool_wheels, working_tree_copy, working_tree_repo

pytest.importorskip("build")

SHIPPED = sorted(p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*")
                 if p.is_file() and p.suffix in (".yaml", ".txt"))
PROFILES = sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The wheel and the sdist, built from a copy of the working tree (a build leaves its own folders behind)."""
    where = tmp_path_factory.mktemp("dists")
    source = working_tree_copy(where / "source")
    out = where / "dist"
    proc = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--wheel", "--sdist", "--outdir", str(out), str(source)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"wheel": next(out.glob("*.whl")), "sdist": next(out.glob("*.tar.gz"))}


def test_the_wheel_and_the_sdist_hold_every_shipped_file(dists: dict[str, Path]) -> None:
    assert "colab.yaml" in SHIPPED and "datasets/luna16.yaml" in SHIPPED and "requirements/dlwpt.txt" in SHIPPED
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        in_wheel = {n.removeprefix("provision/_configs/") for n in wheel.namelist() if n.startswith("provision/_configs/")}
    assert in_wheel == set(SHIPPED)
    with tarfile.open(dists["sdist"]) as sdist:
        members = {m.name.split("/", 1)[1]: m for m in sdist.getmembers() if "/" in m.name}
    in_sdist = {n.removeprefix("provision/_configs/") for n, m in members.items() if n.startswith("provision/_configs/") and m.isfile()}
    assert in_sdist == set(SHIPPED), "the sdist carries the files themselves, not a link to a folder it lacks"


def plan_every_profile(provision: Path, where: Path) -> dict[str, str]:
    """`provision plan` of each shipped profile, run from a folder that is not the checkout; each profile's output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROVISION_", "COLAB_", "KAGGLE_"))}
    env["HOME"] = str(where / "home")
    outputs = {}
    for name in PROFILES:
        proc = subprocess.run([str(provision), "plan", "-c", name, "--subsets", "0", "--root", str(where / "root" / name)],
                              cwd=where, env=env, capture_output=True, text=True, timeout=120)
        # 3: this machine's disk cannot take even subset 0 with its cache (the plan says so); anything else is a failure
        assert proc.returncode in (0, 3) and "feasible" in proc.stdout, f"profile {name}: exit {proc.returncode}\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}"
        outputs[name] = proc.stdout
    return outputs


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_installed_from_a_wheel_or_an_sdist_it_plans_every_profile_from_another_folder(kind: str, dists: dict[str, Path],
                                                                                       tmp_path: Path) -> None:
    python = fresh_venv(tmp_path / "venv", tool_wheels(), str(dists[kind]))
    where = tmp_path / "elsewhere"
    where.mkdir()
    site = subprocess.run([str(python), "-c", "import provision, os; print(os.path.dirname(provision.__file__))"], cwd=where,
                          capture_output=True, text=True, check=True).stdout.strip()
    assert site.startswith(str(tmp_path / "venv")), "the installed package, not the checkout"
    outputs = plan_every_profile(python.parent / "provision", where)
    assert set(outputs) == set(PROFILES) and {"colab", "kaggle", "vm", "vm-gcp", "local", "ci"} <= set(outputs)
    for name, text in outputs.items():
        assert f"{site}/_configs/{name}.yaml" in text, f"profile {name} was read from the installed package:\n{text[:600]}"
        assert f"{site}/_configs/datasets/luna16.yaml" in text


@pytest.mark.slow
def test_installed_from_a_git_url_it_plans_and_reports_as_json(tmp_path: Path) -> None:
    repo = working_tree_repo(tmp_path / "clone")
    python = fresh_venv(tmp_path / "venv", tool_wheels(), f"git+file://{repo}")
    where = tmp_path / "elsewhere"
    where.mkdir()
    proc = subprocess.run([str(python.parent / "provision"), "plan", "-c", "local", "--subsets", "0-1", "--root", str(where / "root"),
                           "--json"], cwd=where, capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 3), proc.stderr[-2000:]  # 3: this machine's disk cannot take two subsets
    plan = json.loads(proc.stdout)
    assert [f["key"] for f in plan["data"]["files"]] == ["subset0.zip", "subset1.zip", "annotations.csv"]
    book_fixes = subprocess.run([str(python.parent / "provision"), "book", "--dry-run", "-c", "vm", "--root", str(where / "r2")],
                                cwd=where, capture_output=True, text=True, timeout=120)
    assert book_fixes.returncode == 0 and "p2ch14/training.py" in book_fixes.stdout, book_fixes.stdout[-1500:] + book_fixes.stderr[-1500:]
