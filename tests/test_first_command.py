"""The README's first command on an ordinary machine: the default stages the subsets that fit (and says so first), the
local profile gets the book's code; typos are refused at plan time; what a stopped run leaves never blocks the next."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from provision.cli import main
from provision.environment import current, detect
from provision.manifest import format_subsets
from tests.conftest import REPO, run_cli
from tests.support.dataset import Built, tree_md5s
from tests.test_scripts import offline_venv, run_script
from tests.test_tight_disks import pin_unpacked_sizes


def local_args(built: Built, root: Path, url: str) -> list[str]:
    """The shipped local profile, as `bash scripts/provision.sh` picks it on a workstation, on the test's data set."""
    return ["-c", "local", "--root", str(root), "--set", f"data.dataset={built.manifest}", "--set", f"data.sources=[{url}/mirror/]",
            "--set", "data.cache_gb_per_subset=0", "--set", "data.margin_gb=0", "--set", "data.backoff_s=0.05", "--set", "requirements.files=[]"]


def disk_for_two_subsets(built: Built, small_tmpfs) -> Path:  # type: ignore[no-untyped-def]
    """A disk that holds two of the four subsets (with their archives on the way), not all: streaming them all needs more."""
    pin_unpacked_sizes(built)
    zips = [built.files[f"subset{n}.zip"] for n in range(4)]
    room = sum(z["unpacked_size"] + z["size"] for z in zips[:2]) + built.files["annotations.csv"]["size"] + 256 * 1024
    assert room < sum(z["unpacked_size"] for z in zips), "not even streaming all four fits"
    return small_tmpfs(room)  # type: ignore[no-any-return]


def subsets_staged(root: Path) -> set[str]:
    luna = root / "part2" / "luna"
    return {p.name for p in luna.glob("subset*") if any(p.glob("*.mhd"))} if luna.is_dir() else set()


