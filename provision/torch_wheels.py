"""Which PyTorch wheel index fits this machine: from the GPUs' compute capability, the driver and Python.

The table is data (``configs/torch/wheels.yaml``): which torch releases each index carries, for which
compute capabilities and Pythons, and which driver it needs. The choice is the index that serves the
newest torch the requirement allows for every GPU here; when that index stops before the next torch
release (cu126 ends at 2.14), the torch requirement gets that bound too. Pure functions of their inputs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .schema import build, set_by_tool

INDEX_BASE = "https://download.pytorch.org/whl/"
ARCHITECTURES = ((5.0, "Maxwell"), (6.0, "Pascal"), (7.0, "Volta"), (7.5, "Turing"), (8.0, "Ampere"), (8.9, "Ada"), (9.0, "Hopper"),
                 (10.0, "Blackwell"))


def _parse_range(value: Any, path: str) -> tuple[float, float]:
    low, sep, high = str(value).partition("-")
    try:
        return float(low), float(high if sep else low)
    except ValueError:
        raise ValueError(f"{value!r} is not a compute capability range like '7.5-12.1'") from None


def _parse_spec(value: Any, path: str) -> str:
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        return str(SpecifierSet(str(value)))
    except InvalidSpecifier:
        raise ValueError(f"{value!r} is not a version range like '>=2.9,<2.15'") from None


@dataclass(frozen=True)
class Release:
    """Torch releases (``torch``) an index carries for GPUs of ``compute`` capability, on ``python``."""

    torch: str = field(metadata={"parse": _parse_spec})
    compute: tuple[float, float] = field(metadata={"parse": _parse_range})
    python: str = field(default="", metadata={"parse": _parse_spec})
    unsupported: bool = False  # built, but without PyTorch's support: chosen only when no supported build fits


@dataclass(frozen=True)
class WheelIndex:
    tag: str
    cuda: str
    min_driver: int
    releases: tuple[Release, ...]
    note: str = ""


@dataclass(frozen=True)
class WheelTable:
    latest: str
    indexes: tuple[WheelIndex, ...]
    preference: tuple[str, ...] = ()
    path: str = field(default="", metadata={"parse": set_by_tool})


@dataclass(frozen=True)
class Gpu:
    name: str
    compute: float | None  # None: nvidia-smi too old to say


@dataclass(frozen=True)
class Choice:
    """The index (None: PyPI's default), the bound to add to the torch requirement, and why, in one line."""

    url: str | None
    tag: str
    torch_bound: str
    reason: str


def load_table(configs_dir: Path) -> WheelTable:
    from .yamlfile import read_yaml

    path = configs_dir / "torch" / "wheels.yaml"
    table = build(WheelTable, read_yaml(path), path="", origin=lambda p: str(path))
    unknown = set(table.preference) - {i.tag for i in table.indexes}
    if unknown:
        raise ConfigError(f"{path}: preference names unknown indexes: {', '.join(sorted(unknown))}", file=str(path))
    return dataclasses.replace(table, path=str(path))


def releases_up_to(latest: str) -> list[str]:
    """2.3, 2.4, ... latest, and the release after it (to tell whether an index goes on)."""
    major, minor = (int(x) for x in latest.split(".")[:2])
    return [f"{major}.{m}" for m in range(3, minor + 2)]


def architecture(compute: float) -> str:
    return [name for low, name in ARCHITECTURES if compute >= low][-1] if compute >= ARCHITECTURES[0][0] else "pre-Maxwell"


def usable(index: WheelIndex, version: str, gpus: list[Gpu], python: str, unsupported: bool = False) -> bool:
    """Does ``index`` carry torch ``version`` with kernels for every GPU, for this Python (builds without support
    only when ``unsupported``)?"""
    from packaging.specifiers import SpecifierSet

    for release in index.releases:
        if release.unsupported and not unsupported:
            continue
        if not SpecifierSet(release.torch).contains(version):
            continue
        if release.python and not SpecifierSet(release.python).contains(python):
            continue
        low, high = release.compute
        if all(g.compute is None or low <= g.compute <= high for g in gpus):
            return True
    return False


def _best(table: WheelTable, gpus: list[Gpu], driver: int, python: str, torch_spec: str) -> tuple[WheelIndex, str] | None:
    """The index serving the newest wanted torch for ``gpus`` on this driver and Python, and that version; builds
    without support only when no supported one fits."""
    return _best_of(table, gpus, driver, python, torch_spec, False) or _best_of(table, gpus, driver, python, torch_spec, True)


def _best_of(table: WheelTable, gpus: list[Gpu], driver: int, python: str, torch_spec: str, unsupported: bool) -> tuple[WheelIndex, str] | None:
    from packaging.specifiers import SpecifierSet

    wanted = SpecifierSet(torch_spec)
    known = releases_up_to(table.latest)[:-1]
    order = {tag: i for i, tag in enumerate(table.preference)}
    best: tuple[WheelIndex, str] | None = None
    for index in sorted(table.indexes, key=lambda i: order.get(i.tag, len(order))):
        if driver < index.min_driver:
            continue
        newest = [v for v in known if v in wanted and usable(index, v, gpus, python, unsupported)]
        if newest and (best is None or _key(newest[-1]) > _key(best[1])):
            best = (index, newest[-1])
    return best


def choose(table: WheelTable, gpus: list[Gpu], driver_major: int | None, driver_cuda: str | None, python: str, torch_spec: str) -> Choice:
    """The index for this machine; CPU when there is no NVIDIA driver or no build fits."""
    if driver_major is None and driver_cuda is None:
        return Choice(INDEX_BASE + "cpu", "cpu", "", "no NVIDIA driver found (nvidia-smi): CPU build")
    driver = driver_major if driver_major is not None else _driver_for_cuda(driver_cuda)
    who = _describe(gpus, driver_major, driver_cuda)
    best = _best(table, gpus, driver, python, torch_spec)
    if best is None:
        return Choice(INDEX_BASE + "cpu", "cpu", "", f"{who}: no PyTorch CUDA build fits ({torch_spec or 'any torch'}, Python {python}): "
                                                     "CPU build (update the driver, or relax the torch requirement)")
    index, version = best
    versions = releases_up_to(table.latest)
    goes_on = usable(index, versions[-1], gpus, python, True)  # does this index carry the release after the newest known?
    bound = "" if goes_on and version == versions[-2] else f"<{versions[versions.index(version) + 1]}"
    any_gpu = _best(table, [], driver, python, torch_spec)
    any_driver = _best(table, gpus, 10**6, python, torch_spec)
    if any_driver is not None and any_driver[0].tag != index.tag:
        why = f"torch up to {version}; {any_driver[0].tag} needs a driver >= {any_driver[0].min_driver}"
    elif any_gpu is not None and any_gpu[0].tag != index.tag and gpus:
        oldest = min((g.compute for g in gpus if g.compute is not None), default=0.0)
        why = f"the newest build with {architecture(oldest)} kernels (torch up to {version})"
    else:
        why = index.note or f"torch up to {version}"
    if not usable(index, version, gpus, python):
        why += " (a build PyTorch no longer supports: the only one for this GPU, driver and torch requirement)"
    return Choice(INDEX_BASE + index.tag, index.tag, bound, f"{who}: {index.tag}, {why}")


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("."))


