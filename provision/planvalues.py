"""The plan's values: what was found out (``Facts``) and every decision of a run (``Plan`` and its parts), frozen.

Kept apart from the planner (:mod:`provision.plan`), so that the parts that carry a plan out (staging, the book
step, the reports) read these values without loading the planner and what it needs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .disk import DiskPlan
from .environment import Environment, FsFacts
from .manifest import PinnedMember
from .staging.state import FileStatus

if TYPE_CHECKING:  # annotations only: the planner's inputs, not needed to hold or read a plan
    from .assets import AssetFacts
    from .book.checkout import CheckoutFacts
    from .book.fixes import BookManifest, FileState
    from .cacheplan import CachePlan
    from .install import InstallPlan
    from .torch_wheels import WheelTable

KAGGLE_WORKING = "/kaggle/working"  # what a saved Kaggle notebook keeps: at most 20 GB
KAGGLE_WORKING_BYTES = 20 * 1_000_000_000


@dataclass(frozen=True)
class RemoteFacts:
    """What ``--probe`` (or staging) learned about a file from its source."""

    size: int | None = None
    md5: str | None = None
    unpacked_size: int | None = None
    members: int | None = None
    source: str | None = None
    bucket_status: str | None = None  # present | missing | md5 differs | size differs (gs:// sources, --probe)


@dataclass(frozen=True)
class Facts:
    """Everything about the machine a plan depends on, gathered up front."""

    environment: Environment
    installed: Mapping[str, str]
    nvidia_smi: Mapping[str, Any] | None  # read when torch is to be installed from the index that fits the GPUs
    data_fs: FsFacts
    statuses: Mapping[str, FileStatus]
    environ: Mapping[str, str]
    remote: Mapping[str, RemoteFacts] = field(default_factory=dict)
    book: BookFacts | None = None
    wheels: WheelTable | None = None  # configs/torch/wheels.yaml, loaded with nvidia_smi
    copies: Mapping[str, CopyFacts] = field(default_factory=dict)  # unpacked-copy source location -> what it holds
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    root_problem: str | None = None  # why data cannot be written under data.root (a file, read-only, a link loop)
    cache_fs_type: str = ""          # the filesystem the book's cache would be on (data.root/cache)
    timings: Mapping[str, Any] = field(default_factory=dict)  # what `provision cache` and the smoke run measured on this machine
    target_exists: bool = True       # the interpreter requirements go to (the profile's venv) is there
    missing_folders: tuple[str, ...] = ()  # folder sources (data.sources) that are no folder here: a typo, or not mounted
    assets: AssetFacts | None = None  # chapter 15's checkpoints, when the profile asks for them (provision/assets.py)


@dataclass(frozen=True)
class BookFacts:
    """The book's checkout and where each file its fixes touch stands (empty until it is cloned)."""

    manifest: BookManifest
    checkout: CheckoutFacts
    states: tuple[FileState, ...]


@dataclass(frozen=True)
class FileLocation:
    """Where one file can be fetched from: the source kind and the file's URL or path there."""

    kind: str
    url: str


@dataclass(frozen=True)
class FilePlan:
    key: str
    record: str | None
    subset: int | None
    size: int | None
    md5: str | None
    unpack: bool
    unpacked_bytes: int | None
    unpacked_estimated: bool
    locations: tuple[FileLocation, ...]
    dest: str
    stage: str
    partial_bytes: int
    bucket_status: str | None = None
    unpacked_done_bytes: int = 0
    pinned: tuple[PinnedMember, ...] = ()  # the archive's members as the data set has them (checked when present)
    not_in_copies: bool = False  # an unpacked copy is configured but lacks this file

    @property
    def from_copy(self) -> bool:
        """Linked from an unpacked copy (its first source): no bytes to download or write."""
        return bool(self.locations) and self.locations[0].kind == "unpacked"


