"""`provision vm`: the gcloud command rendered from the VM profiles, sized from the data plan."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import pytest

from provision.cli import main
from provision.config import configs_dir, load_config
from provision.vm import data_needed_bytes


@pytest.mark.parametrize("profile", sorted(p.stem for p in configs_dir().glob("vm-*.yaml")))
def test_dry_run_renders_a_consistent_command(profile: str, capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(profile, environ={})
    assert main(["vm", "-c", profile, "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    argv = plan["argv"]
    assert argv[:5] == ["gcloud", "compute", "instances", "create", config.vm.name]
    assert f"--zone={config.vm.zone}" in argv
    assert f"--accelerator=type={config.vm.accelerator_type},count={config.vm.accelerator_count}" in argv
    needed_gb = data_needed_bytes(load_config(config.vm.profile, environ={"HOME": "/root"})) / 1e9
    assert plan["boot_disk_gb"] == math.ceil(needed_gb) + config.vm.system_gb
    assert f"--boot-disk-size={plan['boot_disk_gb']}GB" in argv
    assert plan["boot_disk_gb"] >= 200, "all ten subsets, unpacked, plus the book's cache"
    assert f"scripts/provision.sh -c {config.vm.profile}" in plan["startup_script"]
    assert "--maintenance-policy=TERMINATE" in argv


def test_a_boot_disk_smaller_than_the_plan_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["vm", "-c", "vm-gcp", "--dry-run", "--set", "vm.boot_disk_gb=100"]) == 2
    err = capsys.readouterr().err
    assert "vm.boot_disk_gb is 100 GB" in err and "at least" in err


def test_spot_and_project_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["vm", "-c", "vm-gcp", "--dry-run", "--json", "--set", "vm.spot=true", "--set", "vm.project=my-proj",
                 "--set", "vm.boot_disk_gb=500"]) == 0
    argv = json.loads(capsys.readouterr().out)["argv"]
    assert "--provisioning-model=SPOT" in argv and "--project=my-proj" in argv and "--boot-disk-size=500GB" in argv


def test_missing_gcloud_is_refused_with_the_install_link(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["vm", "-c", "vm-gcp"]) == 3
    assert "https://cloud.google.com/sdk/docs/install" in capsys.readouterr().err


def fake_gcloud(tmp_path: Path, families: list[str]) -> Path:
    """A STAND-IN gcloud (a shell script): images resolve only for ``families`` (others answer as gcloud does for a
    retired family), `images list` lists them, and `instances create` records its arguments and startup script."""
    record = tmp_path / "gcloud-args"
    gcloud = tmp_path / "bin" / "gcloud"
    gcloud.parent.mkdir(exist_ok=True)
    known = " ".join(families)
    gcloud.write_text(
        "#!/bin/sh\n"
        'if [ "$1 $2 $3" = "compute images describe-from-family" ]; then\n'
        f'  for f in {known}; do [ "$f" = "$4" ] && {{ echo "$f-v20261101"; exit 0; }}; done\n'
        '  echo "ERROR: (gcloud.compute.images.describe-from-family) Could not fetch resource:" >&2\n'
        '  echo " - The resource \'projects/deeplearning-platform-release/global/images/family/$4\' was not found" >&2; exit 1\n'
        "fi\n"
        f'if [ "$1 $2 $3" = "compute images list" ]; then for f in {known} tf-latest-cpu; do echo "$f"; done; exit 0; fi\n'
        f'printf "%s\\n" "$@" > {record}\n'
        f'for a in "$@"; do case "$a" in --metadata-from-file=startup-script=*) cat "${{a#*=startup-script=}}" > {record}.script;; esac; done\n'
    )
    gcloud.chmod(gcloud.stat().st_mode | stat.S_IEXEC)
    return record


def test_runs_gcloud_with_the_startup_script(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record = fake_gcloud(tmp_path, ["common-cu129-ubuntu-2204-nvidia-580", "common-cu129-ubuntu-2404-nvidia-580"])
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert main(["vm", "-c", "vm-gcp"]) == 0
    capsys.readouterr()
    args = record.read_text().splitlines()
    assert args[:4] == ["compute", "instances", "create", "dlwpt-part2"]
    assert "--image-family=common-cu129-ubuntu-2204-nvidia-580" in args
    assert "--metadata=install-nvidia-driver=True" not in args, "the image has the driver"
    assert "bash /opt/dlwpt-provision/scripts/provision.sh -c vm" in Path(f"{record}.script").read_text()


def test_a_retired_image_family_is_refused_with_the_current_ones(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    record = fake_gcloud(tmp_path, ["common-cu129-ubuntu-2204-nvidia-580", "common-cu129-ubuntu-2404-nvidia-580"])
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert main(["vm", "-c", "vm-gcp", "--set", "vm.image_family=common-cu128-ubuntu-2204-nvidia-570"]) == 2
    err = capsys.readouterr().err
    assert "common-cu128-ubuntu-2204-nvidia-570" in err and "was not found" in err and "retired" in err
    assert "common-cu129-ubuntu-2204-nvidia-580, common-cu129-ubuntu-2404-nvidia-580" in err and "tf-latest-cpu" not in err
    assert not record.exists(), "nothing was created"


def test_the_driver_is_installed_at_boot_only_for_images_without_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["vm", "-c", "vm-gcp", "--dry-run", "--json", "--set", "vm.image_family=common-cu129-ubuntu-2204"]) == 0
    assert "--metadata=install-nvidia-driver=True" in json.loads(capsys.readouterr().out)["argv"]
    assert main(["vm", "-c", "vm-gcp", "--dry-run", "--json"]) == 0
    assert "--metadata=install-nvidia-driver=True" not in json.loads(capsys.readouterr().out)["argv"]
