"""What a reader sees on a real-size archive: unpacking progress, repair totals, no ETA before the rate is known;
and archives that would crash the unpacker (two members of one name, a member that cannot be written)."""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path

import pytest

from provision.cli import main
from provision.progress import Progress
from tests.support.dataset import Built
from tests.test_stage import stage_json


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_no_eta_until_the_rate_is_known_then_unpacking_shows() -> None:
    clock, out = Clock(), io.StringIO()
    progress = Progress(6_800_000_000, stream=out, bar=False, interval_s=0, clock=clock)
    clock.t += 0.5
    progress("bytes", n=1_000_000, key="subset0.zip")
    first = out.getvalue().splitlines()[-1]
    assert "ETA" not in first and "MB/s" not in first, "a slow first connection must not promise hours"
    for _ in range(10):
        clock.t += 1
        progress("bytes", n=50_000_000, key="subset0.zip")
    line = out.getvalue().splitlines()[-1]
    assert "47.7 MB/s" in line and "ETA 2 min 12 s" in line, line  # 501 MB over the 10.5 s measured
    progress("unpack", key="subset0.zip", members=178, bytes=12_100_000_000)
    for _ in range(40):
        progress("unpacked", key="subset0.zip", n=68_000_000)
    line = out.getvalue().splitlines()[-1]
    assert "unpacking subset0.zip: 40 of 178 members (2.7 GB of 12.1 GB)" in line, line


def test_a_repair_counts_in_the_total() -> None:
    out = io.StringIO()
    progress = Progress(0, stream=out, bar=False, interval_s=0, clock=Clock())
    progress("expect", key="subset2.zip", n=47_600)
    progress("bytes", key="subset2.zip", n=47_600)
    assert "47.6 kB of 47.6 kB (100%)" in out.getvalue().splitlines()[-1]
    progress("bytes", key="subset2.zip", n=10_000)
    assert "57.6 kB of 57.6 kB (100%)" in out.getvalue().splitlines()[-1], "never more than 100%"


def collect(profile: Path) -> list[tuple[str, dict]]:
    from provision.config import load_config
    from provision.facts import build_plan
    from provision.staging.engine import Stager

    config = load_config(profile)
    events: list[tuple[str, dict]] = []
    Stager(config.data, build_plan(config).data, emit=lambda event, **info: events.append((event, info))).run()
    return events


@pytest.mark.parametrize("mode", ["archive", "stream"])
def test_the_engine_reports_unpacking_and_repairs(built: Built, write_profile, tmp_path: Path, capsys, mode: str) -> None:
    profile = write_profile({"dataset": str(built.manifest), "sources": [str(built.folder)], "subsets": "0-1", "mode": mode})
    events = collect(profile)
    starts = {info["key"]: info for event, info in events if event == "unpack"}
    assert set(starts) == {"subset0.zip", "subset1.zip"} and all(s["members"] == 4 for s in starts.values())
    written = [info for event, info in events if event == "unpacked" and info["key"] == "subset0.zip"]
    assert len(written) == 4 and sum(i["n"] for i in written) == starts["subset0.zip"]["bytes"]
    assert not [e for e, _ in events if e == "expect"], "a first staging was planned: nothing unexpected"

    raw = sorted((tmp_path / "root" / "part2" / "luna" / "subset1").glob("*.raw"))[0]
    raw.write_bytes(b"\0" * raw.stat().st_size)  # same size, different bytes: only --full sees it
    assert main(["verify", "--full", "-c", str(profile)]) == 1
    capsys.readouterr()
    events = collect(profile)
    expect = [info for event, info in events if event == "expect"]
    assert len(expect) == 1 and expect[0]["key"] == "subset1.zip" and expect[0]["n"] > 0
    fetched = sum(info["n"] for event, info in events if event == "bytes")
    assert fetched <= expect[0]["n"], "the total covers what the repair fetched"


