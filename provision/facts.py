"""Looking around before planning (read-only): installed packages, the driver, free disk, what is staged,
the book's checkout, unpacked copies; and, when asked (``--probe``), the sources. Then the plan."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from .assets import gather as gather_assets
from .book.checkout import book_dir
from .book.checkout import facts as checkout_facts
from .book.fixes import FileState, judge_checkout, load_book_manifest
from .cacheplan import fs_type_of
from .config import Config, configs_dir
from .environment import Environment, existing_ancestor, folder_problem, fs_facts
from .install import installed_distributions, target_python
from .manifest import Manifest, load_manifest
from .plan import BookFacts, CopyFacts, Facts, Plan, make_plan
from .sources import Source
from .staging.state import file_statuses, read_timings, work_dir
from .torch_wheels import load_table


def gather_facts(config: Config, environ: Mapping[str, str], environment: Environment, manifest: Manifest) -> Facts:
    """Look at the machine (read-only): installed packages, driver, free disk, staged files."""
    target = target_python(config.requirements.venv, environment.python_executable)
    installed = installed_distributions(target)
    smi = wheels = None
    if "torch" not in installed and config.requirements.torch_index == "auto":
        from .gpu import read_nvidia_smi

        smi = read_nvidia_smi(timeout_s=10)
        wheels = load_table(configs_dir())
    root = Path(config.data.root)
    keys = [f.key for f in manifest.files]
    return Facts(
        environment=environment,
        installed=installed,
        nvidia_smi=smi,
        wheels=wheels,
        data_fs=fs_facts(root / manifest.dir),  # where the data goes (a disk may be mounted there): its parents' when it is not there yet
        statuses=file_statuses(root, keys, root / manifest.dir) if root.is_dir() else {},
        environ=dict(environ),
        book=gather_book_facts(config),
        copies={s.location: look_into_copy(s, manifest) for s in config.data.sources if s.is_copy},
        root_problem=folder_problem(root / manifest.dir) or folder_problem(work_dir(root)),
        cache_fs_type=fs_type_of(str(existing_ancestor(root / "cache").resolve()), read_mounts()),
        timings=read_timings(root),
        target_exists=os.path.exists(target),
        missing_folders=tuple(s.location for s in config.data.sources if s.kind == "local" and not os.path.isdir(s.location)),
        assets=gather_assets(config),
    )


def read_mounts() -> str:
    """The mount table (which filesystem holds which folder); empty where there is none to read."""
    try:
        return Path("/proc/self/mounts").read_text(errors="replace")
    except OSError:
        return ""


def look_into_copy(source: Source, manifest: Manifest) -> CopyFacts:
    """Which subsets (and plain files) an unpacked copy holds; it is only listed, not read."""
    from .staging.copies import find_plain, find_subsets, kaggle_copies

    root = Path(source.location)
    subsets = kaggle_copies(root) if source.kaggle else find_subsets(root)
    near = [subsets[n] for n in sorted(subsets)]
    plain = {f.key: hit for f in manifest.files if not f.unpack and (hit := find_plain(root, f.key, near))}
    return CopyFacts(subsets, plain)


def gather_book_facts(config: Config) -> BookFacts:
    """The book's checkout (read-only): its commit, and each fixed file as committed and as it is now."""
    manifest = load_book_manifest(config.book.fixes, configs_dir())
    checkout = book_dir(config.book.dir, config.data.root)
    found = checkout_facts(checkout, Path(config.data.root), config.book.repo)
    states: tuple[FileState, ...] = ()
    if found.head is not None:
        states = tuple(judge_checkout(manifest, checkout))
    return BookFacts(manifest, found, states)


def build_plan(config: Config, environ: Mapping[str, str] | None = None, environment: Environment | None = None, probe: bool = False) -> Plan:
    """Gather facts and make the plan: the whole dry run, as the CLI and the notebooks use it."""
    from . import environment as envmod

    environ = os.environ if environ is None else environ
    environment = environment or envmod.current(environ)
    manifest = load_manifest(config.data.dataset, configs_dir())
    facts = gather_facts(config, environ, environment, manifest)
    if probe:
        from .staging.probe import probe_remote

        facts = Facts(**{**facts.__dict__, "remote": probe_remote(config, manifest)})
    return make_plan(config, manifest, facts)
