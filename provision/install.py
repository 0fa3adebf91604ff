"""Requirement planning (what is satisfied, what to install, with which command) and installing."""

from __future__ import annotations

import collections
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .errors import CommandError, ConfigError

TORCH_PACKAGES = frozenset({"torch", "torchvision", "torchaudio"})


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
    fallback: tuple[str, ...] = ()  # the same install with pip, for when uv cannot start


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
    create_venv: str | None = None  # the profile's virtual environment, to be made first (it is not there yet)

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


@dataclass(frozen=True)
class TorchIndex:
    """Where torch comes from: an index URL (None: the default index), a bound for the torch requirement, and why."""

    url: str | None
    bound: str
    reason: str


def torch_index(setting: str, auto: Callable[[], TorchIndex]) -> TorchIndex:
    """requirements.torch_index: pypi/default/none, a URL, a tag (cu126, cpu), or auto (``auto()`` decides)."""
    if setting in ("pypi", "default", "none"):
        return TorchIndex(None, "", "requirements.torch_index says to use the default index")
    if setting.startswith(("http://", "https://")):
        return TorchIndex(setting, "", "requirements.torch_index names it")
    if setting != "auto":
        from .torch_wheels import INDEX_BASE

        return TorchIndex(INDEX_BASE + setting, "", f"requirements.torch_index is {setting}")
    return auto()


def index_of_installed_torch(version: str) -> TorchIndex:
    """Where torchvision comes from beside an installed torch: the index of that torch's build (``2.13.0+cpu``: cpu,
    ``2.11.0+cu128``: cu128; none: the default index). PyPI's torchvision is a CUDA build, which fails to import beside
    a +cpu torch ("operator torchvision::nms does not exist")."""
    from .torch_wheels import INDEX_BASE

    build = version.partition("+")[2]
    if build == "cpu" or build.startswith(("cu", "rocm", "xpu")):
        return TorchIndex(INDEX_BASE + build, "", f"torch {version} is installed: torchvision and the like from its index ({build}), with it held")
    return TorchIndex(None, "", f"torch {version} is installed from the default index: torchvision from there too, with it held")


def bounded(requirement: str, name: str, bound: str) -> str:
    """``torch>=2.3`` with the bound ``<2.15`` -> ``torch<2.15,>=2.3`` (torch only: torchvision has its own numbers)."""
    if not bound or name != "torch":
        return requirement
    from packaging.requirements import Requirement as Parsed

    parsed = Parsed(requirement)
    parsed.specifier &= bound
    return str(parsed)


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


UV_PRERELEASE_VALUES = frozenset({"disallow", "allow", "if-necessary", "explicit", "if-necessary-or-explicit"})
UV_CONFIG_ERROR = 2  # uv's exit status when it cannot start (a bad setting); 1 is a failed resolution or install
HEARTBEAT_S = 5.0  # an installer silent this long (a CUDA torch downloading) gets a line saying it is still at work
TAIL_LINES = 15  # of the installer's output, in the error when it fails


def broken_uv_env(environ: Mapping[str, str]) -> tuple[str, ...]:
    """uv settings that stop uv from starting, unset for the call. Colab has set UV_CONSTRAINT and
    UV_BUILD_CONSTRAINT to files that are missing (colabtools#5237), and UV_PRERELEASE to an empty value."""
    broken = [name for name in ("UV_CONSTRAINT", "UV_BUILD_CONSTRAINT") if name in environ and not os.path.exists(environ[name])]
    if "UV_PRERELEASE" in environ and environ["UV_PRERELEASE"].strip().lower() not in UV_PRERELEASE_VALUES:
        broken.append("UV_PRERELEASE")
    return tuple(broken)


