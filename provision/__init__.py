"""dlwpt-provision: get a Colab runtime or GPU VM ready for *Deep Learning with PyTorch*, Part 2.

Public API (used by the notebooks): :func:`load_config`, :func:`make_plan`, :func:`run`.
"""

from __future__ import annotations

from typing import Any

from .version import __version__

__all__ = ["__version__", "load_config", "make_plan", "run"]


def load_config(*args: Any, **kwargs: Any) -> Any:
    """See :func:`provision.config.load_config`."""
    from .config import load_config as _load

    return _load(*args, **kwargs)


def make_plan(config: Any, **kwargs: Any) -> Any:
    """Gather facts and compute the plan (the dry run). See :func:`provision.facts.build_plan`."""
    from .facts import build_plan

    return build_plan(config, **kwargs)


def run(argv: list[str]) -> int:
    """Run a command line as the ``provision`` command would, in this process (for notebooks)."""
    from .cli import main

    return main(argv)
