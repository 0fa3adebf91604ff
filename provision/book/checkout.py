"""The book's checkout: where it is, what commit it is at, and cloning it there at the pinned commit.

The book's code reads its data from ``data-unversioned/`` beside its packages, so the checkout goes
into the folder that holds ``data.root``, also when staged data already sits there (it is kept).
Git runs with an argument list, never a shell, and never prompts (a private URL fails instead).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..atomicfile import atomic_write_text
from ..errors import BookError

GIT_TIMEOUT_S = 900.0
DATA_FOLDER = "data-unversioned"  # the book's code reads data-unversioned/... relative to its folder
# staged data (a folder, or a link to data.root: no slash, which would match folders only), tensorboard logs, and chapter
# 15's checkpoints (second edition) with the staging engine's state for them
LOCAL_EXCLUDES = (f"/{DATA_FOLDER}", "/runs/", "/.provision/", "/p2ch15/sam_vit_*.pth")
# The clone is made in this folder inside the book's folder, and its entries moved up once it is complete, .git last: a clone
# that stops (the network drops, a kill) leaves only this folder, which the next run clears, never a .git that blocks it.
CLONING = ".provision-clone"
CLONED = "provision-cloned"  # in CLONING/.git once the checkout there is complete: a move up that stopped is finished next time


@dataclass(frozen=True)
class CheckoutFacts:
    """What is at the book's folder now (read-only)."""

    dir: str
    exists: bool
    head: str | None          # the checked-out commit, None when the folder is not a git checkout
    foreign: tuple[str, ...]  # entries that would stop a clone into a folder that is not a checkout
    data_link: str            # inside | link | linked | conflict: how data.root relates to <dir>/data-unversioned


def book_dir(configured: str | None, data_root: str) -> Path:
    """book.dir, or the folder that holds data.root (~/dlwpt-code for ~/dlwpt-code/data-unversioned)."""
    return Path(configured) if configured else Path(data_root).parent


def git(args: list[str], cwd: Path | None = None, timeout_s: float = GIT_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "LC_ALL": "C"}
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout_s, env=env)


