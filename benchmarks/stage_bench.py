#!/usr/bin/env python3
"""Staging speed and memory against what users run instead, side by side in one run.

Builds a LUNA-like data set (deflate about 2:1, like CT volumes), serves it from a loopback
HTTP server with and without a per-connection rate cap (Zenodo caps each connection), and
times on the same data and server:

  naive     curl each file in turn, md5sum, unzip, delete the archive
  aria2c    aria2c with several connections per file and several files at once, then md5sum and unzip
  provision `provision stage` in archive mode (download, verify, unpack, delete)
  stream    `provision stage` in stream mode (unpack while downloading; archives never stored): each archive's
            bytes over every connection at once, inflated in order (the default, data.stream_ranges: 0)
  stream1   stream mode with one connection per archive (data.stream_ranges: 1), as before ordered ranges
  zlib      (uncapped) archive mode with zlib's inflate and CRC-32 instead of ISA-L's (PROVISION_INFLATE=zlib)

and a tight-disk scenario (two archives, capped, as a Colab session stages): `provision stage` with data.mode
auto on a size-limited tmpfs where only stream mode fits, against archive mode on a large tmpfs, in one run
(needs root to mount the tmpfs folders; skipped otherwise).

plus the machine's limits measured in the same run: loopback read rate, extraction alone
(unzip of the same archives from local disk), disk write rate, and the cores' limit for this data
(inflate, md5 and CRC-32 per core, measured before each repetition, divided over the cores). Prints wall time,
throughput, peak RSS, CPU time, bytes written to disk and each tool's time as a ratio to provision's.

Uncapped, provision's rows are bound by the cores, and this machine's speed drifts from minute to minute (other
guests on the host; new memory is slow to touch for the first time, and every page a run fills in the page cache
is such memory). So each of those runs is also compared with a reference extraction run just before it, in the
same state of the machine: every core inflating the same archives from local disk with the same library, md5 and
CRC-32 taken, the members written, the writeback waited for. It has no network and no resume to keep.

    python benchmarks/stage_bench.py                 # about 2 GB, 3 repetitions (several minutes)
    python benchmarks/stage_bench.py --quick         # a small set, one repetition, under a minute
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.dataset import build_luna_like  # noqa: E402
from tests.support.server import Faults, FileServer  # noqa: E402


@dataclass
class Run:
    seconds: float
    max_rss_kb: int
    written_bytes: int
    ok: bool
    peak_disk_bytes: int = 0
    cpu_s: float = 0.0  # user + system time of the command and its children
    limit_s: float = 0.0  # (uncapped) the cores' limit measured just before this run's repetition
    write_limit_s: float = 0.0  # (uncapped) the same with the unpacked bytes' write, as provision writes them
    reference_s: float = 0.0  # (uncapped) the reference extraction, run just before this run


@dataclass
class Row:
    name: str
    runs: list[Run] = field(default_factory=list)
    note: str = ""

    @property
    def seconds(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def rss_mb(self) -> float:
        return max(r.max_rss_kb for r in self.runs) / 1024

    @property
    def written_mb(self) -> float:
        return statistics.median(r.written_bytes for r in self.runs) / 1e6

    @property
    def peak_disk_mb(self) -> float:
        return max(r.peak_disk_bytes for r in self.runs) / 1e6

    @property
    def cpu_s(self) -> float:
        return statistics.median(r.cpu_s for r in self.runs)

    def ratios(self, over: str) -> list[float]:
        """Each run's time over its own yardstick, the ``Run`` field ``over``: a limit measured in its repetition (the
        machine's speed drifts), or the reference extraction run just before it."""
        return sorted(r.seconds / getattr(r, over) for r in self.runs if getattr(r, over))


