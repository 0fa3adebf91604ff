"""What a newcomer meets: a failure reported as itself, and messages that say what happened and what to do."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from provision.cli import main
from tests.conftest import REPO
from tests.support.dataset import Built
from tests.support.server import Faults


def test_an_injected_failure_is_reported_as_itself_not_as_another_files_disk_space(built: Built, serve, write_profile, monkeypatch,
                                                                                   capsys) -> None:
    """A bug while unpacking one archive stops the run; the others end as "stopped", and the cause shown is the bug."""
    import provision.staging.engine as engine

    real = engine.extract_file

    def failing(ctx, f, archive, only, result):  # noqa: ANN001, ANN202
        if f.key == "subset1.zip":
            raise RuntimeError("injected failure while unpacking")
        return real(ctx, f, archive, only, result)

    monkeypatch.setattr(engine, "extract_file", failing)
    srv = serve(Faults(rate_per_conn=400_000))  # the other archives are still arriving when subset1 fails
    profile = write_profile({"dataset": str(built.manifest), "sources": [srv.url + "/mirror/"], "files_in_flight": 4})
    code = main(["stage", "-c", str(profile)])
    err = capsys.readouterr().err
    assert code == 1
    assert "internal error" in err and "RuntimeError: injected failure while unpacking" in err, err
    assert "disk" not in err.split("hint:")[0], "no disk-space stop that did not happen"
    assert "Traceback" not in err


def test_a_cpu_machine_is_told_what_was_checked(write_profile, tmp_path: Path, monkeypatch, capsys) -> None:
    """`up` on a machine without a GPU, with a profile that does not require one: not a bare "cuda ok"."""
    monkeypatch.setenv("PATH", str(tmp_path / "no-nvidia-smi"))
    profile = write_profile({"subsets": "0"}, cuda={"required": False})
    code = main(["up", "-c", str(profile), "--only", "cuda"], environ={"HOME": str(tmp_path), "PATH": str(tmp_path / "no-nvidia-smi")})
    out = capsys.readouterr().out
    assert code == 0
    assert "no GPU" in out and "not required by this profile" in out, out
    assert "cuda       ok" not in out


def test_install_commands_are_progress_not_warnings(tmp_path: Path, monkeypatch, capsys) -> None:
    from provision import install
    from provision.config import load_config
    from provision.facts import build_plan
    from provision.steps import install as install_step

    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    profile = tmp_path / "p.yaml"
    profile.write_text(f"extends: {REPO / 'configs' / 'local.yaml'}\nrequirements: {{files: [], packages: ['not-a-real-package-xyz'], installer: pip, "
                       f"find_links: ['{wheel_dir}'], no_index: true}}\ndata: {{root: '{tmp_path / 'root'}'}}\n")
    config = load_config(str(profile), environ={"HOME": str(tmp_path)})
    plan = build_plan(config, {"HOME": str(tmp_path)})
    with pytest.raises(install.CommandError):
        install_step(plan, {"PATH": "/usr/bin:/bin"})
    err = capsys.readouterr().err
    assert "install: running" in err and "WARNING" not in err, err


def test_an_unresolvable_host_fails_within_a_minute_with_what_was_tried_and_what_to_do(built: Built, write_profile, monkeypatch,
                                                                                       capsys) -> None:
    """No DNS for the host (no network, a typo): a FAKE resolver, as no test may ask a real one. Fails fast, with a hint."""
    import time

    real = socket.getaddrinfo

    def resolver(host, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if host == "mirror.example.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    profile = write_profile({"dataset": str(built.manifest), "sources": ["https://mirror.example.invalid/luna/"], "subsets": "0",
                             "backoff_s": 1.0})
    start = time.monotonic()
    code = main(["stage", "-c", str(profile), "--json"])
    elapsed = time.monotonic() - start
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and elapsed < 60, elapsed
    failed = [f for f in report["files"] if f["outcome"] == "failed"]
    assert failed and all("mirror.example.invalid" in f["error"] and "resolve" in f["error"] for f in failed), failed
    assert all("network" in f["hint"] and "data.sources" in f["hint"] and "mirror" in f["hint"] for f in failed), failed