def zip_with_two_members_of_one_name(folder: Path) -> Path:
    path = folder / "subset0.zip"
    with zipfile.ZipFile(path, "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns "Duplicate name": that is the point
        zf.writestr("subset0/scan.mhd", b"header")
        zf.writestr("subset0/scan.raw", b"a" * 5000)
        zf.writestr("subset0/scan.raw", b"b" * 7000)
    return path


@pytest.mark.parametrize("mode", ["archive", "stream"])
def test_two_members_of_one_name_are_refused_up_front(tmp_path: Path, serve, write_profile, capsys, mode: str) -> None:
    import hashlib

    import yaml

    folder = tmp_path / "dup"
    folder.mkdir()
    data = zip_with_two_members_of_one_name(folder).read_bytes()
    manifest = tmp_path / "dup.yaml"
    manifest.write_text(yaml.safe_dump({"name": "dup", "dir": "part2/luna", "files": [
        {"key": "subset0.zip", "size": len(data), "md5": hashlib.md5(data).hexdigest(), "unpack": True}]}))
    srv = serve(folder=folder)
    profile = write_profile({"dataset": str(manifest), "sources": [srv.url + "/mirror/"], "mode": mode})
    code, report = stage_json(profile, capsys)
    assert code == 1
    error = report["files"][0]["error"]
    assert "holds two members for subset0/scan.raw" in error and "Traceback" not in error
    assert not list((tmp_path / "root" / "part2" / "luna").rglob("scan.*")), "nothing was written"


def test_a_member_that_cannot_be_written_is_an_error_not_a_traceback(built: Built, write_profile, tmp_path: Path, capsys) -> None:
    target = tmp_path / "root" / "part2" / "luna"
    target.mkdir(parents=True)
    (target / "subset0").write_text("a file where the subset's folder goes")
    profile = write_profile({"dataset": str(built.manifest), "sources": [str(built.folder)], "subsets": "0-1"})
    code, report = stage_json(profile, capsys)
    assert code == 1
    by_key = {f["key"]: f for f in report["files"]}
    assert by_key["subset0.zip"]["outcome"] == "failed" and "subset0" in by_key["subset0.zip"]["error"]
    assert by_key["subset1.zip"]["outcome"] == "staged", "the other files are staged regardless"
    assert (target / "subset0").read_text() == "a file where the subset's folder goes"
    assert json.dumps(report).count("Traceback") == 0


def test_isal_inflates_where_installed_and_zlib_gives_the_same_bytes(built: Built, write_profile, tmp_path: Path, capsys) -> None:
    import subprocess
    import sys

    from provision.staging.archive import codec
    from tests.conftest import REPO

    try:
        import isal  # noqa: F401

        assert codec.LIBRARY == "isal"
    except ImportError:
        assert codec.LIBRARY == "zlib"
    forced = subprocess.run([sys.executable, "-c", "from provision.staging.archive import codec; print(codec.LIBRARY)"], capture_output=True,
                            text=True, cwd=REPO, env={**__import__("os").environ, "PROVISION_INFLATE": "zlib", "PYTHONPATH": str(REPO)})
    assert forced.stdout.strip() == "zlib"
    from tests.test_stage import expected_tree

    for mode in ("archive", "stream"):
        root = tmp_path / f"root-{mode}"
        profile = write_profile({"dataset": str(built.manifest), "sources": [str(built.folder)], "mode": mode, "root": str(root)},
                                name=f"{mode}.yaml")
        proc = subprocess.run([sys.executable, "-m", "provision", "stage", "-c", str(profile)], capture_output=True, text=True, cwd=REPO,
                              env={**__import__("os").environ, "PROVISION_INFLATE": "zlib", "PYTHONPATH": str(REPO)})
        assert proc.returncode == 0, proc.stderr
        from tests.support.dataset import tree_md5s

        assert tree_md5s(root / "part2" / "luna") == expected_tree(built)


def test_an_unsupported_compression_method_is_refused_by_name(tmp_path: Path, write_profile, capsys) -> None:
    import hashlib

    import yaml

    folder = tmp_path / "odd"
    folder.mkdir()
    path = folder / "subset0.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("subset0/scan.raw", b"x" * 1000)
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):  # compression method: 9 (deflate64)
        at = data.index(signature) + offset
        data[at:at + 2] = (9).to_bytes(2, "little")
    path.write_bytes(bytes(data))
    manifest = tmp_path / "odd.yaml"
    manifest.write_text(yaml.safe_dump({"name": "odd", "dir": "part2/luna", "files": [
        {"key": "subset0.zip", "size": len(data), "md5": hashlib.md5(bytes(data)).hexdigest(), "unpack": True}]}))
    profile = write_profile({"dataset": str(manifest), "sources": [str(folder)], "mode": "archive"})
    code, report = stage_json(profile, capsys)
    assert code == 1 and "uses compression method 9, which is not supported" in report["files"][0]["error"]