@dataclass(frozen=True)
class CopyFacts:
    """What an unpacked copy holds: each subset's folder, and plain files of the data set (annotations.csv)."""

    subsets: Mapping[int, str]
    plain: Mapping[str, str]


@dataclass(frozen=True)
class DataPlan:
    dataset: str
    manifest: str
    root: str
    target_dir: str
    mode: str
    subsets: tuple[int, ...] | str | None
    sources: tuple[str, ...]
    files: tuple[FilePlan, ...]
    connections: int
    files_in_flight: int
    keep_archives: bool
    mode_reason: str = ""
    stream_ranges: int = 1
    ways: tuple[WayPlan, ...] = ()  # every way the setting allows: its disk need and time relative to the fastest
    files_at_once: int = 1  # files staged at once: archives in flight, or archives streamed at once
    stream_read_ahead_bytes: int = 0  # stream mode over several connections: the chunks fetched ahead, all archives together
    stream_chunk_bytes: int = 0  # ... in chunks of this many bytes, one request each
    subsets_reason: str = ""  # data.subsets: fit -> which subsets were chosen, and why
    missing_sources: tuple[str, ...] = ()  # folder sources that are no folder: refused where sources are read
    subsets_left_out: str = ""  # data.subsets: fit and not all fit -> which are left out, why, and how to get them (said before staging)

    def keeps(self, f: FilePlan) -> bool:
        """Whether ``f`` stays on disk under its own name once staged: a plain file, or an archive with keep_archives
        (an archive that is unpacked is otherwise deleted, and is not worth forcing to disk before that)."""
        return self.keep_archives or not f.unpack


@dataclass(frozen=True)
class WayPlan:
    label: str
    mode: str
    files_in_flight: int
    stream_ranges: int
    needed_bytes: int
    fits: bool
    relative_time: float
    chosen: bool


@dataclass(frozen=True)
class FixPlan:
    id: str
    file: str
    state: str  # to apply | applied | edited | mismatch | missing | after clone
    why: str
    problem: str = ""


@dataclass(frozen=True)
class BookPlan:
    """The book step: get the book's code at ``dir`` (clone when ``head`` is None) and apply its fixes."""

    enabled: bool
    dir: str
    repo: str
    ref: str
    head: str | None
    data_link: str  # inside | link | linked | conflict
    fixes: tuple[FixPlan, ...]
    manifest: str
    foreign: tuple[str, ...] = ()  # files that stop a clone into a folder that is not a checkout
    edition: str = ""              # the edition it prepares, in words, and why that one
    found_edition: str = ""        # the edition of the checkout on disk when it is not that one
    other_edition: str = ""        # how to pick the other edition

    @property
    def clone(self) -> bool:
        return self.head is None


@dataclass(frozen=True)
class GpuExpectations:
    required: bool
    min_memory_gb: float
    min_compute_capability: str | None


@dataclass(frozen=True)
class Problem:
    """A reason the plan cannot run as it is, with the fix and the exit code it leads to.

    ``step`` is the step of `provision up` it stops (a disk problem only matters to the data step).
    """

    step: str
    message: str
    hint: str
    exit_code: int = 3


@dataclass(frozen=True)
class Plan:
    profile: str
    config_files: tuple[str, ...]
    environment: Environment
    python_ok: bool
    python_requirement: str
    install: InstallPlan
    gpu: GpuExpectations
    data: DataPlan
    disk: tuple[DiskPlan, ...]
    problems: tuple[Problem, ...]
    book: BookPlan | None = None
    cache: CachePlan | None = None
    assets: DataPlan | None = None  # chapter 15's checkpoints, staged after the data into the book's p2ch15/

    @property
    def feasible(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["feasible"] = self.feasible
        out["environment"]["profile"] = self.environment.profile
        for disk, raw in zip(self.disk, out["disk"], strict=True):
            raw["fits"] = disk.fits
            raw["shortfall_bytes"] = disk.shortfall_bytes
            raw["fitting_subsets_text"] = disk.fitting_text()
        return out
