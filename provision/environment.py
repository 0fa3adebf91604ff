"""Where are we running? Kaggle, Colab, a cloud VM, or a workstation; and filesystem facts.

Everything here takes its inputs (environment variables, a /sys folder, a path) as
arguments, so tests can describe a Colab or GCP machine without patching anything.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .schema import did_you_mean

KINDS = ("kaggle", "colab", "vm", "local")

# DMI strings that cloud hypervisors write into /sys/class/dmi/id
CLOUD_DMI = {
    "Google Compute Engine": "gcp",
    "Google": "gcp",
    "Amazon EC2": "aws",
    "Microsoft Corporation": "azure",
    "OpenStack Foundation": "openstack",
    "DigitalOcean": "digitalocean",
    "Lambda": "lambda",
    "Oracle Corporation": "oci",
}


@dataclass(frozen=True)
class Environment:
    """The detected kind of machine (kaggle, colab, vm, local), whether CI runs us, and Python/OS facts."""

    kind: str
    ci: bool
    python_version: str
    python_executable: str
    os: str
    machine: str
    cloud: str | None = None
    reasons: tuple[str, ...] = field(default=())
    warnings: tuple[str, ...] = field(default=())  # what the command line shows before anything else: a setting it ignored

    @property
    def profile(self) -> str:
        """The shipped profile that fits this environment."""
        return "ci" if self.ci else self.kind


def module_available(name: str) -> bool:
    """True when ``name`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def read_dmi(dmi_dir: Path) -> dict[str, str]:
    values = {}
    for name in ("sys_vendor", "product_name", "bios_vendor", "board_vendor"):
        try:
            values[name] = (dmi_dir / name).read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            continue
    return values


def cloud_from_dmi(dmi: Mapping[str, str]) -> str | None:
    for value in dmi.values():
        for marker, cloud in CLOUD_DMI.items():
            if marker.lower() in value.lower():
                return cloud
    return None


def detect(
    environ: Mapping[str, str],
    *,
    colab_importable: bool,
    dmi: Mapping[str, str],
) -> Environment:
    """Decide the environment from facts passed in (see :func:`current`)."""
    reasons: list[str] = []
    warnings: list[str] = []
    cloud = cloud_from_dmi(dmi)
    override = environ.get("PROVISION_ENVIRONMENT")
    if override and override not in KINDS:
        warnings.append(f"PROVISION_ENVIRONMENT is {override!r}, which is no environment{did_you_mean(override, KINDS)}: it is ignored "
                        f"and the environment detected; set it to one of {', '.join(KINDS)}, or unset it")
    if override in KINDS:
        kind = str(override)
        reasons.append(f"PROVISION_ENVIRONMENT is {kind}")
    elif environ.get("KAGGLE_KERNEL_RUN_TYPE"):
        # first: Kaggle's image is built on Colab's, so google.colab imports there too (and COLAB_RELEASE_TAG may be set)
        kind = "kaggle"
        reasons.append(f"KAGGLE_KERNEL_RUN_TYPE is {environ['KAGGLE_KERNEL_RUN_TYPE']}")
    elif colab_importable:
        kind = "colab"
        reasons.append("google.colab is importable")
    elif environ.get("COLAB_RELEASE_TAG"):
        kind = "colab"
        reasons.append("COLAB_RELEASE_TAG is set")
    elif cloud:
        kind = "vm"
        reasons.append(f"DMI says this is a {cloud} virtual machine")
    else:
        kind = "local"
        reasons.append("no sign of Kaggle, Colab or a cloud VM")
    ci = environ.get("CI", "").lower() not in ("", "0", "false", "no")
    if ci:
        reasons.append("CI is set")
    return Environment(
        kind=kind,
        ci=ci,
        python_version=platform.python_version(),
        python_executable=sys.executable,
        os=platform.platform(terse=True),
        machine=platform.machine(),
        cloud=cloud,
        reasons=tuple(reasons),
        warnings=tuple(warnings),
    )


def current(environ: Mapping[str, str] | None = None) -> Environment:
    """Detect the environment of this process."""
    environ = os.environ if environ is None else environ
    decided = environ.get("PROVISION_ENVIRONMENT") in KINDS  # then nothing else is looked at
    colab = not decided and module_available("google.colab")
    dmi = {} if decided else read_dmi(Path("/sys/class/dmi/id"))
    return detect(environ, colab_importable=colab, dmi=dmi)


# ---------------------------------------------------------------- filesystems


@dataclass(frozen=True)
class FsFacts:
    """Free space at a path; ``probe`` is the nearest existing folder that was measured."""

    path: str
    probe: str
    device: int
    free_bytes: int
    total_bytes: int


def folder_problem(path: str | os.PathLike[str]) -> str | None:
    """Why data cannot be written at ``path`` (None when it can): a file where a folder is needed, on the way or at the
    end; a read-only folder or disk; a symbolic link loop. Read-only: nothing is created."""
    target = Path(path).absolute()
    here = target
    while True:
        try:
            st = os.stat(here)
            break
        except (FileNotFoundError, NotADirectoryError):
            if here == here.parent:
                return f"{target} cannot be made: no part of it exists"
            here = here.parent
        except OSError as exc:
            return f"{here} cannot be used: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{here} is a file, not a folder" + ("" if here == target else f": {target} cannot be made there")
    if not os.access(here, os.W_OK | os.X_OK):
        return f"{here} is not writable (a read-only folder or disk)" + ("" if here == target else f": {target} cannot be made there")
    return None


def existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def fs_facts(path: str | os.PathLike[str]) -> FsFacts:
    """statvfs of ``path`` or, when it does not exist yet, of its nearest existing parent."""
    target = Path(path)
    probe = existing_ancestor(target)
    st = os.statvfs(probe)
    return FsFacts(
        path=str(target),
        probe=str(probe),
        device=os.stat(probe).st_dev,
        free_bytes=st.f_bavail * st.f_frsize,
        total_bytes=st.f_blocks * st.f_frsize,
    )
