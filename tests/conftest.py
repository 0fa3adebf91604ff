from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.support.book_data import Series, choose_series, write_subset_zips
from tests.support.dataset import Built, build_luna_like, records_of
from tests.support.server import Faults, FileServer

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def built(tmp_path: Path) -> Built:
    """Four LUNA-like subsets (two scans each) plus a plain CSV, about 3.5 MB in all."""
    return build_luna_like(tmp_path / "src", subsets=4, scans=2, raw_bytes=400_000)


@pytest.fixture
def serve(built: Built) -> Iterator[Callable[..., FileServer]]:
    servers: list[FileServer] = []

    def start(faults: Faults | None = None, folder: Path | None = None, **kwargs: object) -> FileServer:
        srv = FileServer(folder or built.folder, faults, records=records_of(built), **kwargs)  # type: ignore[arg-type]
        srv.__enter__()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.__exit__(None, None, None)


@pytest.fixture
def write_profile(tmp_path: Path) -> Callable[..., Path]:
    """Write a profile extending the shipped local.yaml; ``data`` keys are merged over test defaults."""

    def write(data: dict, name: str = "profile.yaml", extends: str = "local.yaml", **top: object) -> Path:
        # every subset the test's data set has, and no book (the shipped local.yaml stages what fits, beside the book's code)
        defaults = {"root": str(tmp_path / "root"), "subsets": "all", "cache_gb_per_subset": 0, "margin_gb": 0, "backoff_s": 0.05, "segment_mb": 1}
        body = {"extends": str(REPO / "configs" / extends), "requirements": {"files": []}, "book": {"enabled": False}, "data": {**defaults, **data},
                **top}
        path = tmp_path / name
        path.write_text(yaml.safe_dump(body, sort_keys=False))
        return path

    return write


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``python -m provision ARGS`` as a subprocess (the way users run it)."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("CI", None)
    return subprocess.run([sys.executable, "-m", "provision", *args], capture_output=True, text=True, timeout=timeout, env=full_env, cwd=REPO)


def stage_and_kill_half_way(profile: Path, server: FileServer, total: int) -> None:
    """Run `provision stage` in a child process and SIGKILL it once the server has sent half of ``total``.

    The server holds every body at that point and the kill waits until the child has read all that was sent (nothing
    left in socket buffers), so the server's count is what the child received: whatever a later run fetches again
    was lost by the child, not by a busy machine's scheduling.
    """
    import signal

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    server.released.clear()
    server.faults.hold_after = total // 2
    proc = subprocess.Popen([sys.executable, "-m", "provision", "stage", "-c", str(profile)], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while server.stats.bytes_sent < total // 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        drained = time.monotonic() + 10
        while server.unread_bytes() and time.monotonic() < drained and proc.poll() is None:
            time.sleep(0.02)
        time.sleep(0.3)  # what it read, written
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.release()


def stage_in_child(profile: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "provision", "stage", "-c", str(profile)], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)


def can_mount_tmpfs() -> bool:
    return os.geteuid() == 0 and sys.platform.startswith("linux")


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """Mount size-limited tmpfs folders (root only); unmounted afterwards."""
    mounts: list[Path] = []

    def mount(size_bytes: int) -> Path:
        if not can_mount_tmpfs():
            pytest.skip("mounting a tmpfs needs root on Linux")
        where = tmp_path / f"tmpfs{len(mounts)}"
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(where)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounts.append(where)
        return where

    yield mount
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture
def read_only() -> Iterator[Callable[[Path], Path]]:
    """Make a folder read-only as Kaggle's /kaggle/input is: a read-only bind mount (as root), else no write bits."""
    mounted: list[Path] = []

    def make(folder: Path) -> Path:
        if can_mount_tmpfs():
            ok = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode == 0
            if ok and subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True).returncode == 0:
                mounted.append(folder)
                return folder
        subprocess.run(["chmod", "-R", "a-w", str(folder)], check=True)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


