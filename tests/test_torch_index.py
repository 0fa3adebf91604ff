"""The PyTorch wheel index for the GPUs, driver and Python, from configs/torch/wheels.yaml.

No GPU is here: FAKE `nvidia-smi` programs on PATH answer as the real one does for each machine.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from provision.cli import main
from provision.config import configs_dir
from provision.gpu import has_kernels
from provision.torch_wheels import Gpu, choose, load_table
from tests.test_gpu import fake_venv

MACHINES = {
    # name: (GPU, driver, CUDA the driver reports, compute capability)
    "gtx1070-580": ("NVIDIA GeForce GTX 1070", "580.95.05", "13.0", "6.1"),
    "t4-570": ("Tesla T4", "570.172.08", "12.8", "7.5"),
    "t4-580": ("Tesla T4", "580.95.05", "13.0", "7.5"),
    "h100-580": ("NVIDIA H100 80GB HBM3", "580.95.05", "13.0", "9.0"),
    "t4-550": ("Tesla T4", "550.54.15", "12.4", "7.5"),
}


def fake_nvidia_smi(folder: Path, gpu: str, driver: str, cuda: str, compute: str, knows_compute_cap: bool = True) -> Path:
    """A stand-in `nvidia-smi`: the banner without arguments, CSV rows for --query-gpu (drivers before 510 refuse compute_cap)."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    refuse = "" if knows_compute_cap else 'case "$1" in *compute_cap*) echo \'Field "compute_cap" is not a valid field to query.\'; exit 2;; esac\n'
    script.write_text(
        "#!/bin/sh\n" + refuse +
        'case "$1" in\n'
        f'  --query-gpu=name,driver_version,memory.total,compute_cap) echo "{gpu}, {driver}, 15360, {compute}";;\n'
        f'  --query-gpu=name,driver_version,memory.total) echo "{gpu}, {driver}, 15360";;\n'
        f'  *) echo "| NVIDIA-SMI {driver}    Driver Version: {driver}    CUDA Version: {cuda}     |";;\n'
        "esac\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return folder


def install_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    """`provision install --dry-run` for an empty venv (torch not installed), as JSON."""
    code = main(["install", "--dry-run", "--json", "-c", "vm", "--set", f"requirements.venv={tmp_path / 'empty-venv'}"],
                environ={"HOME": str(tmp_path)})
    assert code == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(("machine", "tag", "bound", "why"), [
    ("gtx1070-580", "cu126", "<2.15", "NVIDIA GeForce GTX 1070, compute 6.1 (driver 580, CUDA 13.0): cu126, the newest build with Pascal kernels"),
    ("t4-570", "cu126", "<2.15", "Tesla T4, compute 7.5 (driver 570, CUDA 12.8): cu126, torch up to 2.14; cu130 needs a driver >= 580"),
    ("t4-580", "cu130", "", "Tesla T4, compute 7.5 (driver 580, CUDA 13.0): cu130, the stable build"),
    ("h100-580", "cu130", "", "NVIDIA H100 80GB HBM3, compute 9.0 (driver 580, CUDA 13.0): cu130, the stable build"),
    ("t4-550", "cu126", "<2.15", "Tesla T4, compute 7.5 (driver 550, CUDA 12.4): cu126, torch up to 2.14; cu130 needs a driver >= 580"),
])
def test_index_from_the_gpu_driver_and_python(machine: str, tag: str, bound: str, why: str, tmp_path: Path, monkeypatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", f"{fake_nvidia_smi(tmp_path / 'bin', *MACHINES[machine])}{os.pathsep}{os.environ['PATH']}")
    plan = install_plan(tmp_path, capsys)
    assert plan["torch_index"] == f"https://download.pytorch.org/whl/{tag}"
    assert plan["torch_index_reason"].startswith(why), plan["torch_index_reason"]
    torch_command = next(c for c in plan["commands"] if any(p.startswith("torch") for p in c["packages"]))
    assert torch_command["argv"][-3:-1] == ["--index-url", f"https://download.pytorch.org/whl/{tag}"]
    expected = "torch<2.15,>=2.3" if bound else "torch>=2.3"
    assert expected in torch_command["packages"], torch_command["packages"]
    assert main(["plan", "-c", "vm", "--set", f"requirements.venv={tmp_path / 'empty-venv'}"], environ={"HOME": str(tmp_path)}) in (0, 3)
    assert f"torch from https://download.pytorch.org/whl/{tag}  ({why}" in capsys.readouterr().out


def test_no_driver_means_the_cpu_build(tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    plan = install_plan(tmp_path, capsys)
    assert plan["torch_index"] == "https://download.pytorch.org/whl/cpu" and "no NVIDIA driver" in plan["torch_index_reason"]


def test_a_driver_without_compute_cap_still_gets_an_index(tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture[str]) -> None:
    folder = fake_nvidia_smi(tmp_path / "bin", "Tesla T4", "550.54.15", "12.4", "7.5", knows_compute_cap=False)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    plan = install_plan(tmp_path, capsys)
    assert plan["torch_index"].endswith("/cu126") and plan["torch_index_reason"].startswith("Tesla T4 (driver 550")


def test_the_table_is_data_and_a_new_release_is_a_data_change(tmp_path: Path) -> None:
    table = load_table(configs_dir())
    pascal = [Gpu("GTX 1070", 6.1)]
    assert choose(table, pascal, 580, "13.0", "3.13", ">=2.3").tag == "cu126"
    assert choose(table, pascal, 580, "13.0", "3.13", ">=2.15").tag == "cpu", "torch 2.15 has no Pascal wheels: say so, do not guess"
    assert choose(table, [Gpu("B200", 10.0)], 580, "13.0", "3.14", ">=2.3").tag == "cu130"
    old_python = choose(table, [Gpu("T4", 7.5)], 550, "12.4", "3.13", ">=2.3,<2.7")
    assert old_python.tag == "cu126", "cu124 has no wheels for Python 3.13: not a dead index"
    assert choose(table, [Gpu("K80", 3.7)], 470, "11.4", "3.12", ">=2.3").tag == "cpu"


# One row per index row of configs/torch/wheels.yaml: a real machine (GPU, driver, Python, the book's torch requirement
# or a reader's own pin) and the index it must get. Sources for each fact are in the table's comments.
NAMED_MACHINES = [
    # cu118: a GTX 1070 on an old Ubuntu install (driver 470 = CUDA 11.4) runs cu118, not the CPU build
    ("GTX 1070, driver 470, Python 3.12", [Gpu("NVIDIA GeForce GTX 1070", 6.1)], 470, "11.4", "3.12", ">=2.3", "cu118", "<2.8"),
    ("GTX 1080 Ti, driver 470, Python 3.13", [Gpu("NVIDIA GeForce GTX 1080 Ti", 6.1)], 470, "11.4", "3.13", ">=2.3", "cu118", "<2.8"),
    # cu128 2.7 has no Pascal/Volta kernels (sm_75..sm_120): a P100 or V100 with torch<2.8 gets cu126
    ("P100, driver 535, Python 3.12, torch<2.8", [Gpu("Tesla P100-PCIE-16GB", 6.0)], 535, "12.2", "3.12", ">=2.3,<2.8", "cu126", "<2.8"),
    ("V100, driver 535, Python 3.11, torch<2.8", [Gpu("Tesla V100-SXM2-16GB", 7.0)], 535, "12.2", "3.11", ">=2.3,<2.8", "cu126", "<2.8"),
    # cu128 2.8-2.10 has Volta again: a V100 pinned to 2.10 gets it (cu128 is preferred where both serve)
    ("V100, driver 570, Python 3.12, torch 2.10", [Gpu("Tesla V100-SXM2-16GB", 7.0)], 570, "12.8", "3.12", "==2.10.*", "cu128", "<2.11"),
    # cu128 2.11 dropped Volta again: a V100 asking for 2.11 gets cu126
    ("V100, driver 570, Python 3.12, torch 2.11", [Gpu("Tesla V100-SXM2-16GB", 7.0)], 570, "12.8", "3.12", "==2.11.*", "cu126", "<2.12"),
    # cu128 is the newest supported build for Blackwell on a driver before 580 (cu130/cu132 need 580)
    ("RTX 5090, driver 570, Python 3.12", [Gpu("NVIDIA GeForce RTX 5090", 12.0)], 570, "12.8", "3.12", ">=2.3", "cu128", "<2.12"),
    # cu129's unsupported builds up to 2.13: only when nothing supported fits (Blackwell, driver 570, torch>=2.12)
    ("RTX 5090, driver 570, Python 3.12, torch>=2.12", [Gpu("NVIDIA GeForce RTX 5090", 12.0)], 570, "12.8", "3.12", ">=2.12", "cu129", "<2.14"),
    # cu129 2.8 has Python 3.13 wheels
    ("A100, driver 550, Python 3.13, torch 2.8", [Gpu("NVIDIA A100-SXM4-40GB", 8.0)], 550, "12.4", "3.13", "==2.8.*", "cu128", "<2.9"),
    # cu124: Python 3.13 wheels for 2.5 and 2.6, not 2.4
    ("T4, driver 550, Python 3.13, torch<2.6", [Gpu("Tesla T4", 7.5)], 550, "12.4", "3.13", ">=2.3,<2.6", "cu124", "<2.6"),
    ("T4, driver 550, Python 3.13, torch<2.5", [Gpu("Tesla T4", 7.5)], 550, "12.4", "3.13", ">=2.3,<2.5", "cpu", ""),
    ("T4, driver 550, Python 3.12, torch<2.5", [Gpu("Tesla T4", 7.5)], 550, "12.4", "3.12", ">=2.3,<2.5", "cu124", "<2.5"),
    # cu126: the legacy build; cu130 the stable one; cu132 the newest
    ("GTX 1070, driver 580, Python 3.13", [Gpu("NVIDIA GeForce GTX 1070", 6.1)], 580, "13.0", "3.13", ">=2.3", "cu126", "<2.15"),
    ("T4, driver 580, Python 3.12", [Gpu("Tesla T4", 7.5)], 580, "13.0", "3.12", ">=2.3", "cu130", ""),
    ("H100, driver 580, Python 3.14, torch 2.12 exactly", [Gpu("NVIDIA H100 80GB HBM3", 9.0)], 580, "13.0", "3.14", "==2.12.*", "cu130", "<2.13"),
]


@pytest.mark.parametrize(("machine", "gpus", "driver", "cuda", "python", "spec", "tag", "bound"), NAMED_MACHINES, ids=[m[0] for m in NAMED_MACHINES])
def test_each_table_row_serves_its_named_machine(machine: str, gpus: list, driver: int, cuda: str, python: str, spec: str, tag: str,
                                                 bound: str) -> None:
    choice = choose(load_table(configs_dir()), gpus, driver, cuda, python, spec)
    assert (choice.tag, choice.torch_bound) == (tag, bound), f"{machine}: {choice.reason}"
    if tag == "cu129":
        assert "no longer supports" in choice.reason, "an unsupported build is named as such"


def test_every_index_of_the_table_is_some_named_machines_choice() -> None:
    table = load_table(configs_dir())
    chosen = {m[6] for m in NAMED_MACHINES}
    assert {i.tag for i in table.indexes} - {"cu132"} <= chosen, "each index row has a machine that proves it"


def test_has_kernels_follows_cuda_binary_compatibility() -> None:
    built = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]
    assert not has_kernels(built, "6.1") and not has_kernels(built, "7.0")
    assert has_kernels(built, "7.5") and has_kernels(built, "8.9") and has_kernels(built, "12.1")
    assert has_kernels(["sm_50", "compute_50"], "6.1"), "PTX is compiled for newer devices"


def test_check_says_torch_has_no_kernels_for_the_gpu_and_which_index_does(tmp_path: Path, monkeypatch,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A STAND-IN interpreter plays torch 2.11+cu128 on a GTX 1070 (no such GPU here); the judgement and fix are real."""
    probe = {"python": "3.12.3", "torch": "2.11.0+cu128", "cuda_build": "12.8", "cuda_available": True, "device_count": 1,
             "devices": [{"index": 0, "name": "NVIDIA GeForce GTX 1070", "compute_capability": "6.1",
                          "total_memory_bytes": 8_500_000_000, "free_memory_bytes": 8_000_000_000}],
             "arch_list": ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"],
             "smoke_error": "RuntimeError: CUDA error: no kernel image is available for execution on the device"}
    venv = fake_venv(tmp_path, f"echo '{json.dumps(probe)}'\n")
    monkeypatch.setenv("PATH", f"{fake_nvidia_smi(tmp_path / 'bin', *MACHINES['gtx1070-580'])}{os.pathsep}{os.environ['PATH']}")
    code = main(["check", "--json", "-c", "vm", "--set", f"requirements.venv={venv}"], environ={"HOME": str(tmp_path)})
    report = json.loads(capsys.readouterr().out)
    assert code == 3
    finding = report["findings"][0]
    assert "has no kernels for NVIDIA GeForce GTX 1070 (compute capability 6.1)" in finding["problem"]
    assert "no kernel image is available" in finding["problem"] and "probe crashed" not in finding["problem"]
    assert "https://download.pytorch.org/whl/cu126" in finding["fix"] and "Pascal" in finding["fix"] and "torch<2.15" in finding["fix"]


def test_the_table_knows_torch_2_15_on_cu130_and_cu132_only() -> None:
    table = load_table(configs_dir())
    assert table.latest == "2.15"
    t4 = [Gpu("Tesla T4", 7.5)]
    newest = choose(table, t4, 580, "13.0", "3.13", "==2.15.*")
    assert (newest.tag, newest.torch_bound) == ("cu130", ""), newest.reason
    assert choose(table, [Gpu("NVIDIA H100 80GB HBM3", 9.0)], 580, "13.0", "3.12", ">=2.15").tag == "cu130"
    assert choose(table, t4, 570, "12.8", "3.13", "==2.15.*").tag == "cpu", "no CUDA 12 build of 2.15: a driver before 580 gets none"
    pascal = choose(table, [Gpu("NVIDIA GeForce GTX 1070", 6.1)], 580, "13.0", "3.13", ">=2.3")
    assert (pascal.tag, pascal.torch_bound) == ("cu126", "<2.15"), "a Pascal card keeps torch <= 2.14 on cu126"
    volta = choose(table, [Gpu("Tesla V100-SXM2-16GB", 7.0)], 580, "13.0", "3.12", ">=2.3")
    assert (volta.tag, volta.torch_bound) == ("cu126", "<2.15")