def head_commit(checkout: Path) -> str | None:
    """The commit checked out in ``checkout``, or None when it is not the top of a git checkout."""
    if not (checkout / ".git").exists():
        return None
    try:
        proc = git(["rev-parse", "HEAD"], cwd=checkout, timeout_s=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def read_committed(checkout: Path, file: str) -> bytes | None:
    """The file as the checked-out commit has it (the book's version), or None."""
    try:
        proc = subprocess.run(["git", "show", f"HEAD:{file}"], cwd=checkout, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def read_current(checkout: Path, file: str) -> bytes | None:
    try:
        return (checkout / file).read_bytes()
    except OSError:
        return None


def data_link_state(checkout: Path, data_root: Path) -> str:
    """inside: data.root is <checkout>/data-unversioned; link: a link will be made there; linked: it is one; conflict: something else is."""
    place = checkout / DATA_FOLDER
    if os.path.abspath(place) == os.path.abspath(data_root):
        return "inside"
    if place.is_symlink() and os.path.realpath(place) == os.path.realpath(data_root):
        return "linked"
    return "conflict" if os.path.lexists(place) else "link"


def facts(checkout: Path, data_root: Path, repo: str | None = None) -> CheckoutFacts:
    head = head_commit(checkout)
    foreign: tuple[str, ...] = ()
    # entries moved up from a complete clone before a stop are its own (a clone starts only where there are none)
    if head is None and checkout.is_dir() and not (checkout / CLONING / ".git" / CLONED).is_file():
        foreign = tuple(sorted(p.name for p in checkout.iterdir() if p.name not in (DATA_FOLDER, CLONING)))
        if foreign == (".git",) and repo is not None and left_by_a_clone(checkout, repo):
            foreign = ()
    return CheckoutFacts(str(checkout), checkout.is_dir(), head, foreign, data_link_state(checkout, data_root))


def left_by_a_clone(checkout: Path, repo: str) -> bool:
    """Whether ``checkout/.git`` is what a clone of ``repo`` into the folder (as earlier versions made it) left when it
    stopped: a repository without a single commit, whose only remote, if any, is ``repo``. Nothing in it can be lost."""
    try:
        commits = git(["rev-list", "-n", "1", "--all"], cwd=checkout, timeout_s=30)
        remotes = git(["config", "--get-regexp", r"^remote\..*\.url$"], cwd=checkout, timeout_s=30)
    except (OSError, subprocess.SubprocessError):
        return False
    urls = {line.split(" ", 1)[-1] for line in remotes.stdout.splitlines()}
    return commits.returncode == 0 and not commits.stdout.strip() and urls <= {repo}


def clone(repo: str, ref: str, checkout: Path) -> str:
    """Check out ``repo`` at ``ref`` in ``checkout`` (which may hold data-unversioned/ already); returns the commit."""
    existing = facts(checkout, checkout / DATA_FOLDER, repo)
    if existing.foreign:
        raise BookError(
            f"{checkout} is not a checkout of the book's code but holds other files: {', '.join(existing.foreign[:5])}",
            hint="move them away, or point book.dir at an empty folder (the data can stay: data.root is linked into it)",
            dir=str(checkout),
        )
    if (checkout / ".git").exists() and left_by_a_clone(checkout, repo):
        shutil.rmtree(checkout / ".git")  # no checkout, and no other file: what a stopped clone of repo left (see facts)
    work = checkout / CLONING
    done = work / ".git" / CLONED
    if done.is_file() and not _cloned_as_asked(work, repo, ref, done.read_text().strip()):
        _undo_move(work, checkout)  # a complete clone of another repo or commit (the edition changed since it stopped)
    if not done.is_file():
        if work.exists():
            shutil.rmtree(work)  # a clone that stopped midway: only ours is in there, and git resumes nothing of it
        work.mkdir(parents=True)
        atomic_write_text(done, _clone_into(repo, ref, work))
    commit = done.read_text().strip()
    for entry in sorted(work.iterdir()):
        if entry.name != ".git":
            os.replace(entry, checkout / entry.name)
    os.replace(work / ".git", checkout / ".git")  # last: from here on the folder is the checkout
    (checkout / ".git" / CLONED).unlink()
    work.rmdir()
    exclude_local(checkout)
    return commit


def _clone_into(repo: str, ref: str, work: Path) -> str:
    """Fetch ``ref`` of ``repo`` into the empty folder ``work`` and check it out; returns the commit."""
    _run(["init", "-q"], work, "prepare the folder")
    _run(["remote", "add", "origin", repo], work, "set the remote")
    shallow = git(["fetch", "-q", "--depth", "1", "origin", ref], cwd=work)
    if shallow.returncode != 0:  # a server that does not serve commits by name: fetch its branches and find it there
        _run(["fetch", "-q", "--tags", "origin", "+refs/heads/*:refs/remotes/origin/*"], work, f"fetch {repo}")
        target = ref
    else:
        target = "FETCH_HEAD"
    commit = _run(["rev-parse", "--verify", "--quiet", f"{target}^{{commit}}"], work, f"find {ref} in {repo}").stdout.strip()
    _run(["checkout", "-q", "-f", "-B", "master", commit], work, f"check out {commit[:7]}")
    return commit


def exclude_local(checkout: Path) -> None:
    """Keep staged data and training logs out of `git status` (the book's .gitignore does not list them)."""
    path = checkout / ".git" / "info" / "exclude"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else ""
    missing = [line for line in LOCAL_EXCLUDES if line not in text.splitlines()]
    if missing:
        path.write_text(text + ("" if text.endswith("\n") or not text else "\n") + "\n".join(missing) + "\n")


def link_data(checkout: Path, data_root: Path) -> None:
    """Make <checkout>/data-unversioned lead to data.root when the data lives elsewhere."""
    state = data_link_state(checkout, data_root)
    if state == "link":
        os.symlink(data_root, checkout / DATA_FOLDER, target_is_directory=True)
    elif state == "conflict":
        raise BookError(
            f"{checkout / DATA_FOLDER} exists and is not the data root {data_root}: the book's code would not find the staged data there",
            hint=f"set data.root to {checkout / DATA_FOLDER}, or move that folder away so a link to {data_root} can take its place",
        )


def _run(args: list[str], cwd: Path, what: str) -> subprocess.CompletedProcess[str]:
    try:
        proc = git(args, cwd=cwd)
    except FileNotFoundError:
        raise BookError("git is not installed", hint="install it (apt-get install -y git) and run again") from None
    except subprocess.TimeoutExpired:
        raise BookError(f"git could not {what} within {GIT_TIMEOUT_S:.0f} s", hint="check the network and run again") from None
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise BookError(f"git could not {what}: {tail or 'exit ' + str(proc.returncode)}",
                        hint="check book.repo and book.ref and the network; nothing in the folder's data was touched", cwd=str(cwd))
    return proc


def describe(head: str | None, pinned: str) -> str:
    if head is None:
        return "no checkout"
    return f"at {head[:10]}" + ("" if _same_commit(head, pinned) else f" (the profile pins {pinned[:10]})")


def _undo_move(work: Path, checkout: Path) -> None:
    """Remove the clone in ``work`` and what of it was moved up into ``checkout`` before a stop (its own top-level
    entries: the folder held no other file when the clone began)."""
    listed = git(["ls-tree", "--name-only", "HEAD"], cwd=work, timeout_s=30)
    for name in listed.stdout.splitlines() if listed.returncode == 0 else ():
        moved = checkout / name
        if name not in (DATA_FOLDER, CLONING, ".git") and not os.path.lexists(work / name) and os.path.lexists(moved):
            shutil.rmtree(moved) if moved.is_dir() and not moved.is_symlink() else moved.unlink()
    shutil.rmtree(work)


def _cloned_as_asked(work: Path, repo: str, ref: str, commit: str) -> bool:
    """Whether the complete clone in ``work`` is of ``repo`` at ``ref``."""
    try:
        url = git(["config", "--get", "remote.origin.url"], cwd=work, timeout_s=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return False
    return url == repo and _same_commit(commit, ref)


def _same_commit(head: str, ref: str) -> bool:
    return head.startswith(ref) or ref.startswith(head)