# ---------------------------------------------------------------- a real GCS endpoint: gcp-storage-emulator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    exe = shutil.which("gcp-storage-emulator") or str(Path(sys.executable).parent / "gcp-storage-emulator")
    if not os.path.exists(exe):
        pytest.skip("gcp-storage-emulator is not installed (pip install -e '.[test]')")
    port = free_port()
    proc = subprocess.Popen([exe, "start", "--host=127.0.0.1", f"--port={port}", "--in-memory"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("the storage emulator did not start")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def bucket(emulator: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from provision.staging.transport import gcs

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    gcs._clients.clear()
    client = storage.Client(project="test", credentials=AnonymousCredentials())
    name = f"luna-{request.node.name.replace('_', '-')[:40].lower().strip('-')}"
    bucket = client.create_bucket(name)
    yield bucket
    gcs._clients.clear()


# ---------------------------------------------------------------- the book's code and an interpreter that runs it

SHARED = REPO.parent / "shared"


BOOK_SKIP = "the book's tests need"  # every skip of a test that runs the book starts so: the run's end counts them
BOOK_URL = "https://github.com/deep-learning-with-pytorch/dlwpt-code"


def skip_or_fail(reason: str) -> None:
    """Skip a test whose parts are missing here; with PROVISION_TEST_REQUIRE_BOOK (scripts/test.sh sets it where the
    book's bundle is, as in CI) that is a failure."""
    if os.environ.get("PROVISION_TEST_REQUIRE_BOOK", "") not in ("", "0"):
        pytest.fail(f"{reason} (PROVISION_TEST_REQUIRE_BOOK is set: these tests must run)")
    pytest.skip(f"{BOOK_SKIP} {reason}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line at the end saying how many of the book's tests were skipped, and how to run them."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if BOOK_SKIP in str(getattr(r, "longrepr", ""))]
    if skipped:
        terminalreporter.write_line(
            f"{len(skipped)} test(s) that run the book's code were skipped: set PROVISION_TEST_BOOK_BUNDLE to a git bundle or a clone "
            f"of dlwpt-code (e.g. PROVISION_TEST_BOOK_BUNDLE={BOOK_URL}) and run scripts/test.sh again", yellow=True)


@pytest.fixture(scope="session")
def book_bundle() -> tuple[str, str]:
    """The book's Part 2 code: a git bundle, a local clone or a clone URL (PROVISION_TEST_BOOK_BUNDLE, else
    ../shared/book/dlwpt-code.bundle), and its commit."""
    return _bundle(os.environ.get("PROVISION_TEST_BOOK_BUNDLE") or str(SHARED / "book" / "dlwpt-code.bundle"))


@pytest.fixture(scope="session")
def book2_bundle() -> tuple[str, str]:
    """The second edition's Part 2 code (PROVISION_TEST_BOOK2_BUNDLE, else ../shared/book/dlwpt-code-2e.bundle), and its commit."""
    return _bundle(os.environ.get("PROVISION_TEST_BOOK2_BUNDLE") or str(SHARED / "book" / "dlwpt-code-2e.bundle"))


def _bundle(spec: str) -> tuple[str, str]:
    if "://" in spec or Path(spec).is_dir():
        heads = subprocess.run(["git", "ls-remote", spec, "HEAD"], capture_output=True, text=True, timeout=120)
        if heads.returncode != 0 or not heads.stdout.split():
            skip_or_fail(f"the book's code from {spec}, which git cannot read: {heads.stderr.strip()[-300:]}")
        return spec, heads.stdout.split()[0]
    if not Path(spec).is_file():
        skip_or_fail(f"the book's code: no bundle at {spec}")
    heads = subprocess.run(["git", "bundle", "list-heads", spec], capture_output=True, text=True, check=True).stdout
    return spec, heads.split()[0]


def profile_writer(tmp_path: Path, bundle: tuple[str, str], folder: str, name: str, book_defaults: dict) -> Callable[..., Path]:
    """Write a profile whose book comes from ``bundle`` (with ``book_defaults``), data.root <tmp>/<folder>/data-unversioned
    unless given; the writer takes more book and data keys, the file's name and top-level keys."""

    def write(book: dict | None = None, data: dict | None = None, name: str = name, **top: object) -> Path:
        spec, commit = bundle
        body = {
            "extends": str(REPO / "configs" / "local.yaml"),
            "requirements": {"files": []},
            "data": {"root": str(tmp_path / folder / "data-unversioned"), "subsets": "0", "cache_gb_per_subset": 0, "margin_gb": 0,
                     **(data or {})},
            "book": {**book_defaults, "repo": str(spec), "ref": commit, **(book or {})},
            **top,
        }
        path = tmp_path / name
        path.write_text(yaml.safe_dump(body, sort_keys=False))
        return path

    return write


@pytest.fixture
def book_profile(tmp_path: Path, book_bundle: tuple[str, str]) -> Callable[..., Path]:
    """A profile whose book comes from the bundle; data.root is <tmp>/dlwpt-code/data-unversioned unless given."""
    return profile_writer(tmp_path, book_bundle, "dlwpt-code", "book.yaml", {"enabled": False})


@pytest.fixture
def book2_profile(tmp_path: Path, book2_bundle: tuple[str, str]) -> Callable[..., Path]:
    """A profile for the second edition from its bundle; data.root is <tmp>/dlwpt-code-2e/data-unversioned unless given."""
    return profile_writer(tmp_path, book2_bundle, "dlwpt-code-2e", "book2.yaml", {"edition": 2})


def interpreter_with_torch(venv: Path, torch_spec: str | None) -> Path:
    """The book's interpreter in ``venv`` (made if missing) with torch: PROVISION_TEST_TORCH installed when it has none.
    Where that cannot be installed (no PyTorch index, no local wheel) the test skips saying so, as scripts/test.sh
    says, or fails saying so under PROVISION_TEST_REQUIRE_BOOK."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    if subprocess.run([str(python), "-c", "import torch"], capture_output=True).returncode == 0:
        return python
    if not torch_spec:
        skip_or_fail("torch for the book's interpreter (PROVISION_TEST_TORCH; scripts/test.sh sets a CPU build)")
    got = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *str(torch_spec).split()],
                         capture_output=True, text=True)
    if got.returncode != 0:
        skip_or_fail(f"torch for the book's interpreter, which `pip install {torch_spec}` could not install here: "
                     f"{(got.stderr.strip().splitlines() or ['no output'])[-1][:300]}")
    return python


def pins_here(requirements: Path, wheels: Path) -> tuple[str, list[str]]:
    """``requirements`` with each ``name==version`` pin the wheel folder holds no wheel of left unpinned (a folder filled
    from an index that lacks that release), and the pins so loosened."""
    import re

    held = {re.sub(r"[-_.]+", "-", w.name.split("-")[0]).lower() + "==" + w.name.split("-")[1] for w in wheels.glob("*.whl")}
    out, loosened = [], []
    for line in requirements.read_text().splitlines():
        pin = re.match(r"^\s*([A-Za-z0-9_.-]+)==([^;\s]+)", line)
        if pin and f"{re.sub(r'[-_.]+', '-', pin.group(1)).lower()}=={pin.group(2)}" not in held:
            loosened.append(f"{pin.group(1)}=={pin.group(2)}")
            line = pin.group(1) + line[pin.end():]
        out.append(line)
    return "\n".join(out) + "\n", loosened


@pytest.fixture(scope="session")
def book2_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An interpreter with the second edition's requirements (configs/requirements/dlwpt-2e.txt), installed by a real
    `provision install` from the local wheel folder; pins of releases that folder lacks are left unpinned (and named in
    the install's log). PROVISION_TEST_BOOK2_VENV keeps it between runs."""
    wheels = os.environ.get("PROVISION_TEST_WHEELS")
    torch_spec = os.environ.get("PROVISION_TEST_TORCH")
    if not wheels or not Path(wheels).is_dir():
        skip_or_fail("a wheel folder of its requirements (PROVISION_TEST_WHEELS): run the tests with scripts/test.sh, which fills one")
    venv = Path(os.environ.get("PROVISION_TEST_BOOK2_VENV") or tmp_path_factory.mktemp("book2-venv") / "venv")
    python = interpreter_with_torch(venv, torch_spec)
    where = tmp_path_factory.mktemp("book2-install")
    text, loosened = pins_here(REPO / "configs" / "requirements" / "dlwpt-2e.txt", Path(wheels))
    (where / "requirements-2e-here.txt").write_text(text)
    (where / "install.yaml").write_text(yaml.safe_dump({
        "extends": str(REPO / "configs" / "local.yaml"),
        "requirements": {"files": [str(where / "requirements-2e-here.txt")], "venv": str(venv), "find_links": [wheels], "no_index": True},
        "data": {"root": str(where / "root")},
    }))
    proc = run_cli("install", "-c", str(where / "install.yaml"), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"book2_python: pins this wheel folder lacks, installed unpinned: {', '.join(loosened) or 'none'}")
    return str(python)


@pytest.fixture(scope="session")
def book_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An interpreter with the book's requirements, installed by a real `provision install` from a local wheel folder.

    The folder (PROVISION_TEST_WHEELS) is filled by scripts/test.sh with `pip download`; torch comes from
    PROVISION_TEST_TORCH (a CPU build) as it would already be there on Colab. PROVISION_TEST_BOOK_VENV keeps the
    virtual environment between runs.
    """
    wheels = os.environ.get("PROVISION_TEST_WHEELS")
    torch_spec = os.environ.get("PROVISION_TEST_TORCH")
    if not wheels or not Path(wheels).is_dir():
        skip_or_fail("a wheel folder of its requirements (PROVISION_TEST_WHEELS): run the tests with scripts/test.sh, which fills one")
    venv = Path(os.environ.get("PROVISION_TEST_BOOK_VENV") or tmp_path_factory.mktemp("book-venv") / "venv")
    python = interpreter_with_torch(venv, torch_spec)
    profile = tmp_path_factory.mktemp("book-install") / "install.yaml"
    profile.write_text(yaml.safe_dump({
        "extends": str(REPO / "configs" / "local.yaml"),
        "requirements": {"files": [str(REPO / "configs" / "requirements" / "dlwpt.txt")], "venv": str(venv),
                         "find_links": [wheels], "no_index": True},
        "data": {"root": str(profile.parent / "root")},
    }))
    proc = run_cli("install", "-c", str(profile), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(python)


@dataclass(frozen=True)
class Scans:
    folder: Path             # subset0.zip, subset1.zip
    manifest: Path
    subsets: list[list[Series]]
    absent: list[Series]     # in the CSVs, never staged


@pytest.fixture(scope="session")
def scans(tmp_path_factory: pytest.TempPathFactory, book_bundle: tuple[str, str]) -> Scans:
    """Seven series from the book's CSVs: subsets 0 and 1 of three scans each (about 15 MB zipped each), and one only in the CSVs."""
    where = tmp_path_factory.mktemp("book-scans")
    reference = where / "book"
    subprocess.run(["git", "clone", "-q", str(book_bundle[0]), str(reference)], check=True)
    chosen = choose_series(reference, 7)
    subsets = [chosen[:3], chosen[3:6]]
    paths = write_subset_zips(where / "zips", subsets)
    import hashlib

    files = [{"key": p.name, "size": p.stat().st_size, "md5": hashlib.md5(p.read_bytes()).hexdigest(), "unpack": True} for p in paths]
    manifest = where / "luna-synthetic.yaml"
    manifest.write_text(yaml.safe_dump({"name": "luna-synthetic", "dir": "part2/luna", "unpack_ratio": 4.0, "files": files}))
    return Scans(where / "zips", manifest, subsets, chosen[6:])