def _driver_for_cuda(cuda: str | None) -> int:
    """The oldest driver that reports this CUDA version (when nvidia-smi did not give the driver's own)."""
    major = int(str(cuda).split(".")[0]) if cuda and str(cuda).split(".")[0].isdigit() else 0
    return 580 if major >= 13 else 525 if major == 12 else 450 if major == 11 else 0


def _describe(gpus: list[Gpu], driver_major: int | None, driver_cuda: str | None) -> str:
    named = ", ".join(f"{g.name}, compute {g.compute:.1f}" if g.compute is not None else g.name for g in dict.fromkeys(gpus)) or "no GPU listed"
    driver = f"driver {driver_major}" if driver_major is not None else "a driver"
    return f"{named} ({driver}" + (f", CUDA {driver_cuda})" if driver_cuda else ")")


def gpus_from_smi(smi: dict[str, Any] | None) -> tuple[list[Gpu], int | None, str | None]:
    """(GPUs, driver major version, the driver's CUDA version) from read_nvidia_smi's answer."""
    if not smi or "error" in smi:
        return [], None, None
    gpus = [Gpu(g["name"], g.get("compute_capability")) for g in smi.get("gpus", [])]
    driver = smi.get("driver_version")
    major = int(driver.split(".")[0]) if isinstance(driver, str) and driver.split(".")[0].isdigit() else None
    return gpus, major, smi.get("cuda_version")
