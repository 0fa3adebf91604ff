"""The configuration's schema: frozen dataclasses whose fields are the allowed keys, their types what each value must
be, and ``metadata={"parse": fn}`` a parser for values with a richer syntax (see :mod:`provision.schema`). Reading,
merging and validating profiles into these is :mod:`provision.config`'s."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .book.editions import parse_edition, parse_sam
from .manifest import parse_subsets
from .schema import did_you_mean, set_by_tool
from .sources import Source, parse_source

BOOK_COMMIT = "d6c0210143daa133bbdeddaffc8993b1e17b5174"  # dlwpt-code's last commit (2020-12-28)


def _parse_sources(value: Any, path: str) -> tuple[Source, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError("expected a non-empty list of sources (zenodo, https://host/dir/, gs://bucket/prefix/, /a/dir)")
    sources = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ValueError(f"[{i}] expected a string, got {item!r}")
        try:
            sources.append(parse_source(item))
        except ValueError as exc:
            raise ValueError(f"[{i}] {exc}") from None
    return tuple(sources)


def _parse_specifier(value: Any, path: str) -> str:
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        return str(SpecifierSet(str(value)))
    except InvalidSpecifier:
        raise ValueError(f"{value!r} is not a version specifier like '>=3.10'") from None


def _parse_choice(*choices: str) -> Any:
    def parse(value: Any, path: str) -> str:
        if value not in choices:
            extra = did_you_mean(str(value), choices)
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}{extra}")
        return str(value)

    return parse


def _positive(kind: type, above_zero: bool = False) -> Any:
    """A finite number, not negative (``above_zero``: greater than 0, for timeouts and sizes that divide)."""
    def parse(value: Any, path: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            raise ValueError(f"expected a {'whole ' if kind is int else ''}number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value}")
        if value < 0 or (above_zero and value == 0):
            raise ValueError(f"must be greater than 0, got {value}" if above_zero else f"must not be negative, got {value}")
        return kind(value)

    return parse


def _auto_or(parse: Any) -> Any:
    def parse_auto(value: Any, path: str) -> Any:
        return None if value in (None, "auto") else parse(value, path)

    return parse_auto


def _parse_host_caps(value: Any, path: str) -> dict[str, int]:
    """``{zenodo.org: 4}``: the most connections to open to each named host at once."""
    if not isinstance(value, Mapping):
        raise ValueError("expected a mapping of host name to connections, e.g. {zenodo.org: 4}")
    caps = {}
    for host, count in value.items():
        if not isinstance(host, str) or "/" in host or not host:
            raise ValueError(f"{host!r} is not a host name (write zenodo.org, not a URL)")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"{host}: expected a whole number of connections of at least 1, got {count!r}")
        caps[host.lower()] = count
    return caps


def parse_chapters(value: Any, path: str) -> tuple[int, ...]:
    """``[11, 12]``, ``11``, ``"11,12"`` -> (11, 12): chapters of the book's Part 2 that have a cache."""
    items = value if isinstance(value, (list, tuple)) else [value] if isinstance(value, int) else str(value).split(",")
    chapters = []
    for item in items:
        text = str(item).strip()
        if isinstance(item, bool) or not text.isdigit() or not 10 <= int(text) <= 15:
            raise ValueError(f"{item!r} is not a chapter of Part 2 with a cache (11 to 14 in the first edition, 12 to 15 in the second)")
        chapters.append(int(text))
    return tuple(dict.fromkeys(chapters))


@dataclass(frozen=True)
class RequirementsConfig:
    files: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()
    skip_satisfied: bool = True
    torch_index: str = "auto"
    installer: str = field(default="auto", metadata={"parse": _parse_choice("auto", "uv", "pip")})
    venv: str | None = None
    find_links: tuple[str, ...] = ()
    no_index: bool = False


@dataclass(frozen=True)
class CudaConfig:
    required: bool = False
    min_memory_gb: float = field(default=0.0, metadata={"parse": _positive(float)})
    min_compute_capability: str | None = None
    probe_timeout_s: float = field(default=180.0, metadata={"parse": _positive(float, above_zero=True)})
    expected_devices: int = field(default=0, metadata={"parse": _positive(int)})  # e.g. 2 on Kaggle's T4 x2; fewer is a note


