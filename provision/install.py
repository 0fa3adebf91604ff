"""Requirement planning (what is satisfied, what to install, with which command) and installing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import CommandError, ConfigError

TORCH_PACKAGES = frozenset({"torch", "torchvision", "torchaudio"})
TORCH_INDEX_BASE = "https://download.pytorch.org/whl/"
# CUDA builds PyTorch publishes wheels for, newest last; a driver runs builds up to its CUDA version
TORCH_CUDA_TAGS = ((11, 8), (12, 1), (12, 4), (12, 6), (12, 8), (12, 9), (13, 0))


@dataclass(frozen=True)
class Requirement:
    """One validated requirement line and where it was written."""

    text: str
    name: str
    origin: str  # file:line or "requirements.packages[i]"


@dataclass(frozen=True)
class RequirementStatus:
    requirement: str
    name: str
    installed: str | None
    action: str  # satisfied | install | not-needed
    reason: str


@dataclass(frozen=True)
class InstallCommand:
    argv: tuple[str, ...]
    packages: tuple[str, ...]


@dataclass(frozen=True)
class InstallPlan:
    """What ``provision install`` will do: each requirement's status and the exact commands."""

    target_python: str
    installer: str
    requirements: tuple[RequirementStatus, ...]
    torch_index: str | None
    torch_index_reason: str
    commands: tuple[InstallCommand, ...]
    unset_env: tuple[str, ...]

    @property
    def to_install(self) -> tuple[RequirementStatus, ...]:
        return tuple(r for r in self.requirements if r.action == "install")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_requirements(files: Sequence[str], packages: Sequence[str]) -> tuple[Requirement, ...]:
    """Parse requirement files (``-r`` includes allowed) and extra package strings; reject anything else."""
    found: list[Requirement] = []
    for path in files:
        found.extend(_read_file(Path(path), ()))
    for i, text in enumerate(packages):
        found.append(_parse_line(text, f"requirements.packages[{i}]"))
    return tuple(found)


