"""`provision export skypilot`: every exported task is loaded with SkyPilot's own parser."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from provision.cli import main
from provision.config import load_config
from provision.vm import data_needed_bytes

sky = pytest.importorskip("sky", reason="skypilot is part of the test extras")


def parse(text: str, tmp_path: Path):
    path = tmp_path / "task.yaml"
    path.write_text(text)
    return sky.Task.from_yaml(str(path))


def test_two_node_vm_task_parses_and_fits_the_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "skypilot", "-c", "vm", "--nodes", "2"]) == 0
    captured = capsys.readouterr()
    task = parse(captured.out, tmp_path)
    assert task.num_nodes == 2
    (resources,) = list(task.resources)
    assert resources.accelerators == {"T4": 1}
    needed_gb = data_needed_bytes(load_config("vm", environ={"HOME": "/root"})) / 1e9
    assert resources.disk_size == math.ceil(needed_gb) + 60 and resources.disk_size > needed_gb
    assert "provision.sh -c vm --skip cuda" in task.setup
    run = task.run
    assert run.index("provision check -c vm") < run.index("torchrun")
    assert "--node_rank=$SKYPILOT_NODE_RANK" in run and "--nnodes=$SKYPILOT_NUM_NODES" in run and "-m p2ch11.training" in run
    assert "each download the data set from zenodo" in captured.err, "several nodes hitting Zenodo are warned about"


def test_single_node_with_bucket_and_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.yaml"
    code = main(["export", "skypilot", "-c", "vm", "--accelerators", "A100:8", "--cloud", "gcp", "--region", "us-central1", "--spot",
                 "--set", "data.sources=[gs://my-bucket/luna16/, zenodo]", "--subsets", "0-4", "-o", str(out)])
    assert code == 0
    err = capsys.readouterr().err
    assert "warning" not in err and "sky launch" in err
    task = parse(out.read_text(), tmp_path)
    (resources,) = list(task.resources)
    assert resources.accelerators == {"A100": 8} and resources.use_spot and str(resources.cloud).lower() == "gcp"
    assert resources.region == "us-central1"
    assert task.num_nodes == 1 and "python -m p2ch11.training" in task.run and "torchrun" not in task.run
    assert "--set data.subsets=0-4" in task.setup and "gs://my-bucket/luna16/" in task.setup
    fewer = data_needed_bytes(load_config("vm", ["data.subsets=0-4"], environ={"HOME": "/root"})) / 1e9
    assert resources.disk_size == math.ceil(fewer) + 60


def test_a_disk_smaller_than_the_plan_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "skypilot", "-c", "vm", "--disk-size", "100"]) == 3
    err = capsys.readouterr().err
    assert "a 100 GB disk per node is too small" in err and "hint: ask for at least" in err


def test_a_profile_file_travels_with_the_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: vm.yaml\ndata:\n  subsets: '0-1'\n")
    import shutil

    from provision.config import configs_dir

    shutil.copy(configs_dir() / "vm.yaml", tmp_path)
    shutil.copy(configs_dir() / "base.yaml", tmp_path)
    (tmp_path / "requirements").mkdir()
    shutil.copy(configs_dir() / "requirements" / "dlwpt.txt", tmp_path / "requirements")
    assert main(["export", "skypilot", "-c", str(mine), "--json"]) == 0
    task = json.loads(capsys.readouterr().out)
    assert task["file_mounts"] == {"~/.dlwpt-provision/mine.yaml": str(mine)}
    assert "-c '~/.dlwpt-provision/mine.yaml'" in task["setup"] or "-c ~/.dlwpt-provision/mine.yaml" in task["setup"]
    assert yaml.safe_load(yaml.safe_dump(task)) == task


def test_bad_accelerator_spec(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "skypilot", "-c", "vm", "--accelerators", "T4"]) == 2
    assert "NAME:COUNT" in capsys.readouterr().err
