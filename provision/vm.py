"""`provision vm`: create a GCP GPU VM whose startup script provisions it with this tool.

The command is an argument list built from validated config values (never a shell string);
the boot disk is sized from the data plan of the profile the VM will run, never smaller.
"""

from __future__ import annotations

import math
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .book.checkout import CheckoutFacts
from .book.fixes import load_book_manifest
from .config import Config, load_config
from .disk import GB
from .errors import CommandError, ConfigError, PreflightError
from .manifest import load_manifest
from .plan import BookFacts, Facts, plan_staging

GCLOUD_INSTALL = "https://cloud.google.com/sdk/docs/install"


@dataclass(frozen=True)
class VmPlan:
    argv: tuple[str, ...]
    startup_script: str
    boot_disk_gb: int
    data_needed_gb: float
    profile: str


def data_needed_bytes(profile: Config) -> int:
    """Disk the profile needs for staging onto an empty disk (peak, reserve and margin included)."""
    from .config import configs_dir
    from .environment import FsFacts, detect

    manifest = load_manifest(profile.data.dataset, configs_dir())
    empty = FsFacts(path=profile.data.root, probe="/", device=0, free_bytes=0, total_bytes=0)
    env = detect({}, colab_importable=False, dmi={"product_name": "Google Compute Engine"})
    book = BookFacts(load_book_manifest(profile.book.fixes, configs_dir()), CheckoutFacts("", False, None, (), "link"), ())
    facts = Facts(environment=env, installed={}, nvidia_smi=None, statuses={}, environ={}, data_fs=empty, book=book)
    # on an empty disk no way fits: the plan then names the profile's first (preferred) way, whose need is the answer
    return plan_staging(profile, manifest, facts)[1].needed_bytes


def startup_script(tool_repo: str, profile: str) -> str:
    """Runs as root at first boot: fetch this tool, then provision as the default user's home would."""
    repo = shlex.quote(tool_repo)
    return "\n".join([
        "#!/bin/bash",
        "# written by `provision vm`: provisions this VM for Deep Learning with PyTorch, Part 2",
        "set -euo pipefail",
        "exec > >(tee -a /var/log/dlwpt-provision.log) 2>&1",
        "if [ ! -d /opt/dlwpt-provision/.git ]; then",
        f"  git clone --depth 1 {repo} /opt/dlwpt-provision",
        "fi",
        f"bash /opt/dlwpt-provision/scripts/provision.sh -c {shlex.quote(profile)}",
        "",
    ])


def has_driver(image_family: str) -> bool:
    """Deep Learning VM families named ...-nvidia-580 carry the driver; others install it at first boot when asked."""
    return "-nvidia-" in image_family


def check_image_family(gcloud: str, family: str, project: str) -> None:
    """Refuse before creating anything when the image family no longer resolves; list the current ones."""
    found = subprocess.run([gcloud, "compute", "images", "describe-from-family", family, f"--project={project}", "--format=value(name)"],
                           capture_output=True, text=True)
    if found.returncode == 0 and found.stdout.strip():
        return
    listing = subprocess.run([gcloud, "compute", "images", "list", f"--project={project}", "--no-standard-images", "--format=value(family)"],
                             capture_output=True, text=True)
    families = sorted({line.strip() for line in listing.stdout.splitlines() if line.strip()}) if listing.returncode == 0 else []
    gpu = [f for f in families if f.startswith("common-cu")] or families
    said = (found.stderr.strip().splitlines() or ["no image"])[-1]
    raise ConfigError(
        f"the image family {family} of {project} does not resolve ({said}): it may have been retired",
        hint=(f"set vm.image_family to a current one, e.g. {gpu[-1]}; the GPU families of {project} now: {', '.join(gpu[:12])}"
              if gpu else f"list the current families with: gcloud compute images list --project={project} --no-standard-images"),
        key="vm.image_family",
    )


def plan_vm(config: Config, script_path: str) -> VmPlan:
    """The gcloud command that creates the VM described by ``config.vm``."""
    vm = config.vm
    profile = load_config(vm.profile, environ={"HOME": "/root"})
    needed = data_needed_bytes(profile)
    smallest = math.ceil(needed / GB) + vm.system_gb
    size = vm.boot_disk_gb or smallest
    if size < smallest:
        raise ConfigError(
            f"vm.boot_disk_gb is {size} GB, but the '{vm.profile}' profile needs {needed / GB:.0f} GB for data plus {vm.system_gb} GB for the system",
            hint=f"set vm.boot_disk_gb to at least {smallest}, or 0 to size it from the plan; or stage fewer subsets in that profile",
            key="vm.boot_disk_gb",
        )
    argv = ["gcloud", "compute", "instances", "create", vm.name]
    if vm.project:
        argv.append(f"--project={vm.project}")
    argv += [
        f"--zone={vm.zone}",
        f"--machine-type={vm.machine_type}",
        f"--accelerator=type={vm.accelerator_type},count={vm.accelerator_count}",
        "--maintenance-policy=TERMINATE",  # GPU VMs cannot live-migrate
        f"--image-family={vm.image_family}",
        f"--image-project={vm.image_project}",
        f"--boot-disk-size={size}GB",
        f"--boot-disk-type={vm.boot_disk_type}",
        *([] if has_driver(vm.image_family) else ["--metadata=install-nvidia-driver=True"]),
        f"--metadata-from-file=startup-script={script_path}",
    ]
    if vm.spot:
        argv += ["--provisioning-model=SPOT", "--instance-termination-action=STOP"]
    return VmPlan(tuple(argv), startup_script(vm.tool_repo, vm.profile), size, needed / GB, vm.profile)


def create_vm(config: Config, dry_run: bool) -> VmPlan:
    """Print (dry run) or run the gcloud command; a missing gcloud is refused with the install link."""
    if dry_run:
        return plan_vm(config, "startup-script.sh")
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        raise PreflightError("the gcloud CLI is not installed", hint=f"install it from {GCLOUD_INSTALL}, run `gcloud init`, then run this again")
    check_image_family(gcloud, config.vm.image_family, config.vm.image_project)
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "startup-script.sh"
        plan = plan_vm(config, str(script))
        script.write_text(plan.startup_script)
        proc = subprocess.run([gcloud, *plan.argv[1:]], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-10:])
        raise CommandError(f"gcloud could not create the VM (exit {proc.returncode}):\n{tail}",
                           hint="check the project, zone and GPU quota (gcloud compute regions describe REGION)")
    return plan