@dataclass(frozen=True)
class GcsConfig:
    project: str | None = None       # billing/quota project for the client (default: from the credentials)
    anonymous: bool = False          # public buckets without credentials
    user_project: str | None = None  # for requester-pays buckets


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "luna16"
    root: str = "~/dlwpt-code/data-unversioned"
    subsets: tuple[int, ...] | str | None = field(default=None, metadata={"parse": parse_subsets})  # all, fit, 0-3, 0,2,5
    sources: tuple[Source, ...] = field(default=(parse_source("zenodo"),), metadata={"parse": _parse_sources})
    keep_archives: bool = False
    reserve_gb: float = field(default=0.0, metadata={"parse": _positive(float)})  # kept free after staging, besides the cache
    # the book's cache per subset staged: auto (measured per chapter, see provision/cacheplan.py) or a number of GB
    cache_gb_per_subset: float | None = field(default=None, metadata={"parse": _auto_or(_positive(float))})
    margin_gb: float = field(default=1.0, metadata={"parse": _positive(float)})
    mode: str = field(default="auto", metadata={"parse": _parse_choice("auto", "archive", "stream")})
    connections: int = field(default=8, metadata={"parse": _positive(int)})
    # Zenodo blocks bursts of parallel downloads from one address (8 blocked, 4 mostly worked, 2 always did)
    host_connections: dict[str, int] = field(default_factory=lambda: {"zenodo.org": 4}, metadata={"parse": _parse_host_caps})
    blocked_patience_min: float = field(default=20.0, metadata={"parse": _positive(float)})  # retry a throttling host this long per file
    files_in_flight: int = field(default=3, metadata={"parse": _positive(int)})
    segment_mb: int = field(default=4, metadata={"parse": _positive(int, above_zero=True)})
    retries: int = field(default=6, metadata={"parse": _positive(int)})
    backoff_s: float = field(default=1.0, metadata={"parse": _positive(float)})
    timeout_s: float = field(default=60.0, metadata={"parse": _positive(float, above_zero=True)})
    zenodo_url: str = "https://zenodo.org"
    allow_insecure: bool = False
    extract_workers: int = field(default=0, metadata={"parse": _positive(int)})
    # archive mode: unpack each member as soon as its bytes have landed, not once the whole archive is there
    unpack_while_downloading: bool = True
    # stream mode: connections one archive may use at once (its bytes still inflated in order); 0: every connection
    stream_ranges: int = field(default=0, metadata={"parse": _positive(int)})
    # stream mode: memory for the bytes fetched ahead of the inflating readers, all archives together; its chunks are
    # this over 1.5 per connection (data.segment_mb at least), so a host that counts requests (Zenodo) sees few
    stream_read_ahead_mb: int = field(default=144, metadata={"parse": _positive(int, above_zero=True)})
    gcs: GcsConfig = GcsConfig()

    def connections_to(self, host: str) -> int:
        """At most this many connections to ``host`` at once: data.connections, or less where data.host_connections caps it."""
        return max(1, min(self.connections, self.host_connections.get(host.lower(), self.connections)))


@dataclass(frozen=True)
class SmokeConfig:
    """`provision book --smoke`: each Part 2 entry point on a few staged scans, epochs capped."""

    samples: int = field(default=64, metadata={"parse": _positive(int)})       # samples per epoch (the book's are up to 300,000)
    series: int = field(default=6, metadata={"parse": _positive(int)})         # CT series in the smoke's view of the data
    negatives_per_series: int = field(default=40, metadata={"parse": _positive(int)})  # non-nodule candidates kept per series
    num_workers: int = field(default=2, metadata={"parse": _positive(int)})    # the book's --num-workers
    timeout_s: float = field(default=900.0, metadata={"parse": _positive(float, above_zero=True)})  # per entry point


