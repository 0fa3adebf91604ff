"""A stop from outside: Ctrl-C's SIGINT, and SIGTERM (spot preemption, ``docker stop``, a notebook's stop button,
cluster schedulers), raised as a :class:`Terminated`, which is a ``KeyboardInterrupt``, so every phase that keeps its
work on Ctrl-C keeps it on TERM too. The handler is installed by :mod:`provision.process`."""

from __future__ import annotations

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
EXIT_TERMINATED = 143   # 128 + SIGTERM
INTERRUPTED = "error: interrupted; what was fetched so far is kept, and the next run resumes"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's KeyboardInterrupt would be."""


def exit_code(interrupt: KeyboardInterrupt) -> int:
    return EXIT_TERMINATED if isinstance(interrupt, Terminated) else EXIT_INTERRUPTED
