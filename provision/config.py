"""Profiles: read YAML, merge ``extends``, apply ``--set``, expand paths, validate, freeze (into :mod:`provision.settings`'s types)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .schema import build, did_you_mean
from .settings import (  # the schema, re-exported: callers import the types from here
    BOOK_COMMIT,
    BookConfig,
    ClusterConfig,
    Config,
    CudaConfig,
    DataConfig,
    GcsConfig,
    RequirementsConfig,
    SmokeConfig,
    VmConfig,
    parse_chapters,
)
from .yamlfile import load_text, read_yaml

__all__ = [
    "shipped_profiles",
    "apply_sets",
    "configs_dir",
    "deep_merge",
    "expand_path",
    "load_config",
    "parse_set",
    "resolve_profile",
    "BOOK_COMMIT",
    "parse_chapters",
    "RequirementsConfig",
    "CudaConfig",
    "GcsConfig",
    "DataConfig",
    "SmokeConfig",
    "BookConfig",
    "VmConfig",
    "ClusterConfig",
    "Config",
]


# ---------------------------------------------------------------- locating profiles


def configs_dir() -> Path:
    """The folder of shipped profiles, manifests and tables: the package's ``_configs`` (``configs/`` in a checkout).

    Package data, so a wheel, an sdist, a ``pip install git+...`` and an editable install all have it, and the
    command works from any folder.
    """
    override = os.environ.get("PROVISION_CONFIG_DIR")
    if override:
        return Path(override)
    shipped = resources.files("provision") / "_configs"
    if not isinstance(shipped, Path):  # a zipped install: no folder to hand to the loaders
        raise ConfigError(
            f"the shipped profiles are not a folder on disk ({shipped})",
            hint="install dlwpt-provision with pip (not as a zip), or set PROVISION_CONFIG_DIR to a checkout's configs/",
        )
    return shipped


def shipped_profiles(base_dir: Path | None = None) -> list[str]:
    """The profiles one can name with -c: every YAML file of the configs folder but base.yaml, which the others extend."""
    base_dir = base_dir or configs_dir()
    return sorted(p.stem for p in base_dir.glob("*.yaml") if p.stem != "base") if base_dir.is_dir() else []


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
    available = shipped_profiles(base_dir)
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
    return _with_identity(_with_edition(config), Path(path).stem, tuple(files))


def _with_edition(config: Config) -> Config:
    """The edition chosen (book.edition, else the checkout's on disk, else the first) and what it implies filled in."""
    import dataclasses

    from .book import checkout, editions

    where = checkout.book_dir(config.book.dir, config.data.root)
    found = editions.recognise(where, checkout.head_commit(where)) if where.is_dir() else None
    book, files = editions.resolve(config.book, config.requirements.files, found)
    return dataclasses.replace(config, book=book, requirements=dataclasses.replace(config.requirements, files=files))


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
    for key in ("connections", "files_in_flight"):
        if getattr(config.data, key) < 1:
            raise ConfigError(f"data.{key} must be at least 1", hint=f"set data.{key} to 1 or more", key=f"data.{key}")
