"""GPU checks: run the probe in a child process, read nvidia-smi, judge against the profile."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import CudaConfig

PROBE_SCRIPT = Path(__file__).with_name("gpu_probe.py")


@dataclass(frozen=True)
class Finding:
    """One failed expectation and how to fix it."""

    problem: str
    fix: str
    fatal: bool


@dataclass(frozen=True)
class GpuReport:
    """What the probe and nvidia-smi found, and the judgement against the profile."""

    probe: dict[str, Any]
    nvidia_smi: dict[str, Any] | None
    findings: tuple[Finding, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not any(f.fatal for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        """The check's JSON: the probe's figures at the top, the whole probe and the findings below."""
        probe = self.probe
        return {
            "ok": self.ok,
            "torch": probe.get("torch"),
            "cuda_build": probe.get("cuda_build"),
            "cuda_available": probe.get("cuda_available", False),
            "gpu": bool(probe.get("devices")),
            "devices": probe.get("devices", []),
            "smoke": probe.get("smoke"),
            "nvidia_smi": self.nvidia_smi,
            "probe": probe,
            "findings": [{"problem": f.problem, "fix": f.fix, "fatal": f.fatal} for f in self.findings],
        }


def read_nvidia_smi(timeout_s: float = 20.0) -> dict[str, Any] | None:
    """Driver version, CUDA version the driver supports, and GPUs (with compute capability), or None without nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        header = subprocess.run([exe], capture_output=True, text=True, timeout=timeout_s).stdout
        query = [exe, "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader,nounits"]
        rows = subprocess.run(query, capture_output=True, text=True, timeout=timeout_s)
        if rows.returncode != 0:  # drivers before 510 do not know compute_cap
            query[1] = "--query-gpu=name,driver_version,memory.total"
            rows = subprocess.run(query, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": str(exc)}
    return parse_nvidia_smi(header, rows.stdout)


def parse_nvidia_smi(header: str, rows: str) -> dict[str, Any]:
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", header)
    gpus = []
    driver = None
    for line in rows.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3:
            driver = parts[1]
            gpu: dict[str, Any] = {"name": parts[0], "memory_mib": int(float(parts[2])) if parts[2].replace(".", "").isdigit() else None}
            if len(parts) >= 4 and re.fullmatch(r"\d+\.\d+", parts[3]):
                gpu["compute_capability"] = float(parts[3])
            gpus.append(gpu)
    return {"driver_version": driver, "cuda_version": cuda.group(1) if cuda else None, "gpus": gpus}


def run_probe(python: str | None = None, timeout_s: float = 180.0, smoke_size: int = 4096) -> dict[str, Any]:
    """Run the probe in a child so a broken CUDA setup cannot crash or hang this process."""
    python = python or sys.executable
    try:
        proc = subprocess.run([python, str(PROBE_SCRIPT), str(smoke_size)], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"probe_error": f"the GPU probe did not finish within {timeout_s:.0f} s (a hung driver?)"}
    except OSError as exc:
        return {"probe_error": f"could not start {python}: {exc.strerror}"}
    last = proc.stdout.strip().splitlines()[-1:] or [""]
    try:
        result = json.loads(last[0])
    except json.JSONDecodeError:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        return {"probe_error": f"the GPU probe crashed (exit {proc.returncode}): {tail or 'no output'}"}
    if not isinstance(result, dict):
        return {"probe_error": "the GPU probe printed something unexpected"}
    return result


def judge(probe: dict[str, Any], smi: dict[str, Any] | None, cuda: CudaConfig, *, colab: bool, kaggle: bool = False) -> tuple[Finding, ...]:
    """Each failed expectation of the profile, with its fix; fatal ones only when a GPU is required."""
    required = cuda.required
    findings: list[Finding] = []
    if "probe_error" in probe:
        findings.append(Finding(probe["probe_error"], "run `nvidia-smi` to see whether the driver answers; reboot the VM if it hangs", required))
        return tuple(findings)
    if probe.get("torch") is None:
        findings.append(Finding(f"torch is not installed ({probe.get('torch_error', 'import failed')})", "run `provision install` first", required))
        return tuple(findings)
    devices = probe.get("devices") or []
    if not devices:
        if colab:
            fix = "in Colab choose Runtime > Change runtime type > GPU (T4 is free), then run this again"
        elif smi and smi.get("gpus"):
            fix = _driver_fix(probe, smi)
        elif probe.get("cuda_build") is None:
            fix = "this torch is a CPU build; run `provision install` with requirements.torch_index: auto on a GPU machine"
        else:
            fix = "no NVIDIA GPU or driver was found; use a GPU machine, or install the NVIDIA driver (nvidia-smi must work)"
        findings.append(Finding("no GPU is visible to torch", fix, required))
        return tuple(findings)
    if cuda.expected_devices and len(devices) < cuda.expected_devices:
        names = ", ".join(d["name"] for d in devices)
        where = "in Settings choose Accelerator: GPU T4 x2" if kaggle else "check the machine type"
        findings.append(Finding(f"{len(devices)} GPU(s) visible ({names}), the profile expects {cuda.expected_devices}",
                                f"{where}; the book's training uses every GPU it sees (DataParallel)", False))
    kernels = _kernel_finding(probe, smi, required)
    if kernels is not None:
        return (*findings, kernels)
    if probe.get("smoke_error"):
        findings.append(Finding(f"the GPU failed a matrix product: {probe['smoke_error']}",
                                "run `nvidia-smi` to see whether the GPU is healthy; try another machine if it is not", required))
    smoke = probe.get("smoke") or {}
    if smoke and not smoke.get("matches_cpu", False):
        findings.append(Finding(f"the GPU's matrix product differs from the CPU's (relative error {smoke.get('relative_error')})", "the GPU or driver is faulty; try another machine", required))
    best = max(devices, key=lambda d: d["total_memory_bytes"])
    if cuda.min_memory_gb and best["total_memory_bytes"] < cuda.min_memory_gb * 1e9 * 0.93:
        findings.append(Finding(
            f"the largest GPU ({best['name']}) has {best['total_memory_bytes'] / 1e9:.1f} GB, the profile asks for {cuda.min_memory_gb:g} GB",
            "choose a GPU with more memory, or lower cuda.min_memory_gb and the book's batch size", required,
        ))
    if cuda.min_compute_capability:
        want = tuple(int(x) for x in cuda.min_compute_capability.split("."))
        have = tuple(int(x) for x in best["compute_capability"].split("."))
        if have < want:
            findings.append(Finding(
                f"{best['name']} has compute capability {best['compute_capability']}, the profile asks for {cuda.min_compute_capability}",
                "choose a newer GPU type", required,
            ))
    return tuple(findings)


def _fitting_index(smi: dict[str, Any] | None, probe: dict[str, Any]) -> Any:
    """The wheel index that fits this machine's GPUs and driver (configs/torch/wheels.yaml)."""
    from .config import configs_dir
    from .torch_wheels import choose, gpus_from_smi, load_table

    gpus, driver, cuda = gpus_from_smi(smi)
    if not gpus:
        from .torch_wheels import Gpu

        gpus = [Gpu(d["name"], float(d["compute_capability"])) for d in probe.get("devices", [])]
    python = ".".join(str(probe.get("python", "3.12")).split(".")[:2])
    return choose(load_table(configs_dir()), gpus, driver, cuda or probe.get("cuda_build"), python, ">=2.3")


def has_kernels(arch_list: list[str], compute_capability: str) -> bool:
    """Can a torch built for ``arch_list`` (sm_75, compute_90, ...) run on a device of this capability?
    A cubin for sm_XY runs on the same major with a minor at least Y; PTX (compute_XY) on any newer device."""
    major, minor = (int(x) for x in compute_capability.split(".")[:2])
    for arch in arch_list:
        kind, _, number = arch.partition("_")
        digits = re.match(r"\d+", number)
        if not digits:
            continue
        arch_major, arch_minor = divmod(int(digits.group()), 10)
        if kind == "sm" and arch_major == major and arch_minor <= minor:
            return True
        if kind == "compute" and (arch_major, arch_minor) <= (major, minor):
            return True
    return False


def _kernel_finding(probe: dict[str, Any], smi: dict[str, Any] | None, required: bool) -> Finding | None:
    """torch runs, sees the GPU, but has no kernels for it (a Pascal card with a cu128 build, say)."""
    arch = probe.get("arch_list") or []
    devices = probe.get("devices") or []
    lacking = [d for d in devices if arch and not has_kernels(arch, d["compute_capability"])]
    failed = "no kernel image is available" in str(probe.get("smoke_error", ""))
    if not lacking and not failed:
        return None
    device = (lacking or devices)[0]
    choice = _fitting_index(smi, probe)
    built = f" (built for {', '.join(arch)})" if arch else ""
    return Finding(
        f"torch {probe.get('torch')}{built} has no kernels for {device['name']} (compute capability {device['compute_capability']}): "
        "CUDA reports 'no kernel image is available for execution on the device'",
        f"reinstall torch from {choice.url} ({choice.reason}): set requirements.torch_index: auto and run `provision install`, "
        f"or by hand: pip install --force-reinstall 'torch{choice.torch_bound}' --index-url {choice.url}",
        required,
    )


def _driver_fix(probe: dict[str, Any], smi: dict[str, Any]) -> str:
    driver_cuda = smi.get("cuda_version")
    build = probe.get("cuda_build")
    if driver_cuda and build and tuple(map(int, driver_cuda.split(".")[:2])) < tuple(map(int, build.split(".")[:2])):
        choice = _fitting_index(smi, probe)
        return (f"the driver supports CUDA {driver_cuda} but torch was built for CUDA {build}: "
                f"reinstall torch from {choice.url} ({choice.reason}; requirements.torch_index: auto and `provision install`) or update the driver")
    return "nvidia-smi sees a GPU but torch does not: reinstall torch with `provision install` (requirements.torch_index: auto)"


def check(cuda: CudaConfig, *, colab: bool, kaggle: bool = False, python: str | None = None) -> GpuReport:
    """Probe, read nvidia-smi, judge."""
    probe = run_probe(python, cuda.probe_timeout_s)
    smi = read_nvidia_smi()
    if probe.get("torch") is None and smi and smi.get("gpus") and "probe_error" not in probe:
        probe = {**probe, "devices_from_nvidia_smi": smi["gpus"]}
    return GpuReport(probe=probe, nvidia_smi=smi, findings=judge(probe, smi, cuda, colab=colab, kaggle=kaggle))
