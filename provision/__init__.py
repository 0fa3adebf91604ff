"""dlwpt-provision: get a Colab runtime or GPU VM ready for *Deep Learning with PyTorch*, Part 2.

Public API (used by the notebooks): :func:`load_config`, :func:`make_plan`, :func:`run`. The heavier modules are
imported when these are called, so that ``import provision`` stays instant.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from .version import __version__

# not typing's: importing typing takes milliseconds of the start, in which a Ctrl-C would be a traceback (provision.process)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .environment import Environment
    from .planvalues import Plan
    from .settings import Config

__all__ = ["__version__", "load_config", "make_plan", "run"]


def load_config(spec: str | os.PathLike[str] | None = None, sets: Sequence[str] = (), environ: Mapping[str, str] | None = None,
                default_profile: str = "local") -> Config:
    """A profile read, merged, overridden and validated; see :func:`provision.config.load_config`."""
    from .config import load_config as load

    return load(spec, sets, environ, default_profile)


def make_plan(config: Config, environ: Mapping[str, str] | None = None, environment: Environment | None = None, probe: bool = False) -> Plan:
    """Gather facts and compute the plan (the dry run). See :func:`provision.facts.build_plan`."""
    from .facts import build_plan

    return build_plan(config, environ, environment, probe)


def run(argv: list[str]) -> int:
    """Run a command line as the ``provision`` command would, in this process (for notebooks)."""
    from .cli import main

    return main(argv)
