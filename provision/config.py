"""Profiles: read YAML, merge ``extends``, apply ``--set``, expand paths, validate, freeze."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .manifest import parse_subsets
from .schema import build, did_you_mean, set_by_tool
from .sources import Source, parse_source
from .yamlfile import load_text, read_yaml

PROFILES = ("kaggle", "colab", "vm", "local", "ci")
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
        if isinstance(item, bool) or not text.isdigit() or not 10 <= int(text) <= 14:
            raise ValueError(f"{item!r} is not a chapter of Part 2 with a cache (11, 12, 13 or 14)")
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
    stream_ranges: int = field(default=1, metadata={"parse": _positive(int)})  # >1: parallel ranges per archive, no archive md5
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
    repo: str = "https://github.com/deep-learning-with-pytorch/dlwpt-code"  # a URL, a local repository or a git bundle
    ref: str = BOOK_COMMIT              # a commit, branch or tag
    dir: str | None = None              # default: the folder that holds data.root (~/dlwpt-code for ~/dlwpt-code/data-unversioned)
    fixes: str = "book/dlwpt-code.yaml"  # relative to configs/, or a path
    smoke: SmokeConfig = SmokeConfig()
    cache: tuple[int, ...] = field(default=(), metadata={"parse": parse_chapters})  # chapters whose cache `provision up` builds
    cache_workers: int = field(default=0, metadata={"parse": _positive(int)})  # children building it at once; 0: every core


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


# ---------------------------------------------------------------- locating profiles


def configs_dir() -> Path:
    """The folder of shipped profiles (``configs/`` beside the package in a checkout)."""
    override = os.environ.get("PROVISION_CONFIG_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "configs"


def resolve_profile(spec: str, base_dir: Path | None = None) -> Path:
    """``colab`` -> configs/colab.yaml; a path is taken as it is."""
    base_dir = base_dir or configs_dir()
    candidate = Path(os.path.expanduser(spec))
    looks_like_path = "/" in spec or spec.endswith((".yaml", ".yml"))
    if looks_like_path:
        if candidate.is_file():
            return candidate
        raise ConfigError(f"profile file {spec} does not exist", hint="check the path given to -c/--config", file=spec)
    named = base_dir / f"{spec}.yaml"
    if named.is_file():
        return named
    available = sorted(p.stem for p in base_dir.glob("*.yaml")) if base_dir.is_dir() else []
    raise ConfigError(
        f"no profile named '{spec}'{did_you_mean(spec, available)}",
        hint=f"use one of: {', '.join(available) or '(none found)'} (in {base_dir}), or a path to a YAML file",
        profile=spec,
    )


# ---------------------------------------------------------------- reading and merging


class _Origins:
    """Which file set each dotted key path (for error messages after merging)."""

    def __init__(self) -> None:
        self.by_path: dict[str, str] = {}

    def record(self, mapping: Mapping[str, Any], source: str, prefix: str = "") -> None:
        for key, value in mapping.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            self.by_path[path] = source
            if isinstance(value, Mapping):
                self.record(value, source, path)

    def __call__(self, path: str) -> str:
        while path:
            if path in self.by_path:
                return self.by_path[path]
            path = re.sub(r"(\[\d+\]|\.[^.\[]*|^[^.\[]*)$", "", path)
        return self.by_path.get("", "<defaults>")


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; anything else (lists included) is replaced."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _load_chain(path: Path, origins: _Origins, seen: tuple[Path, ...] = ()) -> tuple[dict[str, Any], list[str]]:
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"profiles extend each other in a loop: {chain}", hint="remove one of the 'extends:' lines", file=str(path))
    data = read_yaml(path)
    parent_spec = data.pop("extends", None)
    merged: dict[str, Any] = {}
    files: list[str] = []
    if parent_spec is not None:
        if not isinstance(parent_spec, str):
            raise ConfigError(f"{path}: 'extends' must be a file name, got {parent_spec!r}", hint="write e.g. 'extends: base.yaml'", file=str(path), key="extends")
        parent = path.parent / parent_spec if not os.path.isabs(parent_spec) else Path(parent_spec)
        if not parent.is_file():
            parent = resolve_profile(parent_spec, path.parent)
        merged, files = _load_chain(parent, origins, (*seen, path))
    origins.record(data, str(path))
    return deep_merge(merged, data), [*files, str(path)]


def parse_set(assignment: str) -> tuple[list[str], Any]:
    """``data.subsets=0-3`` -> (['data', 'subsets'], '0-3'); the value is read as YAML."""
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r} is not of the form dotted.key=value", hint="write e.g. --set data.reserve_gb=20")
    if "\x00" in assignment:
        raise ConfigError(f"--set {assignment!r} contains a NUL character", hint="remove it: no key or path can hold one")
    try:
        value = load_text(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return [part.strip() for part in key.split(".")], value


def apply_sets(data: dict[str, Any], sets: Sequence[str], origins: _Origins) -> dict[str, Any]:
    for assignment in sets:
        keys, value = parse_set(assignment)
        patch: Any = value
        for part in reversed(keys):
            patch = {part: patch}
        origins.record(patch, f"--set {assignment}")
        data = deep_merge(data, patch)
    return data


# ---------------------------------------------------------------- path expansion

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_path(text: str, environ: Mapping[str, str], where: str) -> str:
    """Expand ``~`` and ``${VAR}``; an undefined variable is an error."""

    def var(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise ConfigError(f"{where}: environment variable ${{{name}}} is not set", hint=f"set {name} or write the path out", key=where)
        return environ[name]

    text = _VAR.sub(var, text)
    if text.startswith("~"):
        home = environ.get("HOME") or os.path.expanduser("~")
        text = home + text[1:] if text == "~" or text.startswith("~/") else os.path.expanduser(text)
    return text


def _expand_paths(data: dict[str, Any], environ: Mapping[str, str], origins: _Origins) -> dict[str, Any]:
    data = deep_merge({}, data)
    section = data.get("data")
    if isinstance(section, dict):
        if isinstance(section.get("root"), str):
            section["root"] = os.path.abspath(expand_path(section["root"], environ, f"{origins('data.root')}: data.root"))
        sources = section.get("sources")
        if isinstance(sources, list):
            section["sources"] = [_expand_source(s, environ, f"{origins('data.sources')}: data.sources[{i}]") for i, s in enumerate(sources)]
    book = data.get("book")
    if isinstance(book, dict):
        if isinstance(book.get("dir"), str):
            book["dir"] = os.path.abspath(expand_path(book["dir"], environ, f"{origins('book.dir')}: book.dir"))
        repo = book.get("repo")
        if isinstance(repo, str) and "://" not in repo and not repo.startswith("git@"):
            book["repo"] = os.path.abspath(expand_path(repo, environ, f"{origins('book.repo')}: book.repo"))  # a local repository or bundle
    reqs = data.get("requirements")
    if isinstance(reqs, dict):
        if isinstance(reqs.get("venv"), str):
            reqs["venv"] = os.path.abspath(expand_path(reqs["venv"], environ, "requirements.venv"))
        if isinstance(reqs.get("find_links"), list):
            reqs["find_links"] = [os.path.abspath(expand_path(p, environ, "requirements.find_links")) if isinstance(p, str) else p for p in reqs["find_links"]]
        files = reqs.get("files")
        if isinstance(files, list):
            reqs["files"] = [_requirement_file(f, environ, origins(f"requirements.files[{i}]"), i) for i, f in enumerate(files)]
    return data


def _expand_source(text: Any, environ: Mapping[str, str], where: str) -> Any:
    """~ and ${VAR} in a folder source, also after the unpacked: and kaggle: prefixes."""
    if not isinstance(text, str):
        return text
    for prefix in ("unpacked:", "kaggle:"):
        if text.startswith(prefix) and len(text) > len(prefix):
            return prefix + expand_path(text[len(prefix):], environ, where)
    return expand_path(text, environ, where)


def _requirement_file(text: Any, environ: Mapping[str, str], declared_in: str, index: int) -> Any:
    if not isinstance(text, str):
        return text
    expanded = expand_path(text, environ, f"{declared_in}: requirements.files[{index}]")
    if os.path.isabs(expanded) or declared_in.startswith("--set") or declared_in == "<defaults>":
        return expanded
    return str(Path(declared_in).parent / expanded)  # relative to the profile that names it


# ---------------------------------------------------------------- entry point


def load_config(
    spec: str | os.PathLike[str] | None = None,
    sets: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
    default_profile: str = "local",
) -> Config:
    """Read, merge, override and validate a profile into a frozen :class:`Config`.

    ``spec`` is a profile name or path; without one, ``PROVISION_CONFIG`` and then
    ``default_profile`` (the detected environment's profile) are used.
    """
    environ = os.environ if environ is None else environ
    spec = str(spec) if spec is not None else environ.get("PROVISION_CONFIG") or default_profile
    path = resolve_profile(spec)
    origins = _Origins()
    data, files = _load_chain(path, origins)
    origins.by_path.setdefault("", str(path))
    data = apply_sets(data, sets, origins)
    data = _expand_paths(data, environ, origins)
    config = build(Config, data, path="", origin=origins)
    _check_sources(config, origins)
    return _with_identity(config, Path(path).stem, tuple(files))


def _with_identity(config: Config, name: str, files: tuple[str, ...]) -> Config:
    import dataclasses

    return dataclasses.replace(config, name=name, files=files)


def _check_sources(config: Config, origins: _Origins) -> None:
    for i, source in enumerate(config.data.sources):
        if source.kind == "http" and source.insecure and not config.data.allow_insecure and not source.is_loopback:
            where = origins("data.sources")
            raise ConfigError(
                f"{where}: data.sources[{i}]: plain http:// ({source.location}) is only allowed for loopback addresses",
                hint="use https://, or set data.allow_insecure: true if you trust the network",
                file=where,
                key=f"data.sources[{i}]",
            )
    for key in ("connections", "stream_ranges", "files_in_flight"):
        if getattr(config.data, key) < 1:
            raise ConfigError(f"data.{key} must be at least 1", hint=f"set data.{key} to 1 or more", key=f"data.{key}")
