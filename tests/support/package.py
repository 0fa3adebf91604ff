"""The tool as a reader installs it: from a git URL, a wheel or an sdist, into a fresh virtual environment.

Never editable, never from the test's own interpreter: what these give is what a reader gets. The tool's
requirements come from a local wheel folder (``PROVISION_TEST_TOOL_WHEELS``, filled by ``scripts/test.sh``), as no
test reaches the network.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def tool_wheels() -> Path:
    """The local wheel folder of the tool's requirements, its build backend and a kernel; skip where there is none."""
    folder = os.environ.get("PROVISION_TEST_TOOL_WHEELS")
    if not folder or not Path(folder, ".complete").is_file():
        pytest.skip("installing the tool for real needs a wheel folder of its requirements (PROVISION_TEST_TOOL_WHEELS): "
                    "run the tests with scripts/test.sh, which fills one")
    return Path(folder)


def working_tree_copy(dest: Path) -> Path:
    """This checkout's files as git sees them (tracked and untracked, not ignored; links kept as links) under ``dest``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if not source.is_symlink() and not source.exists():  # deleted in the working tree, not yet in the index
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
    return dest


def working_tree_repo(dest: Path) -> Path:
    """A git repository of this checkout's working tree, committed: ``git+file://`` of it installs what is tested."""
    working_tree_copy(dest)
    identity = ["-c", "user.name=tests", "-c", "user.email=tests@localhost", "-c", "commit.gpgsign=false"]
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], [*identity, "commit", "-q", "-m", "the working tree under test"]):
        subprocess.run(["git", *args], cwd=dest, check=True, capture_output=True)
    return dest


def offline_pip_env(wheels: Path) -> dict[str, str]:
    """pip's settings for installing from the wheel folder only (build isolation included)."""
    return {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def fresh_venv(where: Path, wheels: Path, *requirements: str) -> Path:
    """A new virtual environment with ``requirements`` installed from the wheel folder; its interpreter."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    python = where / "bin" / "python"
    if requirements:
        env = {**os.environ, **offline_pip_env(wheels)}
        proc = subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"pip install {' '.join(requirements)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    return python
