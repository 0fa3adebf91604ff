"""Requirement planning and real installs into throwaway venvs from a local wheel folder."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from provision.cli import main
from provision.errors import ConfigError
from provision.install import Requirement, judge, read_requirements, torch_index


def make_wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel built by hand (a module that knows its version)."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n".encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return wheel


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wheels")
    make_wheel(folder, "alpha", "1.0")
    make_wheel(folder, "beta", "2.0")
    return folder


def fresh_venv(where: Path, wheels: Path, preinstall: list[str]) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    if preinstall:
        subprocess.run([str(where / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels), *preinstall], check=True)
    return where


def installed(venv: Path) -> dict[str, str]:
    out = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "import importlib.metadata as m, json; print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def profile(tmp_path: Path, venv: Path, wheels: Path, requirements: str, installer: str) -> Path:
    (tmp_path / "reqs.txt").write_text(requirements)
    path = tmp_path / "install.yaml"
    path.write_text(
        f"requirements:\n  files: [reqs.txt]\n  venv: {venv}\n  installer: {installer}\n  no_index: true\n  find_links: [{wheels}]\n"
        f"data:\n  root: {tmp_path / 'root'}\n  reserve_gb: 0\n  margin_gb: 0\n"
    )
    return path


@pytest.mark.parametrize("installer", ["pip", "uv"])
def test_install_skips_satisfied_installs_missing(tmp_path: Path, wheels: Path, installer: str, capsys: pytest.CaptureFixture[str]) -> None:
    from provision.install import find_uv

    if installer == "uv" and find_uv() is None:
        pytest.skip("uv is not installed in this environment")
    venv = fresh_venv(tmp_path / "venv", wheels, ["alpha==1.0"])
    cfg = profile(tmp_path, venv, wheels, "alpha>=1.0\nbeta==2.0\n", installer)

    assert main(["install", "--dry-run", "-c", str(cfg), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert {r["name"]: r["action"] for r in plan["requirements"]} == {"alpha": "satisfied", "beta": "install"}
    assert [c["packages"] for c in plan["commands"]] == [["beta==2.0"]]
    program = plan["commands"][0]["argv"][0]
    assert Path(program).name == "uv" if installer == "uv" else program == str(venv / "bin" / "python")
    assert "beta" not in installed(venv), "a dry run installs nothing"

    assert main(["install", "-c", str(cfg)]) == 0
    capsys.readouterr()
    assert installed(venv)["beta"] == "2.0" and installed(venv)["alpha"] == "1.0"

    assert main(["install", "--dry-run", "-c", str(cfg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["commands"] == [], "a second run has nothing to do"


def test_unsatisfiable_requirement_fails_with_the_installers_words(tmp_path: Path, wheels: Path, capsys: pytest.CaptureFixture[str]) -> None:
    venv = fresh_venv(tmp_path / "venv", wheels, [])
    cfg = profile(tmp_path, venv, wheels, "alpha\ngamma==9.9\n", "pip")
    assert main(["install", "-c", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "installing alpha, gamma==9.9 failed" in err
    assert "gamma" in err.split("failed", 1)[1], "the installer's own lines are shown"
    assert "hint:" in err


def test_install_creates_the_profiles_venv(tmp_path: Path, wheels: Path, capsys: pytest.CaptureFixture[str]) -> None:
    venv = tmp_path / "made-by-provision"
    cfg = profile(tmp_path, venv, wheels, "beta\n", "pip")
    assert main(["install", "-c", str(cfg)]) == 0
    capsys.readouterr()
    assert installed(venv)["beta"] == "2.0"


def test_requirement_files_are_parsed_and_validated(tmp_path: Path) -> None:
    (tmp_path / "base.txt").write_text("numpy>=1.24  # comment\n")
    (tmp_path / "r.txt").write_text("-r base.txt\n\n# only a comment\nSimpleITK>=2.2; python_version >= '3.8'\n")
    reqs = read_requirements([str(tmp_path / "r.txt")], ["diskcache==4.1.0"])
    assert [r.name for r in reqs] == ["numpy", "simpleitk", "diskcache"]
    (tmp_path / "bad.txt").write_text("numpy>>1\n")
    with pytest.raises(ConfigError, match=r"bad.txt:1: invalid requirement"):
        read_requirements([str(tmp_path / "bad.txt")], [])
    (tmp_path / "opt.txt").write_text("--extra-index-url http://evil/\n")
    with pytest.raises(ConfigError, match="not supported"):
        read_requirements([str(tmp_path / "opt.txt")], [])
    with pytest.raises(ConfigError, match="direct URL"):
        read_requirements([], ["pkg @ https://example.org/pkg.whl"])


def test_judge_versions_and_markers() -> None:
    reqs = [Requirement("numpy<=1.16.4", "numpy", "x"), Requirement("torch>=2.0", "torch", "x"),
            Requirement('pywin32; sys_platform == "win32"', "pywin32", "x")]
    statuses = {s.name: s for s in judge(reqs, {"numpy": "2.1.0", "torch": "2.11.0+cu128"}, skip_satisfied=True)}
    assert statuses["numpy"].action == "install" and "does not satisfy" in statuses["numpy"].reason
    assert statuses["torch"].action == "satisfied"
    assert statuses["pywin32"].action == "not-needed"
    again = judge(reqs[1:2], {"torch": "2.11.0"}, skip_satisfied=False)
    assert again[0].action == "install"


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("cu126", "https://download.pytorch.org/whl/cu126"),
        ("cpu", "https://download.pytorch.org/whl/cpu"),
        ("https://mirror.example/torch/", "https://mirror.example/torch/"),
        ("pypi", None),
    ],
)
def test_a_torch_index_set_by_hand_is_used_as_it_is(setting: str, expected: str | None) -> None:
    from provision.install import TorchIndex

    chosen = torch_index(setting, lambda: TorchIndex("unused", "", "auto"))
    assert chosen.url == expected and chosen.bound == ""


def test_uv_constraint_bug_is_worked_around(tmp_path: Path) -> None:
    from provision.install import broken_uv_env

    real = tmp_path / "c.txt"
    real.write_text("")
    assert broken_uv_env({"UV_CONSTRAINT": "/nonexistent/c.txt", "UV_BUILD_CONSTRAINT": str(real)}) == ("UV_CONSTRAINT",)
    assert broken_uv_env({"UV_PRERELEASE": ""}) == ("UV_PRERELEASE",)
    assert broken_uv_env({"UV_PRERELEASE": "sometimes"}) == ("UV_PRERELEASE",)
    assert broken_uv_env({"UV_PRERELEASE": "if-necessary-or-explicit", "UV_CONSTRAINT": str(real)}) == ()


def test_real_uv_installs_under_colabs_broken_uv_settings(tmp_path: Path, wheels: Path, caplog: pytest.LogCaptureFixture,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Colab sets UV_CONSTRAINT to a missing file and UV_PRERELEASE to an empty value; both stop uv (exit 2)."""
    from provision.install import find_uv

    uv = find_uv()
    if uv is None:
        pytest.skip("uv is not installed in this environment")
    venv = fresh_venv(tmp_path / "venv", wheels, [])
    colab = {**os.environ, "UV_CONSTRAINT": "/usr/lib/python3/dist-packages/missing-constraints.txt", "UV_PRERELEASE": ""}
    raw = subprocess.run([uv, "pip", "install", "--python", str(venv / "bin" / "python"), "--no-index", "--find-links", str(wheels), "beta"],
                         env=colab, capture_output=True, text=True)
    assert raw.returncode == 2, "the stand-in environment breaks uv as Colab's does"
    cfg = profile(tmp_path, venv, wheels, "beta\n", "uv")
    assert main(["install", "-c", str(cfg)], environ=colab) == 0
    assert installed(venv)["beta"] == "2.0"
    progress = capsys.readouterr().err  # the command lines are progress (stderr), not warnings
    assert "uv could not start" not in caplog.text and "install: running: " in progress and "uv pip install" in progress, "uv itself did the install"


