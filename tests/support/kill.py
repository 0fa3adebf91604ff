"""A real ``kill -9`` at an exact point of a staging run: `provision stage` in a child process that sends itself SIGKILL
right before or after the n-th call of a named function whose argument matches (``os:replace`` whose destination ends
with ``.mhd``, ``provision.staging.fetch:verify_and_rename``, a method such as ``...members:MemberWriter.finish``).
Nothing is cleaned up, as with a kill from outside; unlike one, it lands at the same point on every run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent

CHILD = r"""
import importlib, os, signal, sys

where, when, nth, arg, suffix, profile = sys.argv[1:7]
module, _, attr = where.partition(":")
owner = importlib.import_module(module)
*path, name = attr.split(".")
for part in path:
    owner = getattr(owner, part)
real = getattr(owner, name)
calls = 0

def die() -> None:
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)

def wrapped(*args, **kwargs):
    global calls
    hit = str(args[int(arg)]).endswith(suffix) if arg != "-" and int(arg) < len(args) else arg == "-"
    if hit:
        calls += 1
    if hit and calls == int(nth) and when == "before":
        die()
    out = real(*args, **kwargs)
    if hit and calls == int(nth) and when == "after":
        die()
    return out

setattr(owner, name, wrapped)
from provision.cli import main
sys.exit(main(["stage", "-c", profile]))
"""


def stage_killed_at(profile: Path, where: str, *, when: str = "after", nth: int = 1, arg: int | None = None,
                    suffix: str = "") -> subprocess.CompletedProcess[str]:
    """Run `provision stage -c profile` in a child killed with SIGKILL at ``where`` (``module:attr``), ``when`` "before" or
    "after" its ``nth`` call whose positional argument ``arg`` (None: any call) ends with ``suffix``; fails the test when
    the child was not killed there."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("CI", None)
    done = subprocess.run([sys.executable, "-c", CHILD, where, when, str(nth), "-" if arg is None else str(arg), suffix, str(profile)],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, f"the run was not killed at {where} ({when} call {nth}): exit {done.returncode}\n{done.stderr}"
    return done
