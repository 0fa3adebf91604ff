"""scripts/provision.sh, the one command for a fresh VM: a real venv, a real pip install of this checkout."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.conftest import REPO
from tests.support.dataset import Built, tree_md5s
from tests.test_stage import expected_tree


def offline_venv(where: Path) -> Path:
    """A fresh venv that sees this interpreter's packages through a .pth file (the tests have no network)."""
    # no pip or setuptools of its own: this interpreter's (new enough to build editable wheels) are seen instead
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    site = next((where / "lib").glob("python3*/site-packages"))
    (site / "outer-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return where


def run_script(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(["/bin/bash", str(REPO / "scripts" / "provision.sh"), *args], capture_output=True, text=True, env={**full, **env}, timeout=600)


def test_provision_sh_installs_the_tool_and_provisions(built: Built, serve, write_profile, tmp_path: Path) -> None:
    srv = serve()
    venv = offline_venv(tmp_path / "venv")
    profile = write_profile({"dataset": str(built.manifest), "sources": [srv.url + "/mirror/"]})
    env = {"PROVISION_VENV": str(venv), "PROVISION_PIP_ARGS": "--no-index --no-build-isolation --no-deps"}

    dry = run_script(["-c", str(profile), "--dry-run"], env)
    assert dry.returncode == 0, dry.stderr
    assert "feasible     yes" in dry.stdout and srv.stats.requests == []
    assert (venv / "bin" / "provision").exists(), "the tool is installed into the venv"

    done = run_script(["-c", str(profile)], env)
    assert done.returncode == 0, done.stderr + done.stdout
    assert tree_md5s(tmp_path / "root" / "part2" / "luna") == expected_tree(built)

    sent = srv.stats.bytes_sent
    again = run_script(["-c", str(profile)], env)
    assert again.returncode == 0, again.stderr
    assert srv.stats.bytes_sent == sent, "idempotent: a second run fetches nothing"


def test_provision_sh_without_a_suitable_python(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    old = bin_dir / "python3"
    old.write_text("#!/bin/sh\nexit 1\n")  # STAND-IN for a Python older than 3.10: fails the version check
    old.chmod(old.stat().st_mode | stat.S_IEXEC)
    (bin_dir / "dirname").symlink_to("/usr/bin/dirname")
    env = {"PROVISION_VENV": str(tmp_path / "no-venv"), "PATH": str(bin_dir), "PYTHON": ""}
    proc = run_script(["--dry-run"], env)
    assert proc.returncode == 2, proc.stderr
    assert "Python 3.10 or newer" in proc.stderr and "hint:" in proc.stderr
    assert not (tmp_path / "no-venv").exists()


def test_where_torch_cannot_be_installed_the_book_tests_skip_with_their_reason(tmp_path: Path) -> None:
    """As scripts/test.sh says: no PyTorch index and no local wheel means a skip that says why, not an ERROR; with
    PROVISION_TEST_REQUIRE_BOOK (the bundle is there, as in CI) the same is a failure that says why."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISION_TEST_")}
    env.update(PROVISION_TEST_TORCH="torch==0.0.1 --no-index", PROVISION_TEST_WHEELS=str(wheels),
               PROVISION_TEST_BOOK_VENV=str(tmp_path / "book-venv"))
    test = "tests/test_book_smoke.py::test_requirements_installed_for_the_book"
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", test]
    skipped = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout[-2000:]
    assert "could not install here" in skipped.stdout and "torch==0.0.1" in skipped.stdout
    demanded = subprocess.run(command, cwd=REPO, env={**env, "PROVISION_TEST_REQUIRE_BOOK": "1"}, capture_output=True, text=True, timeout=300)
    assert demanded.returncode != 0 and "these tests must run" in demanded.stdout, demanded.stdout[-2000:]