class DiskWatch:
    """Samples the free space of a filesystem while a contender runs: its peak disk use."""

    def __init__(self, path: Path) -> None:
        import threading

        self.path = path
        self.start_free = self._free()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.start_free - self._free())

    def __enter__(self) -> DiskWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measured(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> Run:
    """Run a command; wall time, peak RSS of its process tree and bytes it wrote to storage.

    Through GNU time where it exists: a child forked from this (large) Python process would
    inherit its peak RSS figure, while one forked from `time` starts small.
    """
    os.sync()
    report = Path(tempfile.mktemp(prefix="bench-time-"))
    gnu_time = shutil.which("time") if Path("/usr/bin/time").exists() else None
    wrapped = ["/usr/bin/time", "-q", "-f", "%M %O", "-o", str(report), *argv] if gnu_time else argv
    start = time.perf_counter()
    proc = subprocess.Popen(wrapped, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    os.sync()  # count writeback in the time, as a user waits for it too
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        print(f"  ! {argv[0]} exited {code}: {proc.stderr.read().decode()[-400:] if proc.stderr else ''}", file=sys.stderr)
    max_rss_kb, out_blocks = usage.ru_maxrss, usage.ru_oublock
    if gnu_time and report.exists():
        fields = report.read_text().split()
        if len(fields) >= 2 and fields[-2].isdigit():
            max_rss_kb, out_blocks = int(fields[-2]), int(fields[-1])
        report.unlink()
    return Run(seconds, max_rss_kb, out_blocks * 512, code == 0, cpu_s=usage.ru_utime + usage.ru_stime)


def naive_script(urls: list[str], target: Path) -> list[str]:
    lines = ["set -e", f"mkdir -p {target}", f"cd {target}"]
    for url in urls:
        name = url.rsplit("/", 1)[1]
        lines.append(f"curl -sSf -o {name} {url}")
        lines.append(f"md5sum {name} > /dev/null")
        if name.endswith(".zip"):
            lines.append(f"unzip -q -o {name}")
            lines.append(f"rm {name}")
    return ["bash", "-c", "\n".join(lines)]


def aria2_script(urls: list[str], target: Path, connections: int) -> list[str]:
    listing = target.parent / f"{target.name}.aria2-list"
    listing.write_text("\n".join(urls) + "\n")
    per_file = max(1, connections // 2)
    names = [u.rsplit("/", 1)[1] for u in urls]
    lines = [
        "set -e", f"mkdir -p {target}", f"cd {target}",
        f"aria2c -q -x {per_file} -s {per_file} -j 2 -k 1M --file-allocation=none --allow-overwrite=true -i {listing}",
        "md5sum " + " ".join(names) + " > /dev/null",
    ]
    for name in names:
        if name.endswith(".zip"):
            lines += [f"unzip -q -o {name}", f"rm {name}"]
    return ["bash", "-c", "\n".join(lines)]


def provision_cmd(profile: Path, mode: str) -> list[str]:
    """`provision stage` in archive, stream (every connection per archive) or stream1 (one connection per archive) mode."""
    ranges = "1" if mode == "stream1" else "0"
    return [sys.executable, "-m", "provision", "stage", "-c", str(profile), "--set", f"data.mode={mode.rstrip('1')}",
            "--set", f"data.stream_ranges={ranges}"]


def write_profile(work: Path, manifest: Path, url: str, root: Path, connections: int) -> Path:
    profile = work / f"profile-{root.name}.yaml"
    profile.write_text(yaml.safe_dump({
        "extends": str(REPO / "configs" / "local.yaml"),
        "requirements": {"files": []},
        "data": {"dataset": str(manifest), "root": str(root), "sources": [url + "/mirror/"], "reserve_gb": 0, "margin_gb": 0,
                 "cache_gb_per_subset": 0, "connections": connections},
    }))
    return profile


def check_tree(root: Path, expected: dict[str, str]) -> bool:
    for rel, md5 in expected.items():
        path = root / rel
        if not path.is_file() or hashlib.md5(path.read_bytes()).hexdigest() != md5:
            return False
    return True


def write_copy_rate(folder: Path, data: bytes) -> float:
    """Bytes per CPU second that writing the unpacked bytes costs a core, written as provision writes a member (512 KiB
    writes, each 8 MiB handed to the disk early, fsync'd, its pages let go once on disk): a cost every tool that writes
    them pays, besides inflating them. Twice, the first as warm-up (new memory costs more on this kind of VM, and a run
    reuses its pages): the second is counted."""
    from provision.staging.archive.writeback import EarlyWriteback

    path = folder / "write-probe"
    piece = memoryview(data)
    took = 0.0
    for _ in range(2):
        cpu = time.process_time()
        with open(path, "wb") as out:
            early = EarlyWriteback(out.fileno())
            for i in range(0, len(piece), 512 << 10):
                out.write(piece[i : i + (512 << 10)])
                early.written(min(i + (512 << 10), len(piece)))
            out.flush()
            os.fsync(out.fileno())
            early.synced()
        took = time.process_time() - cpu
        path.unlink()
    return len(data) / max(took, 1e-6)


def data_start(info: zipfile.ZipInfo, header: bytes) -> int:
    """Where a zip member's compressed bytes start: after its 30-byte local ``header`` and the name and extra field
    whose lengths it gives."""
    return info.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")


def per_core_rates(archive: Path) -> dict[str, float]:
    """Bytes per second on one core, measured on one archive: inflate (the library provision uses, and zlib), md5, CRC-32."""
    import zlib

    from provision.staging.archive import codec

    with zipfile.ZipFile(archive) as zf:
        infos = [i for i in zf.infolist() if i.compress_type == zipfile.ZIP_DEFLATED]
    raw = archive.read_bytes()
    streams = []
    for info in infos:
        start = data_start(info, raw[info.header_offset:info.header_offset + 30])
        streams.append(raw[start:start + info.compress_size])

    def inflate_rate(make) -> tuple[float, bytes]:  # type: ignore[no-untyped-def]
        start, out = time.perf_counter(), []
        for data in streams:
            d = make()
            view = memoryview(data)
            for i in range(0, len(data), 1 << 20):
                pending = view[i:i + (1 << 20)]
                while pending:
                    piece = d.decompress(pending, 4 << 20)
                    out.append(piece)
                    pending = d.unconsumed_tail
                    if not piece and not pending:
                        break
        inflated = b"".join(out)
        return len(inflated) / (time.perf_counter() - start), inflated

    rate, inflated = inflate_rate(codec.raw_inflater)
    zlib_rate, _ = inflate_rate(lambda: zlib.decompressobj(-15))
    start = time.perf_counter()
    hashlib.md5(raw).hexdigest()
    md5_rate = len(raw) / (time.perf_counter() - start)
    start = time.perf_counter()
    codec.crc32(inflated)
    crc_rate = len(inflated) / (time.perf_counter() - start)
    write_rate = write_copy_rate(archive.parent, inflated)
    return {"inflate": rate, "inflate_zlib": zlib_rate, "md5": md5_rate, "crc": crc_rate, "write": write_rate,  # type: ignore[dict-item]
            "library": codec.LIBRARY}


def cores_limit_s(rates: dict[str, float], total: int, unpacked: int, writes: bool = False) -> float:
    """Seconds the cores need for this data's inflate, md5 and CRC-32 at ``rates``, spread over every core; with
    ``writes``, the unpacked bytes' write as well (written as provision writes them)."""
    per_core = unpacked / rates["inflate"] + total / rates["md5"] + unpacked / rates["crc"]
    if writes:
        per_core += unpacked / rates["write"]
    return per_core / (os.cpu_count() or 1)


def fresh_memory_rate(size: int = 1 << 30) -> float:
    """MB/s at which one core touches memory for the first time, in a fresh process: on a VM whose host takes freed
    memory back (a balloon's free page reporting), every page a run newly fills, the page cache's included, costs this."""
    code = (f"import mmap, time; m = mmap.mmap(-1, {size}); t = time.perf_counter()\n"
            "for i in range(0, len(m), 4096): m[i] = 1\n"
            "print(time.perf_counter() - t)")
    took = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    return size / took / 1e6


def reference_worker(out: Path, archives: list[Path]) -> None:
    """One core's share of the reference extraction: each archive read from local disk once (md5), each member
    inflated with the library provision uses, its CRC-32 taken, and written (the caller's sync counts the writeback,
    once for every file: no fsync stalls a core here, as provision's one per member may)."""
    from provision.staging.archive import codec

    for archive in archives:
        md5 = hashlib.md5()
        with open(archive, "rb") as fh:
            while piece := fh.read(1 << 20):
                md5.update(piece)
        with zipfile.ZipFile(archive) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
        with open(archive, "rb", buffering=0) as fh:
            for info in infos:
                pos = data_start(info, os.pread(fh.fileno(), 30, info.header_offset))
                end = pos + info.compress_size
                dest = out / info.filename
                dest.parent.mkdir(parents=True, exist_ok=True)
                inflater, crc = (codec.raw_inflater() if info.compress_type == zipfile.ZIP_DEFLATED else None), 0
                with open(dest, "wb") as target:
                    while pos < end:
                        piece = os.pread(fh.fileno(), min(1 << 20, end - pos), pos)
                        pos += len(piece)
                        data = inflater.decompress(piece) if inflater else piece
                        crc = codec.crc32(data, crc)
                        target.write(data)
                if crc != info.CRC:
                    raise SystemExit(f"reference extraction: {info.filename} has the wrong CRC-32")


def reference_extract(archives: list[Path], out: Path) -> float:
    """Seconds for the reference extraction on every core at once (archives dealt out in turn): the cores' limit with
    the unpacked bytes written, measured on this machine as it is now, from local disk and without a network."""
    cores = os.cpu_count() or 1
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    os.sync()
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, "--reference-worker", str(out), *map(str, archives[i::cores])])
             for i in range(min(cores, len(archives)))]
    codes = [p.wait() for p in procs]
    os.sync()
    took = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    if any(codes):
        raise SystemExit("the reference extraction failed")
    return took


