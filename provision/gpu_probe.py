"""Run by ``provision check`` in a child process (``python gpu_probe.py``): prints one JSON object.

Kept free of imports from the package so any interpreter (a venv's too) can run it by path.
"""

import json
import sys
import time
from typing import Any


def probe(smoke_size: int = 4096) -> dict:
    out: dict = {"python": sys.version.split()[0], "torch": None}
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - any import failure is a finding to report
        out["torch_error"] = f"{type(exc).__name__}: {exc}"
        return out
    out["torch"] = torch.__version__
    out["cuda_build"] = torch.version.cuda
    out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    out["cuda_available"] = bool(torch.cuda.is_available())
    out["device_count"] = torch.cuda.device_count() if out["cuda_available"] else 0
    devices = []
    for i in range(out["device_count"]):
        props = torch.cuda.get_device_properties(i)
        free, total = torch.cuda.mem_get_info(i)
        devices.append({
            "index": i,
            "name": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "total_memory_bytes": int(total),
            "free_memory_bytes": int(free),
        })
    out["devices"] = devices
    out["arch_list"] = list(torch.cuda.get_arch_list()) if out["cuda_available"] else []
    if out["device_count"] > 1:
        import torch.distributed as dist

        out["nccl_available"] = bool(dist.is_available() and dist.is_nccl_available())
    if devices:
        try:
            out["smoke"] = smoke_test(torch, smoke_size)
        except RuntimeError as exc:  # e.g. "no kernel image is available for execution on the device"
            out["smoke_error"] = f"{type(exc).__name__}: {str(exc).strip()[:500]}"
    return out


def smoke_test(torch: Any, n: int) -> dict:
    """A matrix product on the GPU checked against the CPU, plus TFLOP/s and host-to-device GB/s."""
    torch.backends.cuda.matmul.allow_tf32 = False
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen)
    b = torch.randn(n, n, generator=gen)
    expected = a @ b
    dev = torch.device("cuda:0")
    got = (a.to(dev) @ b.to(dev)).cpu()
    max_error = float((got - expected).abs().max())
    scale = float(expected.abs().max())
    result = {"size": n, "max_abs_error": max_error, "relative_error": max_error / scale, "matches_cpu": max_error / scale < 1e-3}
    ga, gb = a.to(dev), b.to(dev)
    for _ in range(3):
        ga @ gb
    torch.cuda.synchronize()
    reps = 20
    start = time.perf_counter()
    for _ in range(reps):
        ga @ gb
    torch.cuda.synchronize()
    result["fp32_tflops"] = 2 * n**3 * reps / (time.perf_counter() - start) / 1e12
    ha, hb = ga.half(), gb.half()
    ha @ hb
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        ha @ hb
    torch.cuda.synchronize()
    result["fp16_tflops"] = 2 * n**3 * reps / (time.perf_counter() - start) / 1e12
    host = torch.empty(256 * 1024 * 1024, dtype=torch.uint8).pin_memory()
    host.to(dev)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(5):
        host.to(dev, non_blocking=True)
    torch.cuda.synchronize()
    result["h2d_gb_per_s"] = 5 * host.numel() / (time.perf_counter() - start) / 1e9
    return result


if __name__ == "__main__":
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 4096
    print(json.dumps(probe(size)))
