"""Long work shows it is alive: the staging bar's clock runs while no bytes arrive, in the plan's decimal units; other
lines (the cache's) are written above the bar, never through it; an installer's output is shown as it comes, with a
line while it is silent; and a cause that fails every file is explained once, not once per file."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import socket
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from provision.cli import main
from tests.conftest import REPO, free_port
from tests.support.dataset import Built, build_luna_like
from tests.support.server import Faults


def closed_port() -> int:
    """A loopback port nothing listens on: connecting is refused, as with a host that cannot be reached."""
    port = free_port()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    return port


def test_a_source_that_cannot_be_reached_is_explained_once_not_per_file(built: Built, write_profile, capsys) -> None:
    profile = write_profile({"dataset": str(built.manifest), "sources": ["zenodo"], "zenodo_url": f"http://127.0.0.1:{closed_port()}",
                             "subsets": "0-3", "retries": 1, "backoff_s": 0.01})
    assert main(["stage", "-c", str(profile)]) == 1
    captured = capsys.readouterr()
    failed = [line for line in captured.out.splitlines() if line.split()[1:2] == ["failed"]]
    assert len(failed) == 5, captured.out  # four archives and the CSV
    hints = [line for line in captured.out.splitlines() if line.strip().startswith("hint:")]
    assert len(hints) == 1 and "could not reach 127.0.0.1" in hints[0], captured.out
    assert "trying the next source" not in captured.err + captured.out, "there is no next source to try"
    assert "no other source to try" in captured.err


def test_up_says_a_shared_cause_once_too(built: Built, write_profile, capsys) -> None:
    profile = write_profile({"dataset": str(built.manifest), "sources": ["zenodo"], "zenodo_url": f"http://127.0.0.1:{closed_port()}",
                             "subsets": "0-1", "retries": 1, "backoff_s": 0.01})
    assert main(["up", "-c", str(profile), "--only", "data"]) == 1
    out = capsys.readouterr().out
    assert out.count("hint:") == 1 and out.count("could not be fetched") == 3, out


class Terminal:
    """A child process whose stderr is a pseudo-terminal, as a reader's is: what it draws is read as it comes."""

    def __init__(self, args: list[str]) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a terminal's size, as a reader's has
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, cwd=REPO,
                                     env=dict(os.environ))
        os.close(slave)
        self.seen = b""

    def read_for(self, seconds: float) -> str:
        """What was drawn over the next ``seconds``."""
        start, got = time.monotonic(), b""
        while time.monotonic() - start < seconds:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the child closed its end
                    break
                got += chunk
        self.seen += got
        return got.decode(errors="replace")

    def finish(self, timeout: float = 120) -> int:
        code = self.proc.wait(timeout)
        self.read_for(0.3)
        os.close(self.master)
        return code


def test_the_bar_clock_runs_while_no_bytes_arrive_in_decimal_units(tmp_path: Path, serve, write_profile) -> None:
    data = build_luna_like(tmp_path / "big", subsets=1, scans=2, raw_bytes=6_000_000)
    srv = serve(Faults(hold_after=2_000_000), folder=data.folder)
    profile = write_profile({"dataset": str(data.manifest), "sources": [srv.url + "/mirror/"], "subsets": "0", "connections": 1,
                             "mode": "archive"})
    term = Terminal([sys.executable, "-m", "provision", "stage", "-c", str(profile)])
    try:
        deadline = time.monotonic() + 30
        while srv.stats.bytes_sent < 2_000_000 and time.monotonic() < deadline:
            term.read_for(0.2)
        assert srv.stats.bytes_sent >= 2_000_000, "the server never got to its stall"
        term.read_for(0.5)
        sent = srv.stats.bytes_sent
        stalled = term.read_for(3.2)  # no byte arrives in these seconds
        assert srv.stats.bytes_sent == sent
    finally:
        srv.release()
    assert term.finish() == 0, term.seen.decode(errors="replace")[-3000:]
    redraws = [r for r in re.split(r"[\r\n]", stalled) if r.startswith("staging")]
    clocks = [int(m.group(1)) for r in redraws if (m := re.search(r" in (\d+) s", r))]
    assert len(redraws) >= 3 and len(set(clocks)) >= 3, f"the bar must be redrawn, its clock running, while stalled: {redraws} {term.seen[-2000:]!r}"
    assert clocks == sorted(clocks)
    units = re.search(r"\| (\d+\.\d) (kB|MB|GB) of (\d+\.\d) (kB|MB|GB) in", redraws[-1])
    assert units, redraws[-1]
    total = sum(f["size"] for f in data.files.values())
    assert units.group(3) == f"{total / 1e6:.1f}" and units.group(4) == "MB", "the plan's decimal megabytes, not tqdm's binary M"
    assert not re.search(r"\d(\.\d)?[kMG]i?B?/", stalled), "no tqdm units beside ours"


