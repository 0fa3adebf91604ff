from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

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
        defaults = {"root": str(tmp_path / "root"), "reserve_gb": 0, "margin_gb": 0, "backoff_s": 0.05, "segment_mb": 1}
        body = {"extends": str(REPO / "configs" / extends), "requirements": {"files": []}, "data": {**defaults, **data}, **top}
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
    """Run `provision stage` in a child process and SIGKILL it once the server has sent half of ``total``."""
    import signal

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "provision", "stage", "-c", str(profile)], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while server.stats.bytes_sent < total // 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


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

    from provision.staging import gcs

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    gcs._clients.clear()
    client = storage.Client(project="test", credentials=AnonymousCredentials())
    name = f"luna-{request.node.name.replace('_', '-')[:40].lower().strip('-')}"
    bucket = client.create_bucket(name)
    yield bucket
    gcs._clients.clear()