def install_command(installer: str, python: str, packages: Sequence[str], index: str | None, options: Sequence[str] = ()) -> InstallCommand:
    index_args = ("--index-url", index) if index else ()
    pip = (python, "-m", "pip", "install", *options, *index_args, *packages)
    if installer == "pip":
        return InstallCommand(argv=pip, packages=tuple(packages))
    return InstallCommand(argv=(installer, "pip", "install", "--python", python, *options, *index_args, *packages), packages=tuple(packages), fallback=pip)


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
    torch_from: Callable[[str], TorchIndex],
    environ: Mapping[str, str],
    options: Sequence[str] = (),
) -> InstallPlan:
    """Decide what to install and the exact commands (torch from its own index, the rest from the default).

    ``torch_from(torch requirement)`` says where torch comes from, when it is to be installed.
    """
    statuses = judge(requirements, installed, skip_satisfied)
    todo = [s for s in statuses if s.action == "install"]
    torch_req = next((s.requirement for s in todo if s.name == "torch"), "torch")
    kept = installed.get("torch") if not any(s.name == "torch" for s in todo) else None
    if kept and any(s.name in TORCH_PACKAGES for s in todo):  # torchvision beside an installed torch: from its index, holding it
        choice = index_of_installed_torch(kept)
        todo_torch = [f"torch=={kept}", *(s.requirement for s in todo if s.name in TORCH_PACKAGES)]
    else:
        choice = torch_from(torch_req) if any(s.name in TORCH_PACKAGES for s in todo) else TorchIndex(None, "", "torch is already installed")
        todo_torch = [bounded(s.requirement, s.name, choice.bound) for s in todo if s.name in TORCH_PACKAGES]
    index, why = choice.url, choice.reason
    torch_todo = todo_torch
    rest = [s.requirement for s in todo if s.name not in TORCH_PACKAGES]
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


def run_install(plan: InstallPlan, environ: Mapping[str, str], progress: Callable[[str], None],
                note: Callable[[str], None] | None = None, heartbeat_s: float = HEARTBEAT_S) -> None:
    """Carry out the plan's commands; a failure raises CommandError with the installer's last lines. ``progress`` gets
    each command line as it starts, the installer's output as it comes and, while it says nothing for ``heartbeat_s``,
    what it is installing and for how long (a CUDA torch is gigabytes); ``note`` what went wrong but was got round (uv
    that cannot start)."""
    env = {k: v for k, v in environ.items() if k not in plan.unset_env}
    for command in plan.commands:
        progress("running: " + " ".join(command.argv))
        status, first, tail = _run_shown(command, env, progress, heartbeat_s)
        if status == UV_CONFIG_ERROR and command.fallback:
            said = first or "no message"
            (note or progress)(f"uv could not start ({said}); installing with pip instead: {' '.join(command.fallback)}")
            command = InstallCommand(command.fallback, command.packages)
            status, first, tail = _run_shown(command, env, progress, heartbeat_s)
        if status != 0:
            raise CommandError(
                f"installing {', '.join(command.packages)} failed (exit {status}):\n" + "\n".join(line for line in tail if line.strip()),
                hint="read the installer's lines above; a version that does not exist for this Python can be relaxed in the requirements file",
                command=" ".join(command.argv),
                exit_status=status,
            )


def _run_shown(command: InstallCommand, env: Mapping[str, str], say: Callable[[str], None],
               heartbeat_s: float) -> tuple[int, str, list[str]]:
    """Run the installer with its output (stdout and stderr together) said line by line as it comes, and a line every
    ``heartbeat_s`` it says nothing; returns its exit status, its first line and its last lines."""
    from .progress import duration

    lines: queue.Queue[str | None] = queue.Queue()
    first = ""
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    started = time.monotonic()
    what = ", ".join(command.packages)
    with subprocess.Popen(list(command.argv), env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                          text=True, errors="replace") as proc:
        assert proc.stdout is not None  # stdout=PIPE
        threading.Thread(target=_pump, args=(proc.stdout, lines), name="provision-install-output", daemon=True).start()
        try:
            while True:
                try:
                    line = lines.get(timeout=heartbeat_s)
                except queue.Empty:
                    say(f"still installing {what} ({duration(time.monotonic() - started)} so far)")
                    continue
                if line is None:
                    break
                line = line.rstrip()
                first = first or line
                tail.append(line)
                if line:
                    say(f"  {line}")
        finally:
            if proc.poll() is None:  # interrupted: the installer goes with us
                proc.kill()
    return proc.wait(), first, list(tail)


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    try:
        for line in stream:
            lines.put(line)
    except (OSError, ValueError):  # closed under us: the installer was killed
        pass
    lines.put(None)