def test_lines_from_other_threads_are_written_above_the_bar_never_through_it() -> None:
    from provision.progress import Console

    out = io.StringIO()
    console = Console(out)
    progress = console.progress(66_000_000_000, bar=True)
    try:
        progress("bytes", key="subset0.zip", n=23_300_000)
        console.say("cache ch11: subset0/1.2.3: built 12 entries")
        progress("bytes", key="subset0.zip", n=1_000_000)
    finally:
        progress.close()
    lines = out.getvalue().split("\n")
    said = [line for line in lines if "cache ch11" in line]
    assert len(said) == 1 and said[0].rsplit("\r", 1)[-1] == "cache ch11: subset0/1.2.3: built 12 entries", lines
    assert "23.3 MB of 66.0 GB" in out.getvalue()


def test_quiet_shows_no_progress_at_all() -> None:
    from provision.progress import Console

    out = io.StringIO()
    console = Console(out, quiet=True)
    progress = console.progress(1_000_000, bar=True)
    progress("bytes", key="a", n=1000)
    progress("retry", key="a", message="a: retrying")
    console.say("cache ch11: built")
    progress.close()
    assert out.getvalue() == ""


def test_an_installers_output_is_shown_as_it_comes_and_its_silence_gets_a_heartbeat(tmp_path: Path) -> None:
    from provision.install import InstallCommand, InstallPlan, run_install

    slow = tmp_path / "installer.py"  # a real child that talks, then is silent for a while, as pip downloading a CUDA torch
    slow.write_text("import sys, time\nprint('Collecting torch', flush=True)\ntime.sleep(2.5)\nprint('Successfully installed torch-2.11.0', flush=True)\n")
    plan = InstallPlan(sys.executable, sys.executable, (), None, "", (InstallCommand((sys.executable, str(slow)), ("torch",)),), ())
    started = time.monotonic()
    said: list[tuple[float, str]] = []
    run_install(plan, dict(os.environ), lambda line: said.append((time.monotonic() - started, line)), heartbeat_s=0.5)
    first = next(t for t, line in said if "Collecting torch" in line)
    assert first < 1.5, f"the installer's first line is shown as it comes, not when it ends: {said}"
    beats = [line for t, line in said if line.startswith("still installing torch")]
    assert len(beats) >= 3 and "so far" in beats[-1], said
    assert said[-1][1].strip() == "Successfully installed torch-2.11.0"


def test_a_failing_installer_still_gives_its_last_lines(tmp_path: Path) -> None:
    from provision.errors import CommandError
    from provision.install import InstallCommand, InstallPlan, run_install

    failing = tmp_path / "installer.py"
    failing.write_text("import sys\nfor i in range(40): print(f'line {i}')\nprint('ERROR: No matching distribution for gamma==9.9', file=sys.stderr)\nsys.exit(1)\n")
    plan = InstallPlan(sys.executable, sys.executable, (), None, "", (InstallCommand((sys.executable, str(failing)), ("gamma==9.9",)),), ())
    with pytest.raises(CommandError) as failed:
        run_install(plan, dict(os.environ), lambda line: None)
    assert "gamma==9.9 failed (exit 1)" in failed.value.message and failed.value.message.endswith("No matching distribution for gamma==9.9")
    assert "line 39" in failed.value.message and "line 10" not in failed.value.message
