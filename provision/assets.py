"""Chapter 15's assets (the second edition): the Segment Anything checkpoints its ``utils.get_sam_model`` loads.

They are staged as a small data set of their own (``configs/datasets/segment-anything.yaml``), by the same engine as
the data: verified by md5, resumable, never a partial file under the final name. Their folder is the book's
``p2ch15/``, where ``get_sam_model`` looks (it downloads only when the file is missing, with no checksum); the engine's
state and partial files are in the book's ``.provision/``, kept out of ``git status``. Only when chapter 15 is asked
for (``book.extras``) and only the checkpoints ``book.sam`` names (default the book's, vit_l).

Not staged here yet: the Hugging Face data set and models chapter 15's notebooks fetch with ``huggingface_hub``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from .book import editions
from .book.checkout import book_dir
from .config import configs_dir
from .environment import FsFacts, fs_facts
from .errors import ConfigError
from .manifest import Manifest, load_manifest
from .settings import Config
from .sources import parse_source
from .staging.state import FileStatus, file_statuses


@dataclass(frozen=True)
class Assets:
    """The assets chosen, and the settings that stage them."""

    root: Path          # the book's folder: the files go to root/manifest.dir, the engine's state to root/.provision
    manifest: Manifest  # only the files chosen
    config: Config      # the profile with data.* pointed at them: their root, their sources, no subsets, no cache

    @property
    def target(self) -> Path:
        return self.root / self.manifest.dir


@dataclass(frozen=True)
class AssetFacts:
    """What the plan needs to know about them (read-only): where each stands, and the disk they go to."""

    assets: Assets
    statuses: dict[str, FileStatus]
    fs: FsFacts


def chosen(config: Config) -> Assets | None:
    """The assets the profile asks for (None when it asks for none: not the second edition, no book.extras, book.sam
    empty). Reads their manifest; a checkpoint it lacks or a source it cannot use is a ConfigError."""
    edition = editions.of(config.book)
    if not (config.book.extras and config.book.sam and edition.assets):
        return None
    manifest = load_manifest(config.book.assets or edition.assets, configs_dir())
    files, missing = [], []
    for model in config.book.sam:
        found = [f for f in manifest.files if f.key.startswith(f"sam_{model}_")]
        files += found
        missing += [] if found else [model]
    if missing:
        raise ConfigError(f"{manifest.path} has no checkpoint of {', '.join(missing)}",
                          hint=f"book.sam names {', '.join(config.book.sam)}; the manifest has {', '.join(f.key for f in manifest.files)}",
                          key="book.sam")
    try:
        sources = tuple(parse_source(s) for s in manifest.sources)
    except ValueError as exc:
        raise ConfigError(f"{manifest.path}: sources: {exc}", hint="list base URLs ending in '/' (or folders) under sources:",
                          file=manifest.path, key="sources") from None
    if not sources:
        raise ConfigError(f"{manifest.path} names no sources", hint="add sources: [https://host/folder/] to it", file=manifest.path, key="sources")
    root = book_dir(config.book.dir, config.data.root)
    data = dataclasses.replace(config.data, dataset=manifest.path, root=str(root), subsets=None, sources=sources, keep_archives=False,
                               cache_gb_per_subset=0.0, reserve_gb=0.0, margin_gb=0.0, mode="archive")
    return Assets(root, dataclasses.replace(manifest, files=tuple(files)), dataclasses.replace(config, data=data))


def gather(config: Config) -> AssetFacts | None:
    """The chosen assets and where they stand (read-only)."""
    assets = chosen(config)
    if assets is None:
        return None
    keys = [f.key for f in assets.manifest.files]
    statuses = file_statuses(assets.root, keys, assets.target) if assets.root.is_dir() else {}
    return AssetFacts(assets, statuses, fs_facts(assets.target))
