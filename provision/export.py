"""`provision export skypilot`: a SkyPilot task whose setup provisions every node with this tool.

SkyPilot launches the GPU clusters (any cloud); this module only writes its task YAML:
resources from the profile, a disk sized from the data plan, a setup that runs
`provision up --skip cuda` (setup does not see the GPUs), and a run that checks the GPU with
`provision check` before training (with torchrun across nodes when there are several).
"""

from __future__ import annotations

import dataclasses
import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .book.checkout import book_dir
from .config import ClusterConfig, Config, configs_dir
from .disk import GB
from .errors import ConfigError, DiskSpaceError
from .vm import data_needed_bytes


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (setup, run) as YAML literal blocks, the way people write them."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_representer)


@dataclass(frozen=True)
class ClusterOverrides:
    accelerators: str | None = None
    nodes: int | None = None
    cloud: str | None = None
    region: str | None = None
    spot: bool | None = None
    disk_gb: int | None = None


@dataclass(frozen=True)
class Export:
    task: dict[str, Any]
    yaml_text: str
    warnings: tuple[str, ...]
    disk_gb: int
    data_needed_gb: float


def _check_accelerators(accelerators: str) -> None:
    if ":" not in accelerators:
        raise ConfigError(f"cluster.accelerators {accelerators!r} must be NAME:COUNT, e.g. T4:1 or A100:8", key="cluster.accelerators")
    name, _, count = accelerators.partition(":")
    if not name or not count.isdigit() or int(count) < 1:
        raise ConfigError(f"cluster.accelerators {accelerators!r} must be NAME:COUNT with a count of at least 1", key="cluster.accelerators")


def _disk_gb(config: Config, cluster: ClusterConfig, needed: int) -> int:
    """The disk per node: the one asked for, refused when smaller than the data plan and the system need."""
    smallest = math.ceil(needed / GB) + cluster.system_gb
    disk = cluster.disk_gb or smallest
    if disk < smallest:
        raise DiskSpaceError(
            f"a {disk} GB disk per node is too small: staging {config.data.dataset} needs {needed / GB:.0f} GB "
            f"(data, the book's cache and margin) plus {cluster.system_gb} GB for the system",
            hint=f"ask for at least {smallest} GB (--disk-size {smallest}), or stage fewer subsets (--subsets) or lower data.cache_gb_per_subset",
            needed_gb=smallest, requested_gb=disk,
        )
    return disk


def _warnings(config: Config, cluster: ClusterConfig) -> list[str]:
    warnings = []
    first = config.data.sources[0] if config.data.sources else None
    if cluster.nodes > 1 and (first is None or first.kind != "gs"):
        warnings.append(
            f"{cluster.nodes} nodes would each download the data set from {first.location if first else 'nowhere'}; "
            "mirror it once to a bucket (provision mirror --to gs://BUCKET/luna16/) and put that first in data.sources"
        )
    if not config.book.enabled:
        warnings.append("the profile's book step is off (book.enabled: false): the nodes will not have the book's code; "
                        "set book.enabled: true or clone it in setup yourself")
    return warnings


def _setup_script(cluster: ClusterConfig, flags: str) -> str:
    return "\n".join([
        "set -e",
        f"[ -d ~/dlwpt-provision/.git ] || git clone --depth 1 {shlex.quote(cluster.tool_repo)} ~/dlwpt-provision",
        "# setup does not see the GPUs: install, get the book's code (book step) and stage here; check the GPU in run",
        f"bash ~/dlwpt-provision/scripts/provision.sh {flags} --skip cuda",
        "",
    ])


def _run_script(config: Config, cluster: ClusterConfig, flags: str) -> str:
    """Check the GPU, then train: python on one node, torchrun over the nodes' GPUs on several."""
    module = f"-m {shlex.quote(cluster.entry)} {cluster.args}".strip()
    if cluster.nodes > 1:
        train = [
            'MASTER_ADDR=$(echo "$SKYPILOT_NODE_IPS" | head -n1)',
            "torchrun \\",
            "  --nnodes=$SKYPILOT_NUM_NODES \\",
            "  --nproc_per_node=$SKYPILOT_NUM_GPUS_PER_NODE \\",
            "  --node_rank=$SKYPILOT_NODE_RANK \\",
            "  --master_addr=$MASTER_ADDR \\",
            "  --master_port=8008 \\",
            f"  {module}",
        ]
    else:
        train = [f"python {module}"]
    return "\n".join([
        "set -e",
        "source ~/dlwpt-provision/.venv/bin/activate",
        f"provision check {flags}",
        f"cd {_home_relative(book_dir(config.book.dir, config.data.root))}",
        *train,
        "",
    ])


def _profile_ref(config: Config) -> tuple[str, dict[str, str]]:
    """How the nodes name the profile: a shipped name, or a file mounted from here."""
    source = Path(config.files[-1]) if config.files else None
    if source is not None and source.parent.resolve() == configs_dir().resolve():
        return config.name, {}
    remote = f"~/.dlwpt-provision/{config.name}.yaml"
    return remote, {remote: str(source)}


def _home_relative(path: Path) -> str:
    """~/x for a path under this machine's home (the nodes have their own home), else the path."""
    home = Path.home()
    try:
        return "~/" + str(path.relative_to(home))
    except ValueError:
        return shlex.quote(str(path))


def export_skypilot(config: Config, overrides: ClusterOverrides, sets: tuple[str, ...] = ()) -> Export:
    """Build the task; refuse a disk smaller than the data plan needs."""
    cluster = dataclasses.replace(config.cluster, **{k: v for k, v in dataclasses.asdict(overrides).items() if v is not None})
    _check_accelerators(cluster.accelerators)
    needed = data_needed_bytes(config)
    disk = _disk_gb(config, cluster, needed)
    warnings = _warnings(config, cluster)
    profile, mounts = _profile_ref(config)
    flags = " ".join(["-c", shlex.quote(profile), *(f"--set {shlex.quote(s)}" for s in sets)])
    resources: dict[str, Any] = {"accelerators": cluster.accelerators, "disk_size": disk}
    if cluster.cloud:
        resources["cloud"] = cluster.cloud
    if cluster.region:
        resources["region"] = cluster.region
    if cluster.spot:
        resources["use_spot"] = True
    task: dict[str, Any] = {
        "name": f"dlwpt-{config.name}".replace("_", "-"),
        "resources": resources,
        "num_nodes": cluster.nodes,
        "envs": {"PROVISION_CONFIG": profile, "PYTHONUNBUFFERED": "1"},
        "setup": _setup_script(cluster, flags),
        "run": _run_script(config, cluster, flags),
    }
    if mounts:
        task["file_mounts"] = mounts
    header = "# SkyPilot task written by `provision export skypilot`; launch with: sky launch -c dlwpt THIS_FILE\n"
    text = header + "".join(f"# warning: {w}\n" for w in warnings) + yaml.dump(task, Dumper=_BlockDumper, sort_keys=False, width=1000)
    return Export(task, text, tuple(warnings), disk, needed / GB)
