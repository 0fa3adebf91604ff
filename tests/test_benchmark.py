"""The benchmark script runs end to end in --quick mode and prints its table (timings are not asserted)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from tests.conftest import REPO


def test_quick_benchmark_prints_the_table(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "stage_bench.py"), "--quick", "--work", str(tmp_path / "w")],
                          capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for scenario in ("capped (4 MB/s per connection)", "uncapped (no cap)"):
        table = out.split(scenario, 1)[1].split("\n\n", 1)[0]
        assert "wall s" in table and "peak RSS MB" in table and "x provision" in table
        rows = {line.split()[0]: line for line in table.splitlines()[2:] if line.strip()}
        for tool in ("naive", "provision", "stream", "stream1"):
            assert re.match(rf"{tool}\s+\d+\.\d+\s+\d+\.\d", rows[tool]), rows[tool]
            assert rows[tool].split()[7] == "yes", f"{tool} staged wrong bytes: {rows[tool]}"
        if shutil.which("aria2c"):
            assert rows["aria2c"].split()[7] == "yes"
        else:
            assert "aria2c not installed" in rows["aria2c"]
        assert rows["limit"] and rows["target"]
    assert "the cores' limit for this data" in out and "x the cores' limit" in out and "with the writes" in out and "the zlib path" in out
    assert "x the reference extraction run just before it" in out and "x the work's" in out and "new memory (first touch" in out
    assert "re-run on the staged set" in out and "of the capped line rate" in out and "peak RSS of provision's runs" in out
    tight = out.split("tight disk (two archives of 16 scans", 1)[1]
    if "skipped" not in tight.splitlines()[1]:
        assert "auto, tight disk" in tight and "way: stream," in tight and "connections per archive" in tight and "of the line" in tight
        assert "ok: NO" not in tight and "tight / large = " in tight


def test_quick_cache_benchmark_prints_the_side_by_side_table(tmp_path, book_python: str, book_bundle) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cache_bench.py"), "--quick", "--work", str(tmp_path / "w"),
                           "--book-python", book_python, "--bundle", str(book_bundle[0])],
                          capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "book: python -m p2ch11.prepcache" in out and "provision cache --chapters 11" in out
    assert "entries equal: yes" in out, out
    ratio = float(re.search(r"bytes: (\d+\.\d+)x the book's", out).group(1))
    assert ratio <= 0.55, f"the fixed cache is compressed: {ratio}x the book's bytes"
    assert "the cores' limit for these" in out and "pydicom's real CT slices" in out