def _read_file(path: Path, seen: tuple[Path, ...]) -> list[Requirement]:
    if path in seen:
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read requirements file {path}: {exc.strerror}", hint="fix requirements.files in the profile", file=str(path)) from None
    result: list[Requirement] = []
    for number, raw in enumerate(lines, 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r ", "--requirement ")):
            result.extend(_read_file(path.parent / line.split(None, 1)[1], (*seen, path)))
            continue
        result.append(_parse_line(line, f"{path}:{number}"))
    return result


def _parse_line(text: str, origin: str) -> Requirement:
    from packaging.requirements import InvalidRequirement
    from packaging.requirements import Requirement as Parsed

    if text.startswith("-"):
        raise ConfigError(
            f"{origin}: option lines ({text.split()[0]}) are not supported in requirement files",
            hint="the torch index is chosen by requirements.torch_index; list only package requirements",
            file=origin,
        )
    try:
        parsed = Parsed(text)
    except InvalidRequirement as exc:
        raise ConfigError(f"{origin}: invalid requirement {text!r}: {exc}", hint="write it like 'numpy>=1.24' (PEP 508)", file=origin) from None
    if parsed.url:
        raise ConfigError(f"{origin}: direct URL requirements are not allowed ({text})", hint="name a package and version instead", file=origin)
    return Requirement(text=str(parsed), name=canonical(parsed.name), origin=origin)


def judge(requirements: Sequence[Requirement], installed: Mapping[str, str], skip_satisfied: bool) -> tuple[RequirementStatus, ...]:
    """Satisfied or to install, for each requirement, given installed distributions (name -> version)."""
    from packaging.requirements import Requirement as Parsed
    from packaging.version import InvalidVersion, Version

    statuses = []
    for req in requirements:
        parsed = Parsed(req.text)
        version = installed.get(req.name)
        if parsed.marker is not None and not parsed.marker.evaluate():
            statuses.append(RequirementStatus(req.text, req.name, version, "not-needed", "its environment marker does not apply"))
            continue
        if version is None:
            statuses.append(RequirementStatus(req.text, req.name, None, "install", "not installed"))
            continue
        try:
            ok = parsed.specifier.contains(Version(version), prereleases=True)
        except InvalidVersion:
            ok = False
        if ok and skip_satisfied:
            statuses.append(RequirementStatus(req.text, req.name, version, "satisfied", f"{version} is installed"))
        elif ok:
            statuses.append(RequirementStatus(req.text, req.name, version, "install", "reinstall asked for (skip_satisfied: false)"))
        else:
            statuses.append(RequirementStatus(req.text, req.name, version, "install", f"{version} does not satisfy {parsed.specifier}"))
    return tuple(statuses)


def torch_index_for(setting: str, driver_cuda: str | None) -> tuple[str | None, str]:
    """(index URL or None for the default index, why)."""
    if setting in ("pypi", "default", "none"):
        return None, "requirements.torch_index says to use the default index"
    if setting.startswith(("http://", "https://")):
        return setting, "requirements.torch_index names it"
    if setting != "auto":
        return TORCH_INDEX_BASE + setting, f"requirements.torch_index is {setting}"
    if driver_cuda is None:
        return TORCH_INDEX_BASE + "cpu", "no NVIDIA driver found (nvidia-smi): CPU build"
    try:
        major, minor = (int(x) for x in driver_cuda.split(".")[:2])
    except ValueError:
        return TORCH_INDEX_BASE + "cpu", f"could not read the driver's CUDA version {driver_cuda!r}: CPU build"
    fitting = [t for t in TORCH_CUDA_TAGS if t <= (major, minor)]
    if not fitting:
        return TORCH_INDEX_BASE + "cpu", f"the driver supports CUDA {driver_cuda}, older than any PyTorch CUDA build: CPU build (update the driver)"
    tag = "cu{}{}".format(*fitting[-1])
    return TORCH_INDEX_BASE + tag, f"the driver supports CUDA {driver_cuda}: {tag} build"


def find_uv(which: Callable[[str], str | None] = shutil.which) -> str | None:
    """uv on PATH, or installed beside this interpreter (a venv whose bin/ is not on PATH)."""
    found = which("uv")
    if found:
        return found
    sibling = Path(sys.executable).parent / "uv"
    return str(sibling) if sibling.is_file() and os.access(sibling, os.X_OK) else None


def choose_installer(setting: str, which: Callable[[str], str | None] = shutil.which) -> str:
    """The installer program: a path to uv, or "pip"."""
    uv = find_uv(which) if setting in ("auto", "uv") else None
    if setting == "uv" and uv is None:
        raise ConfigError("requirements.installer is uv, but uv is not on PATH", hint="install uv (pip install uv) or set requirements.installer: pip")
    return uv or "pip"


def broken_uv_env(environ: Mapping[str, str]) -> tuple[str, ...]:
    """uv settings pointing to files that do not exist (a known Colab bug): unset them for the call."""
    return tuple(name for name in ("UV_CONSTRAINT", "UV_BUILD_CONSTRAINT") if environ.get(name) and not os.path.exists(environ[name]))


def install_command(installer: str, python: str, packages: Sequence[str], index: str | None, options: Sequence[str] = ()) -> InstallCommand:
    base = (installer, "pip", "install", "--python", python) if installer != "pip" else (python, "-m", "pip", "install")
    index_args = ("--index-url", index) if index else ()
    return InstallCommand(argv=(*base, *options, *index_args, *packages), packages=tuple(packages))


def index_options(find_links: Sequence[str], no_index: bool) -> tuple[str, ...]:
    """Installer options from the profile (a local wheel folder, no index): the same for pip and uv."""
    options: list[str] = ["--no-index"] if no_index else []
    for folder in find_links:
        options += ["--find-links", folder]
    return tuple(options)


def plan_install(
    requirements: Sequence[Requirement],
    *,
    installed: Mapping[str, str],
    skip_satisfied: bool,
    installer: str,
    target_python: str,
    torch_index_setting: str,
    driver_cuda: str | None,
    environ: Mapping[str, str],
    options: Sequence[str] = (),
) -> InstallPlan:
    """Decide what to install and the exact commands (torch from its own index, the rest from the default)."""
    statuses = judge(requirements, installed, skip_satisfied)
    todo = [s for s in statuses if s.action == "install"]
    torch_todo = [s.requirement for s in todo if s.name in TORCH_PACKAGES]
    rest = [s.requirement for s in todo if s.name not in TORCH_PACKAGES]
    index, why = torch_index_for(torch_index_setting, driver_cuda) if torch_todo else (None, "torch is already installed")
    commands = []
    if torch_todo:
        commands.append(install_command(installer, target_python, torch_todo, None if "--no-index" in options else index, options))
    if rest:
        commands.append(install_command(installer, target_python, rest, None, options))
    return InstallPlan(
        target_python=target_python,
        installer=installer,
        requirements=statuses,
        torch_index=index,
        torch_index_reason=why,
        commands=tuple(commands),
        unset_env=broken_uv_env(environ) if installer != "pip" else (),
    )


def installed_distributions(python: str | None = None) -> dict[str, str]:
    """name -> version of the distributions installed for ``python`` (this interpreter by default)."""
    # compare unresolved paths: a venv's python is a symlink to the same binary as its base interpreter
    if python is None or os.path.abspath(python) == os.path.abspath(sys.executable):
        from importlib.metadata import distributions

        return {canonical(d.metadata["Name"]): d.version for d in distributions() if d.metadata["Name"]}
    if not os.path.exists(python):
        return {}
    code = "import importlib.metadata as m, json; print(json.dumps({d.metadata['Name']: d.version for d in m.distributions() if d.metadata['Name']}))"
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    import json

    return {canonical(k): v for k, v in json.loads(out).items()}


def create_venv(venv: str) -> None:
    """``python -m venv VENV`` with this interpreter; a failure is a CommandError with the reason."""
    proc = subprocess.run([sys.executable, "-m", "venv", venv], capture_output=True, text=True)
    if proc.returncode != 0:
        raise CommandError(
            f"could not create the virtual environment {venv}: {proc.stderr.strip()[-500:]}",
            hint="on Debian/Ubuntu install python3-venv; or remove requirements.venv to install into this Python",
            venv=venv,
        )


def target_python(venv: str | None, default: str) -> str:
    """The interpreter the requirements are installed for: the profile's venv, or ``default``."""
    return venv_python(venv) if venv else default


def venv_python(venv: str) -> str:
    return str(Path(venv) / ("Scripts/python.exe" if os.name == "nt" else "bin/python"))


def run_install(plan: InstallPlan, environ: Mapping[str, str], log: Callable[[str], None]) -> None:
    """Carry out the plan's commands; a failure raises CommandError with the installer's last lines."""
    env = {k: v for k, v in environ.items() if k not in plan.unset_env}
    for command in plan.commands:
        log("running: " + " ".join(command.argv))
        proc = subprocess.run(list(command.argv), env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise CommandError(
                f"installing {', '.join(command.packages)} failed (exit {proc.returncode}):\n{tail}",
                hint="read the installer's lines above; a version that does not exist for this Python can be relaxed in the requirements file",
                command=" ".join(command.argv),
                exit_status=proc.returncode,
            )