def limits(data_dir: Path, url: str, keys: list[str], work: Path) -> dict[str, float]:
    """Loopback read rate, extraction alone, and disk write rate, measured now."""
    total = sum((data_dir / k).stat().st_size for k in keys)
    start = time.perf_counter()
    procs = [subprocess.Popen(["curl", "-sSf", "-o", "/dev/null", f"{url}/mirror/{k}"]) for k in keys]
    for p in procs:
        p.wait()
    read_rate = total / (time.perf_counter() - start)
    out = work / "extract-only"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    zips = [str(data_dir / k) for k in keys if k.endswith(".zip")]
    extract = measured(["bash", "-c", "set -e; " + "; ".join(f"unzip -q -o {z} -d {out}" for z in zips)], work)
    shutil.rmtree(out, ignore_errors=True)
    probe = work / "dd-probe"
    size_mb = max(64, min(1024, total // 2**20))
    dd = measured(["dd", "if=/dev/zero", f"of={probe}", "bs=1M", f"count={size_mb}", "conv=fsync", "status=none"], work)
    probe.unlink(missing_ok=True)
    return {"read_mb_s": read_rate / 1e6, "extract_s": extract.seconds, "disk_mb_s": size_mb * 2**20 / dd.seconds / 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small data set and one repetition (a check of this script)")
    parser.add_argument("--gb", type=float, default=2.0, help="approximate size of the data set's archives")
    parser.add_argument("--subsets", type=int, default=6)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cap-mb", type=float, default=10.0, help="per-connection rate cap in MB/s for the capped scenario")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--work", type=Path, default=None, help="folder for the data and the runs (default: a temp folder)")
    parser.add_argument("--scenarios", default="capped,uncapped,tight",
                        help="which to run, comma-separated (the uncapped rows vary most between runs: run them with more --reps)")
    parser.add_argument("--reference-worker", nargs="+", metavar="PATH", help=argparse.SUPPRESS)  # OUT ARCHIVE...: one core's share
    args = parser.parse_args(argv)
    if args.reference_worker:
        reference_worker(Path(args.reference_worker[0]), [Path(a) for a in args.reference_worker[1:]])
        return 0
    scenarios = {name.strip() for name in args.scenarios.split(",") if name.strip()}
    if not scenarios or scenarios - {"capped", "uncapped", "tight"}:
        parser.error(f"--scenarios takes capped, uncapped and tight, comma-separated; got {args.scenarios!r}")
    if args.quick:
        args.gb, args.subsets, args.reps, args.cap_mb = 0.03, 3, 1, 4.0

    work = args.work or Path(tempfile.mkdtemp(prefix="stage-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    scans = 2
    raw_bytes = int(args.gb * 1e9 * 2 / args.subsets / scans)  # deflates about 2:1
    print(f"building a LUNA-like data set: {args.subsets} archives, ~{args.gb:.2f} GB, in {work}", flush=True)
    built = build_luna_like(work / "src", subsets=args.subsets, scans=scans, raw_bytes=raw_bytes, name="bench", extra_plain=False)
    keys = list(built.files)
    total = sum(info["size"] for info in built.files.values())
    unpacked = sum(info["unpacked_size"] for info in built.files.values())
    expected = {rel: md5 for info in built.files.values() for rel, md5 in info["members"].items()}
    have_aria2 = shutil.which("aria2c") is not None
    print(f"archives {total / 1e6:.0f} MB, unpacked {unpacked / 1e6:.0f} MB; aria2c {'found' if have_aria2 else 'NOT found (apt-get install aria2)'}", flush=True)

    tables = []
    for scenario, cap in (("capped", args.cap_mb * 1e6), ("uncapped", None)):
        if scenario not in scenarios:
            continue
        with FileServer(built.folder, Faults(rate_per_conn=cap)) as srv:
            urls = [f"{srv.url}/mirror/{k}" for k in keys]
            names = ("naive", "aria2c", "provision", "stream", "stream1") + (("zlib",) if cap is None else ())
            rows = {name: Row(name) for name in names}
            if not have_aria2:
                rows["aria2c"].note = "aria2c not installed"
            rep_limits = []
            for rep in range(args.reps):
                rep_limit = rep_write_limit = 0.0
                if cap is None:  # the cores' limit of this repetition, measured just before its runs
                    rep_rates = per_core_rates(built.folder / keys[0])
                    rep_limit = cores_limit_s(rep_rates, total, unpacked)
                    rep_write_limit = cores_limit_s(rep_rates, total, unpacked, writes=True)
                    rep_limits.append(rep_limit)
                order = list(rows.items())
                order = order[rep % len(order):] + order[:rep % len(order)]  # no tool always follows the same one
                for name, row in order:
                    if name == "aria2c" and not have_aria2:
                        continue
                    reference = 0.0
                    if cap is None and name in ("provision", "stream", "stream1"):
                        reference = reference_extract([built.folder / k for k in keys], work / "reference-out")
                    target_root = work / f"{scenario}-{name}-{rep}"
                    shutil.rmtree(target_root, ignore_errors=True)
                    target = target_root / "part2" / "luna"
                    with DiskWatch(work) as watch:
                        if name == "naive":
                            run = measured(naive_script(urls, target), work)
                        elif name == "aria2c":
                            target.mkdir(parents=True)
                            run = measured(aria2_script(urls, target, args.connections), work)
                        else:
                            profile = write_profile(work, built.manifest, srv.url, target_root, args.connections)
                            mode = "archive" if name in ("provision", "zlib") else name
                            inflate = {"PROVISION_INFLATE": "zlib"} if name == "zlib" else {}
                            run = measured(provision_cmd(profile, mode), REPO, env={**os.environ, "PYTHONPATH": str(REPO), **inflate})
                    run.peak_disk_bytes = watch.peak
                    run.limit_s = rep_limit
                    run.write_limit_s = rep_write_limit
                    run.reference_s = reference
                    run.ok = run.ok and check_tree(target, expected)
                    row.runs.append(run)
                    print(f"  {scenario:<8} {name:<10} rep {rep + 1}: {run.seconds:6.2f} s{'' if run.ok else '  (FAILED or wrong bytes)'}", flush=True)
                    if name in ("provision", "stream", "stream1") and rep == 0:
                        rerun = measured(provision_cmd(profile, mode), REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
                        plan = measured([sys.executable, "-m", "provision", "plan", "-c", str(profile)], REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
                        row.note = f"re-run on the staged set {rerun.seconds:.2f} s, plan {plan.seconds:.2f} s"
                    if rep > 0 or args.reps == 1:
                        shutil.rmtree(target_root, ignore_errors=True)
            limit = limits(built.folder, srv.url, keys, work)
            if cap is None:
                limit["fresh_mb_s"] = fresh_memory_rate()
                limit["rep_limits"] = rep_limits  # type: ignore[assignment]
        tables.append((scenario, cap, rows, limit))
    rates = per_core_rates(built.folder / keys[0])

    print()
    print(f"machine: {os.cpu_count()} cores; data: {len(keys)} archives, {total / 1e6:.0f} MB compressed, {unpacked / 1e6:.0f} MB unpacked; "
          f"median of {args.reps}; {args.connections} connections")
    for scenario, cap, rows, limit in tables:
        base = rows["provision"].seconds
        cap_text = f"{cap / 1e6:.0f} MB/s per connection" if cap else "no cap"
        print(f"\n{scenario} ({cap_text})")
        print(f"{'tool':<11}{'wall s':>9}{'MB/s':>9}{'peak RSS MB':>13}{'written MB':>12}{'peak disk MB':>14}{'x provision':>13}  ok")
        for row in rows.values():
            if not row.runs:
                print(f"{row.name:<11}{'-':>9}{'-':>9}{'-':>13}{'-':>12}{'-':>14}{'-':>13}  {row.note}")
                continue
            ok = "yes" if all(r.ok for r in row.runs) else "NO"
            print(f"{row.name:<11}{row.seconds:>9.2f}{total / row.seconds / 1e6:>9.1f}{row.rss_mb:>13.1f}{row.written_mb:>12.0f}"
                  f"{row.peak_disk_mb:>14.0f}{row.seconds / base:>13.2f}  {ok}  {row.note}")
        line_mb_s = cap * args.connections / 1e6 if cap else limit["read_mb_s"]
        pure_download = total / (line_mb_s * 1e6)
        read_text = f"capped line {line_mb_s:.0f} MB/s over {args.connections} connections" if cap else f"loopback read {line_mb_s:.0f} MB/s"
        print(f"{'limit':<11}{read_text}, download alone {pure_download:.2f} s; "
              f"extraction alone {limit['extract_s']:.2f} s; disk write {limit['disk_mb_s']:.0f} MB/s")
        if cap is None:
            cores = os.cpu_count() or 1
            cores_limit = cores_limit_s(rates, total, unpacked)
            print(f"{'limit':<11}the cores' limit for this data: {cores_limit:.2f} s ({cores} cores; per core: inflate "
                  f"{rates['inflate'] / 1e6:.0f} MB/s out with {rates['library']} ({rates['inflate_zlib'] / 1e6:.0f} with zlib), "
                  f"md5 {rates['md5'] / 1e6:.0f} MB/s, CRC-32 {rates['crc'] / 1e6:.0f} MB/s); measured before each repetition: "
                  + ", ".join(f"{x:.2f}" for x in limit["rep_limits"]) + " s")  # type: ignore[attr-defined]
            with_writes = cores_limit_s(rates, total, unpacked, writes=True)
            print(f"{'limit':<11}with the unpacked bytes' write (as provision writes them, {rates['write'] / 1e6:.0f} MB/s "
                  f"a core): {with_writes:.2f} s; new memory (first touch, one core): {limit['fresh_mb_s']:.0f} MB/s")
            work_cpu = cores_limit * cores
            for name in ("provision", "stream", "stream1"):
                ratios, writes = rows[name].ratios("limit_s"), rows[name].ratios("write_limit_s")
                spread, write_spread = (f" ({', '.join(f'{r:.2f}' for r in got)} in the repetitions)" if len(got) > 1 else ""
                                        for got in (ratios, writes))
                print(f"{'target':<11}{name} {rows[name].seconds:.2f} s = {statistics.median(ratios):.2f} x the cores' limit of its "
                      f"repetition{spread} (want <= 1.15), {statistics.median(writes):.2f} x with the writes{write_spread}; "
                      f"CPU {rows[name].cpu_s:.1f} s = {rows[name].cpu_s / work_cpu:.2f} x the work's {work_cpu:.1f} s (inflate, md5, CRC-32)")
                ratios = rows[name].ratios("reference_s")
                print(f"{'reference':<11}{name} = {statistics.median(ratios):.2f} x the reference extraction run just before it "
                      f"({', '.join(f'{r:.2f}' for r in ratios)}; reference {statistics.median(r.reference_s for r in rows[name].runs):.2f} s)")
            zlib_s = rows["zlib"].seconds
            print(f"{'target':<11}the zlib path (PROVISION_INFLATE=zlib) {zlib_s:.2f} s: provision is {zlib_s / base:.2f}x faster (want >= 1.4)")
        else:
            naive = rows["naive"].seconds
            aria = rows["aria2c"].seconds if rows["aria2c"].runs else float("nan")
            print(f"{'target':<11}naive / provision = {naive / base:.2f} (want >= 3); aria2c / provision = {aria / base:.2f} (want >= 1); "
                  f"naive / stream = {naive / rows['stream'].seconds:.2f}; aria2c / stream = {aria / rows['stream'].seconds:.2f} (want >= 1)")
            for name in ("provision", "stream", "stream1"):
                share = total / rows[name].seconds / 1e6 / line_mb_s
                print(f"{'target':<11}{name} at {share:.0%} of the capped line rate (want >= 90%; stream1 is the old way, for comparison)")
        rss = max(rows[n].rss_mb for n in ("provision", "stream", "stream1") if rows[n].runs)
        print(f"{'target':<11}peak RSS of provision's runs {rss:.0f} MB (want <= 300)")
    if "tight" in scenarios:
        tight_disk(built, work, args)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def tmpfs(where: Path, size: int) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    return os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                                                  capture_output=True).returncode == 0


def tight_disk(built, work: Path, args: argparse.Namespace) -> None:  # type: ignore[no-untyped-def]
    """Two archives, capped: auto on a disk where only stream mode fits vs archive mode on a large disk (both tmpfs).

    Two archives of the main set's size, but with many scans each, as LUNA16's (89 scans, 178 members): the main set
    has few large members, this one many.
    """
    import json

    size = sum(built.files[k]["size"] for k in ("subset0.zip", "subset1.zip"))
    scans = 16
    built = build_luna_like(work / "tight-src", subsets=2, scans=scans, raw_bytes=int(size * 2 / 2 / scans), name="tight", extra_plain=False)
    keys = ["subset0.zip", "subset1.zip"]
    unpacked = sum(built.files[k]["unpacked_size"] for k in keys)
    zipped = sum(built.files[k]["size"] for k in keys)
    expected = {rel: md5 for k in keys for rel, md5 in built.files[k]["members"].items()}
    print(f"\ntight disk (two archives of {scans} scans, {args.cap_mb:.0f} MB/s per connection, {args.connections} connections; "
          f"{zipped / 1e6:.0f} MB compressed, {unpacked / 1e6:.0f} MB unpacked)")
    big, small = work / "tmpfs-big", work / "tmpfs-tight"
    if not (tmpfs(big, 3 * (unpacked + zipped)) and tmpfs(small, unpacked + unpacked // 50 + 2 * 2**20)):
        print("skipped: mounting size-limited tmpfs folders needs root")
        return
    manifest = yaml.safe_load(built.manifest.read_text())
    for f in manifest["files"]:
        f["unpacked_size"] = built.files[f["key"]]["unpacked_size"]  # exact sizes, as `provision pin` would give
    exact = work / "bench-exact.yaml"
    exact.write_text(yaml.safe_dump(manifest))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    results = {}
    try:
        with FileServer(built.folder, Faults(rate_per_conn=args.cap_mb * 1e6)) as srv:
            for name, disk in (("archive, large disk", big), ("auto, tight disk", small)):
                runs = []
                for rep in range(args.reps):
                    root = disk / f"root-{rep}"
                    profile = write_profile(work, exact, srv.url, root, args.connections)
                    plan = json.loads(subprocess.run([sys.executable, "-m", "provision", "plan", "-c", str(profile), "--subsets", "0-1", "--json",
                                                      "--set", f"data.mode={'archive' if disk is big else 'auto'}"],
                                                     capture_output=True, text=True, cwd=REPO, env=env).stdout)
                    run = measured([sys.executable, "-m", "provision", "stage", "-c", str(profile), "--subsets", "0-1",
                                    "--set", f"data.mode={'archive' if disk is big else 'auto'}"], REPO, env=env)
                    run.ok = run.ok and check_tree(root / "part2" / "luna", expected)
                    runs.append(run)
                    shutil.rmtree(root, ignore_errors=True)
                chosen = next((w["label"] for w in plan["data"]["ways"] if w["chosen"]), plan["data"]["mode"])
                results[name] = (statistics.median(r.seconds for r in runs), chosen, all(r.ok for r in runs))
                line = zipped / results[name][0] / 1e6 / (args.cap_mb * args.connections)
                print(f"  {name:<20} {results[name][0]:7.2f} s  {line:4.0%} of the line  peak RSS {max(r.max_rss_kb for r in runs) / 1024:.0f} MB  "
                      f"written {statistics.median(r.written_bytes for r in runs) / 1e6:.0f} MB  way: {chosen}  ok: {'yes' if results[name][2] else 'NO'}",
                      flush=True)
    finally:
        for disk in (big, small):
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    ratio = results["auto, tight disk"][0] / results["archive, large disk"][0]
    print(f"{'target':<11}tight / large = {ratio:.2f} (want <= 1.1); every way at >= 90% of the line")


if __name__ == "__main__":
    raise SystemExit(main())