def test_uv_that_cannot_start_falls_back_to_pip_with_a_note(tmp_path: Path, wheels: Path, monkeypatch, caplog: pytest.LogCaptureFixture) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "uv"  # a STAND-IN uv that fails as uv does on a setting it cannot parse
    fake.write_text("#!/bin/sh\necho \"error: invalid value 'x' for '--index-strategy <INDEX_STRATEGY>'\" >&2\nexit 2\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    venv = fresh_venv(tmp_path / "venv", wheels, [])
    cfg = profile(tmp_path, venv, wheels, "beta\n", "uv")
    assert main(["install", "-c", str(cfg)]) == 0
    assert "uv could not start (error: invalid value 'x'" in caplog.text and "installing with pip instead" in caplog.text
    assert installed(venv)["beta"] == "2.0"


def test_colab_dry_run_keeps_installed_torch(capsys: pytest.CaptureFixture[str]) -> None:
    torch = pytest.importorskip("torch")
    assert main(["install", "--dry-run", "-c", "colab", "--json"], environ={"PROVISION_ENVIRONMENT": "colab"}) == 0
    plan = json.loads(capsys.readouterr().out)
    actions = {r["name"]: r for r in plan["requirements"]}
    assert actions["torch"]["action"] == "satisfied" and actions["torch"]["installed"] == torch.__version__
    planned = {p.split("=")[0].split(">")[0].split("<")[0].lower() for c in plan["commands"] for p in c["packages"]}
    assert "torch" not in planned
    try:
        import numpy  # noqa: F401
    except ImportError:
        return
    assert "numpy" not in planned


@pytest.mark.parametrize(("torch_version", "index"), [("2.13.0+cpu", "https://download.pytorch.org/whl/cpu"),
                                                      ("2.11.0+cu128", "https://download.pytorch.org/whl/cu128"), ("2.14.0", None)])
def test_torchvision_comes_from_the_index_of_the_torch_installed(torch_version: str, index: str | None) -> None:
    """PyPI's torchvision beside a +cpu torch fails to import (operator torchvision::nms does not exist): one index for both."""
    from provision.install import Requirement, plan_install

    reqs = [Requirement("torch>=2.3", "torch", "a.txt:1"), Requirement("torchvision", "torchvision", "b.txt:1")]
    plan = plan_install(reqs, installed={"torch": torch_version}, skip_satisfied=True, installer="pip", target_python="python",
                        torch_from=lambda r: pytest.fail("the installed torch decides the index"), environ={})
    torch_command = plan.commands[0]
    assert torch_command.packages == (f"torch=={torch_version}", "torchvision"), "torch is held where it is"
    assert plan.torch_index == index and (("--index-url", index) == torch_command.argv[-4:-2] if index else "--index-url" not in torch_command.argv)