@dataclass(frozen=True)
class BookConfig:
    """The book's code: where it is checked out, at which commit, and the compatibility fixes applied to it."""

    enabled: bool = False               # `provision up` runs the book step
    # 1 (dlwpt-code), 2 (dlwpt-code-2e), or auto: the edition of the checkout in book.dir, else the first (book/editions.py)
    edition: int | None = field(default=None, metadata={"parse": parse_edition})
    repo: str = ""                      # a URL, a local repository or a git bundle; "": the edition's
    ref: str = ""                       # a commit, branch or tag; "": the edition's last commit
    dir: str | None = None              # default: the folder that holds data.root (~/dlwpt-code for ~/dlwpt-code/data-unversioned)
    fixes: str = ""                     # relative to configs/, or a path; "": book/<the edition's repository>.yaml
    extras: bool = False                # also the requirements of the chapters beyond LUNA classification (2nd edition: chapter 15)
    # with extras, chapter 15's Segment Anything checkpoints, staged into the book's p2ch15/: vit_b, vit_l (the book's), vit_h
    sam: tuple[str, ...] = field(default=("vit_l",), metadata={"parse": parse_sam})
    assets: str = ""                    # their manifest: a name under configs/datasets/ or a path; "": the edition's
    smoke: SmokeConfig = SmokeConfig()
    cache: tuple[int, ...] = field(default=(), metadata={"parse": parse_chapters})  # chapters whose cache `provision up` builds
    cache_workers: int = field(default=0, metadata={"parse": _positive(int)})  # children building it at once; 0: every core
    edition_from: str = field(default="", metadata={"parse": set_by_tool})           # why this edition: book.edition, the checkout, the default
    found_edition: int | None = field(default=None, metadata={"parse": set_by_tool})  # the edition of the checkout on disk, if any


@dataclass(frozen=True)
class VmConfig:
    """A cloud GPU VM to create with `provision vm` (GCP, through the gcloud CLI)."""

    provider: str = field(default="gcp", metadata={"parse": _parse_choice("gcp")})
    name: str = "dlwpt-part2"
    project: str | None = None
    zone: str = "us-central1-a"
    machine_type: str = "n1-standard-8"
    accelerator_type: str = "nvidia-tesla-t4"
    accelerator_count: int = field(default=1, metadata={"parse": _positive(int)})
    boot_disk_gb: int = field(default=0, metadata={"parse": _positive(int)})  # 0: derived from the data plan
    boot_disk_type: str = "pd-balanced"
    system_gb: int = field(default=60, metadata={"parse": _positive(int)})    # the image, CUDA and Python packages
    image_family: str = "common-cu129-ubuntu-2204-nvidia-580"
    image_project: str = "deeplearning-platform-release"
    spot: bool = False
    profile: str = "vm"                          # the profile the VM provisions itself with
    tool_repo: str = "https://github.com/dlwpt-provision/dlwpt-provision"


@dataclass(frozen=True)
class ClusterConfig:
    """A SkyPilot task exported by `provision export skypilot`."""

    accelerators: str = "T4:1"          # SkyPilot's NAME:COUNT per node
    nodes: int = field(default=1, metadata={"parse": _positive(int)})
    cloud: str | None = None
    region: str | None = None
    spot: bool = False
    disk_gb: int = field(default=0, metadata={"parse": _positive(int)})     # 0: derived from the data plan
    system_gb: int = field(default=60, metadata={"parse": _positive(int)})  # image, CUDA, Python packages
    entry: str = "p2ch11.training"      # the book's module to run (python -m / torchrun -m)
    args: str = "--epochs 1"
    tool_repo: str = "https://github.com/dlwpt-provision/dlwpt-provision"


@dataclass(frozen=True)
class Config:
    """A validated profile. ``files`` lists the YAML files it was read from, outermost last."""

    description: str = ""
    python: str = field(default=">=3.10", metadata={"parse": _parse_specifier})
    requirements: RequirementsConfig = RequirementsConfig()
    cuda: CudaConfig = CudaConfig()
    data: DataConfig = DataConfig()
    book: BookConfig = BookConfig()
    vm: VmConfig = VmConfig()
    cluster: ClusterConfig = ClusterConfig()
    files: tuple[str, ...] = field(default=(), metadata={"parse": set_by_tool})
    name: str = field(default="", metadata={"parse": set_by_tool})