def test_the_default_stages_the_subsets_that_fit_and_says_so_before_writing(built: Built, serve, small_tmpfs, tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture[str]) -> None:
    disk = disk_for_two_subsets(built, small_tmpfs)
    root = disk / "dlwpt-code" / "data-unversioned"
    srv = serve()
    args = local_args(built, root, srv.url)

    assert main(["plan", *args, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    chosen = plan["data"]["subsets"]
    assert 1 <= len(chosen) < 4 and plan["feasible"], "as many as fit, not all four, and not a refusal"
    left_out = plan["data"]["subsets_left_out"]
    assert "of 0-3, the ones that fit" in left_out and "--subsets all" in left_out and "--root" in left_out, left_out
    assert srv.stats.requests == [] and not root.exists()

    assert main(["up", *args, "--only", "preflight", "--only", "data"]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"note: {left_out}"), "said before anything else, so before a byte is written: " + err[:400]
    assert subsets_staged(root) == {f"subset{n}" for n in chosen}
    expected = {name: md5 for key, info in built.files.items() if key.endswith(".zip") and int(key[6:-4]) in chosen
                for name, md5 in info["members"].items()}
    assert {k: v for k, v in tree_md5s(root / "part2" / "luna").items() if k.endswith((".mhd", ".raw"))} == expected
    # a mirror under fit copies what this machine's disk holds: it says so, as up and stage do
    assert main(["mirror", *args, "--to", str(tmp_path / "mirror"), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"note: staging subsets {format_subsets(tuple(chosen))} of 0-3") and "--subsets all" in err, err
    # what fit was staged: verify and status speak of it, not of the subsets the disk left out (as missing)
    assert main(["verify", *args, "--json"]) == 0
    verified = json.loads(capsys.readouterr().out)
    assert sorted(r["key"] for r in verified["files"] if r["key"].endswith(".zip")) == [f"subset{n}.zip" for n in chosen], verified
    assert main(["status", *args, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert {r["key"] for r in status["files"]} == {f"subset{n}.zip" for n in chosen} | {"annotations.csv"}, status

    # asked for all of them by name: a refusal before anything is fetched, as before
    requests = len(srv.stats.requests)
    assert main(["up", *args, "--subsets", "all", "--only", "preflight", "--only", "data"]) == 3
    err = capsys.readouterr().err
    assert "error: not enough disk space" in err and "hint:" in err
    assert len(srv.stats.requests) == requests and subsets_staged(root) == {f"subset{n}" for n in chosen}
    # and a list that does not fit is refused the same way
    assert main(["up", *args, "--subsets", "0-3", "--only", "preflight", "--only", "data"]) == 3
    assert "not enough disk space" in capsys.readouterr().err


def test_where_not_one_subset_fits_the_default_still_refuses(built: Built, serve, small_tmpfs, capsys: pytest.CaptureFixture[str]) -> None:
    disk = small_tmpfs(256 * 1024)
    srv = serve()
    assert main(["up", *local_args(built, disk / "dlwpt-code" / "data-unversioned", srv.url), "--only", "preflight", "--only", "data"]) == 3
    err = capsys.readouterr().err
    assert "error: not enough disk space" in err and "not even one subset fits" in err and "--root" in err
    assert "note:" not in err and srv.stats.requests == []


def test_provision_sh_on_a_disk_too_small_for_all_stages_what_fits(built: Built, serve, small_tmpfs, tmp_path: Path) -> None:
    disk = disk_for_two_subsets(built, small_tmpfs)
    root = disk / "dlwpt-code" / "data-unversioned"
    srv = serve()
    env = {"PROVISION_VENV": str(offline_venv(tmp_path / "venv")), "PROVISION_PIP_ARGS": "--no-index --no-build-isolation --no-deps",
           "PROVISION_ENVIRONMENT": "local"}
    done = run_script([*local_args(built, root, srv.url), "--only", "preflight", "--only", "data"], env)
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    assert "note: staging subsets 0-" in done.stderr and "--subsets all" in done.stderr
    assert 1 <= len(subsets_staged(root)) < 4


def test_the_local_profile_gets_the_book_code_where_the_readme_says_to_run_part2(tmp_path: Path) -> None:
    from provision.config import load_config

    config = load_config("local", environ={"HOME": str(tmp_path)})
    assert config.book.enabled and config.data.root == str(tmp_path / "dlwpt-code" / "data-unversioned")
    assert config.data.subsets == "fit"
    readme = (REPO / "README.md").read_text()
    assert "code (in `~/dlwpt-code`, on a workstation too)" in readme


# ---------------------------------------------------------------- typos


def test_a_source_that_is_no_name_url_or_folder_is_refused_with_a_did_you_mean(built: Built, serve, write_profile, tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    srv = serve()
    profile = write_profile({"dataset": str(built.manifest), "sources": [srv.url + "/mirror/"]})
    monkeypatch.chdir(tmp_path)
    assert main(["plan", "-c", str(profile), "--set", "data.sources=[zenod]"]) == 2
    out = capsys.readouterr().out
    assert "data.sources[0]" in out and "(did you mean 'zenodo'?)" in out, out
    assert main(["stage", "-c", str(profile), "--set", "data.sources=[zenod]"]) == 2
    err = capsys.readouterr().err
    assert "error: data.sources[0]" in err and "did you mean 'zenodo'?" in err and "hint:" in err
    assert main(["stage", "--dry-run", "-c", str(profile), "--set", "data.sources=[zenod]"]) == 2, "the same exit code as plan and stage"
    assert "(did you mean 'zenodo'?)" in capsys.readouterr().out
    assert srv.stats.requests == [] and not (tmp_path / "zenod").exists() and not (tmp_path / "root").exists()
    # an existing folder is a source; a folder being mirrored into is written, not read, and need not exist yet
    drive = tmp_path / "drive" / "luna16"
    assert main(["mirror", "-c", str(profile), "--to", str(drive), "--set", f"data.sources=[{drive}/, {srv.url}/mirror/]", "--dry-run"]) == 0
    capsys.readouterr()
    assert main(["mirror", "-c", str(profile), "--to", str(drive), "--set", f"data.sources=[zenod, {srv.url}/mirror/]", "--dry-run"]) == 2
    assert main(["plan", "-c", str(profile), "--set", f"data.sources=[{built.folder}]"]) == 0


def test_an_unknown_provision_environment_is_named_and_ignored(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    env = detect({"PROVISION_ENVIRONMENT": "colb"}, colab_importable=False, dmi={})
    assert env.kind == "local" and "no sign of Kaggle, Colab or a cloud VM" in env.reasons
    assert env.warnings and "did you mean 'colab'?" in env.warnings[0] and "kaggle, colab, vm, local" in env.warnings[0]
    assert main(["plan", "-c", "ci", "--root", str(tmp_path / "r"), "--json"], environ={"PROVISION_ENVIRONMENT": "colb", "HOME": str(tmp_path)}) == 0
    assert "warning: PROVISION_ENVIRONMENT is 'colb'" in capsys.readouterr().err
    assert main(["plan", "-q", "-c", "ci", "--root", str(tmp_path / "r"), "--json"], environ={"PROVISION_ENVIRONMENT": "colb", "HOME": str(tmp_path)}) == 0
    assert capsys.readouterr().err == "", "--quiet: only errors and the summary"


def test_the_reason_names_the_variable_when_it_decided() -> None:
    for kind in ("colab", "vm", "local", "kaggle"):
        env = current({"PROVISION_ENVIRONMENT": kind})
        assert env.kind == kind and env.reasons[0] == f"PROVISION_ENVIRONMENT is {kind}" and not env.warnings
    assert detect({"PROVISION_ENVIRONMENT": "local", "COLAB_RELEASE_TAG": "x"}, colab_importable=True, dmi={}).kind == "local"


# ---------------------------------------------------------------- what a stopped run leaves


def git_that_drops(tmp_path: Path, *, kill: bool) -> tuple[Path, Path]:
    """STAND-IN for a network that drops (or a kill) mid-clone: a `git` on PATH whose fetch gets part of the objects, then
    fails as git does when the remote hangs up, or kills the provision process that ran it. Only while the flag file is there."""
    real = shutil.which("git")
    assert real
    bin_dir, flag = tmp_path / "bin", tmp_path / "drop-the-network"
    bin_dir.mkdir()
    stop = 'kill -9 "$PPID"; sleep 5' if kill else 'echo "fatal: the remote end hung up unexpectedly" >&2; exit 128'
    (bin_dir / "git").write_text(f'#!/bin/sh\nif [ "$1" = fetch ] && [ -e "{flag}" ]; then\n  "{real}" "$@" >/dev/null 2>&1\n  {stop}\nfi\n'
                                 f'exec "{real}" "$@"\n')
    (bin_dir / "git").chmod(0o755)
    flag.touch()
    return bin_dir, flag


def assert_a_whole_checkout(book: Path, commit: str) -> None:
    assert (book / "p2ch14" / "training.py").is_file() and (book / "data" / "part2" / "luna" / "annotations.csv").is_file()
    head = subprocess.run(["git", "-C", str(book), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert head == commit
    assert not (book / ".provision-clone").exists()


def test_a_clone_that_failed_midway_does_not_block_the_retry(book_profile, book_bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    bin_dir, flag = git_that_drops(tmp_path, kill=False)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    profile = book_profile(book={"enabled": True})
    book = tmp_path / "dlwpt-code"
    assert main(["book", "-c", str(profile)]) == 1
    assert "git could not fetch" in capsys.readouterr().err
    assert not (book / ".git").exists(), "no half a checkout under the book's name"
    flag.unlink()
    assert main(["plan", "-c", str(profile)]) == 0, capsys.readouterr().out
    assert main(["book", "-c", str(profile)]) == 0, capsys.readouterr().err
    assert_a_whole_checkout(book, book_bundle[1])


def test_a_clone_killed_midway_does_not_block_the_retry(book_profile, book_bundle, tmp_path: Path) -> None:
    bin_dir, flag = git_that_drops(tmp_path, kill=True)
    profile = book_profile(book={"enabled": True})
    book = tmp_path / "dlwpt-code"
    killed = run_cli("book", "-c", str(profile), env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO)})
    assert killed.returncode == -9, killed.stderr
    assert (book / ".provision-clone" / ".git").is_dir(), "the kill came while fetching"
    flag.unlink()
    again = run_cli("book", "-c", str(profile), env={"PYTHONPATH": str(REPO)})
    assert again.returncode == 0, again.stderr
    assert_a_whole_checkout(book, book_bundle[1])


def test_a_clone_stopped_while_moving_into_place_is_finished_by_the_next_run(book_profile, book_bundle, tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from provision.book import checkout

    real_replace = os.replace
    moved: list[str] = []

    def stopped_halfway(src, dst):  # type: ignore[no-untyped-def]
        if Path(src).parent.name == checkout.CLONING and len(moved) == 3:
            raise KeyboardInterrupt  # STAND-IN for Ctrl-C between two renames, a moment too short to hit from outside
        moved.append(str(src))
        real_replace(src, dst)

    profile = book_profile(book={"enabled": True})
    book = tmp_path / "dlwpt-code"
    monkeypatch.setattr(os, "replace", stopped_halfway)
    assert main(["book", "-c", str(profile)]) == 130
    monkeypatch.setattr(os, "replace", real_replace)
    assert not (book / ".git").exists() and len(list(book.iterdir())) > 2
    assert main(["book", "-c", str(profile)]) == 0
    assert_a_whole_checkout(book, book_bundle[1])
    status = subprocess.run(["git", "-C", str(book), "status", "--porcelain", "--untracked-files=all"], capture_output=True, text=True)
    assert [line for line in status.stdout.splitlines() if not line.startswith(" M ")] == [], status.stdout


def test_a_clone_stopped_while_moving_into_place_is_not_finished_as_another_edition(book_profile, book2_bundle, tmp_path: Path,
                                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped half-way into place, then asked for the other edition: the first clone and what of it was moved go, and
    the folder is a whole checkout of the edition asked for, not a mix of both."""
    from provision.book import checkout

    real_replace = os.replace
    moved: list[str] = []

    def stopped_halfway(src, dst):  # type: ignore[no-untyped-def]
        if Path(src).parent.name == checkout.CLONING and len(moved) == 3:
            raise KeyboardInterrupt  # STAND-IN for Ctrl-C between two renames
        moved.append(str(src))
        real_replace(src, dst)

    book = tmp_path / "dlwpt-code"
    monkeypatch.setattr(os, "replace", stopped_halfway)
    assert main(["book", "-c", str(book_profile(book={"enabled": True}))]) == 130
    monkeypatch.setattr(os, "replace", real_replace)
    assert (book / checkout.CLONING / ".git" / checkout.CLONED).is_file() and len(moved) == 3
    bundle, commit = book2_bundle
    second = book_profile(book={"enabled": True, "edition": 2, "repo": str(bundle), "ref": commit,
                                "fixes": str(REPO / "configs" / "book" / "dlwpt-code-2e.yaml")}, name="second.yaml")
    assert main(["book", "-c", str(second)]) == 0
    assert_a_whole_checkout(book, commit)
    assert (book / "p2ch15" / "utils.py").is_file() and not (book / "p2ch10").exists(), "the second edition alone"


def test_what_an_earlier_version_left_of_a_failed_clone_is_cleared(book_profile, book_bundle, tmp_path: Path) -> None:
    profile = book_profile(book={"enabled": True})
    book = tmp_path / "dlwpt-code"
    book.mkdir()
    subprocess.run(["git", "init", "-q", str(book)], check=True)
    subprocess.run(["git", "-C", str(book), "remote", "add", "origin", book_bundle[0]], check=True)
    assert main(["book", "-c", str(profile)]) == 0
    assert_a_whole_checkout(book, book_bundle[1])


def test_a_repository_of_the_readers_own_is_never_cleared(book_profile, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profile = book_profile(book={"enabled": True})
    book = tmp_path / "dlwpt-code"
    book.mkdir()
    subprocess.run(["git", "init", "-q", str(book)], check=True)
    subprocess.run(["git", "-C", str(book), "remote", "add", "origin", "https://example.invalid/mine.git"], check=True)
    assert main(["book", "-c", str(profile)]) == 3
    assert "holds other files: .git" in capsys.readouterr().err
    assert (book / ".git" / "config").read_text().count("example.invalid") == 1
