"""`provision check`: the real probe in a child process (CPU torch here), judged against profiles."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from provision.cli import main
from provision.config import CudaConfig
from provision.gpu import judge, parse_nvidia_smi


def fake_venv(tmp_path: Path, script: str) -> Path:
    """A folder shaped like a venv whose python is the given shell script (a stand-in interpreter)."""
    venv = tmp_path / "fake-venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text("#!/bin/sh\n" + script)
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    return venv


def check_json(capsys: pytest.CaptureFixture[str], *args: str, environ: dict[str, str] | None = None) -> tuple[int, dict]:
    code = main(["check", "--json", *args], environ=environ if environ is not None else {"HOME": os.environ.get("HOME", "/root")})
    return code, json.loads(capsys.readouterr().out)


def test_cpu_torch_not_required(capsys: pytest.CaptureFixture[str]) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; see the gpu-marked tests")
    code, report = check_json(capsys, "-c", "local")
    assert code == 0
    assert report["torch"] == torch.__version__ and report["gpu"] is False and report["ok"] is True
    assert report["findings"] and report["findings"][0]["fatal"] is False
    assert "no GPU" in report["findings"][0]["problem"]


def test_cpu_torch_required_exits_3_with_hints(capsys: pytest.CaptureFixture[str]) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, report = check_json(capsys, "-c", "vm")
    assert code == 3 and report["ok"] is False
    assert report["findings"][0]["fatal"] is True
    code, report = check_json(capsys, "-c", "colab", environ={"PROVISION_ENVIRONMENT": "colab"})
    assert code == 3
    assert "Runtime > Change runtime type > GPU" in report["findings"][0]["fix"]
    assert main(["check", "-c", "vm"]) == 3
    text = capsys.readouterr().out
    assert "problem" in text and "fix:" in text and "NOT ok" in text


def test_hanging_probe_is_reported_not_propagated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    venv = fake_venv(tmp_path, "sleep 30\n")
    code, report = check_json(capsys, "-c", "vm", "--set", f"requirements.venv={venv}", "--set", "cuda.probe_timeout_s=1")
    assert code == 3
    assert "did not finish within 1 s" in report["findings"][0]["problem"]


def test_crashing_probe_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    venv = fake_venv(tmp_path, "echo 'Segmentation fault (core dumped)' >&2\nexit 139\n")
    code, report = check_json(capsys, "-c", "local", "--set", f"requirements.venv={venv}")
    assert code == 0, "a GPU is optional in the local profile"
    assert "crashed (exit 139)" in report["findings"][0]["problem"] and "Segmentation fault" in report["findings"][0]["problem"]


def test_missing_torch_says_install_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    venv = fake_venv(tmp_path, f'exec {sys.executable} -I -S "$@"\n')  # -S: no site-packages, so no torch
    code, report = check_json(capsys, "-c", "vm", "--set", f"requirements.venv={venv}")
    assert code == 3
    assert "torch is not installed" in report["findings"][0]["problem"]
    assert "provision install" in report["findings"][0]["fix"]


def probe_with_gpu(memory_gb: float, cc: str = "7.5", matches: bool = True) -> dict:
    return {"torch": "2.11.0+cu128", "cuda_build": "12.8", "cuda_available": True, "device_count": 1,
            "devices": [{"index": 0, "name": "Tesla T4", "compute_capability": cc, "total_memory_bytes": int(memory_gb * 1e9), "free_memory_bytes": int(memory_gb * 1e9)}],
            "smoke": {"matches_cpu": matches, "relative_error": 0.0 if matches else 0.5}}


def test_judgement_of_memory_capability_and_smoke_test() -> None:
    need = CudaConfig(required=True, min_memory_gb=8, min_compute_capability="8.0")
    findings = judge(probe_with_gpu(15.8), None, need, colab=True)
    assert [f.problem for f in findings] == ["Tesla T4 has compute capability 7.5, the profile asks for 8.0"]
    findings = judge(probe_with_gpu(4.0, cc="8.6"), None, need, colab=False)
    assert "the profile asks for 8 GB" in findings[0].problem and findings[0].fatal
    assert "differs from the CPU" in judge(probe_with_gpu(16, cc="9.0", matches=False), None, need, colab=False)[0].problem
    assert judge(probe_with_gpu(16, cc="9.0"), None, need, colab=False) == ()


def test_driver_too_old_for_torch_build_names_the_right_build() -> None:
    probe = {"torch": "2.11.0+cu128", "cuda_build": "12.8", "cuda_available": False, "devices": []}
    smi = parse_nvidia_smi("| NVIDIA-SMI 550.54   Driver Version: 550.54   CUDA Version: 12.4 |", "Tesla T4, 550.54, 15360\n")
    assert smi == {"driver_version": "550.54", "cuda_version": "12.4", "gpus": [{"name": "Tesla T4", "memory_mib": 15360}]}
    finding = judge(probe, smi, CudaConfig(required=True), colab=False)[0]
    assert "supports CUDA 12.4 but torch was built for CUDA 12.8" in finding.fix
    assert "https://download.pytorch.org/whl/cu126" in finding.fix, "any CUDA 12 build runs on a 12.4 driver; cu124 is a dead index"


@pytest.mark.gpu
def test_real_gpu_probe_reports_devices_and_smoke_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = check_json(capsys, "-c", "vm")
    assert code == 0, report
    assert report["gpu"] is True and report["cuda_available"] is True
    device = report["devices"][0]
    assert device["total_memory_bytes"] > 8e9 and device["free_memory_bytes"] > 0
    assert device["compute_capability"].count(".") == 1
    smoke = report["smoke"]
    assert smoke["matches_cpu"] is True and smoke["relative_error"] < 1e-3
    assert smoke["fp32_tflops"] > 1 and smoke["fp16_tflops"] > smoke["fp32_tflops"]
    assert smoke["h2d_gb_per_s"] > 1
    assert report["nvidia_smi"]["driver_version"]


def test_several_devices_are_listed_and_too_few_is_a_note_on_kaggle() -> None:
    two = {**probe_with_gpu(15.8), "device_count": 2, "arch_list": ["sm_75", "sm_80", "sm_90"]}
    two["devices"] = [dict(two["devices"][0], index=i) for i in range(2)]
    kaggle = CudaConfig(required=True, min_memory_gb=8, expected_devices=2)
    assert judge(two, None, kaggle, colab=False, kaggle=True) == ()
    one = {**two, "device_count": 1, "devices": two["devices"][:1]}
    findings = judge(one, None, kaggle, colab=False, kaggle=True)
    assert len(findings) == 1 and not findings[0].fatal
    assert "1 GPU(s) visible (Tesla T4), the profile expects 2" in findings[0].problem and "GPU T4 x2" in findings[0].fix
    p100 = {**one, "devices": [dict(one["devices"][0], name="Tesla P100-PCIE-16GB", compute_capability="6.0")]}
    kernels = judge(p100, None, kaggle, colab=False, kaggle=True)[-1]
    assert kernels.fatal and "has no kernels for Tesla P100-PCIE-16GB" in kernels.problem and "cu126" in kernels.fix
