#!/usr/bin/env python3
"""The book's cache: `python -m p2ch11.prepcache` (the book's own, with its defaults) against `provision cache
--chapters 11`, side by side in one run, on the same LUNA-like scans of real geometry and real CT texture.

The scans: 512x512 slices built from pydicom's real CT slice (CT_small.dcm, tiled in rotated and mirrored views so
that no two neighbouring tiles repeat), with the book's real series UIDs, and a candidates.csv of about 620
candidates a scan, as LUNA16 has (551,065 for 888 scans). The book's prepcache runs on the book as published (its
cache stored raw); provision's on the book with the cache fixes (compressed). Printed: wall seconds, bytes on disk,
entries, the ratios against the book's (targets: bytes <= 0.55x, time <= 0.5x), per-core rates measured in the same
run on the book's code (reading a scan, cutting a crop, compressing an entry, writing it) with the cores' limit they
imply, and the compression of crops cut from pydicom's real CT slices.

    python benchmarks/cache_bench.py                    # 6 scans of 192 slices, 620 candidates each (a minute or two on 2 cores)
    python benchmarks/cache_bench.py --quick            # 1 scan, a check of this script
    python benchmarks/cache_bench.py --book-python .venv-book/bin/python --bundle ../shared/book/dlwpt-code.bundle
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from provision.book.fixes import judge_checkout, load_book_manifest, write_states  # noqa: E402
from tests.support.book_data import choose_series  # noqa: E402

SLICE_PX = 512
SPACING_MM = (0.7, 0.7, 2.5)

RATES = r"""
import json, os, pickle, sys, tempfile, time
sys.path.insert(0, "")
import numpy as np
import p2ch11.dsets as dsets
uid, centers = sys.argv[1], json.loads(sys.argv[2])
start = time.perf_counter(); ct = dsets.Ct(uid); read_s = time.perf_counter() - start
start = time.perf_counter()
crops = [ct.getRawCandidate(tuple(c), (32, 48, 48)) for c in centers]
crop_s = (time.perf_counter() - start) / len(crops)
blobs = [pickle.dumps(c, protocol=pickle.HIGHEST_PROTOCOL) for c in crops]
from util.disk import fastgzip  # what the fixed cache compresses with (ISA-L where installed)
start = time.perf_counter(); packed = [fastgzip.compress(b, 1) for b in blobs]; gzip_s = (time.perf_counter() - start) / len(blobs)
folder = tempfile.mkdtemp(dir="data-unversioned")
start = time.perf_counter()
for i, b in enumerate(packed):
    with open(os.path.join(folder, str(i)), "wb") as fh:
        fh.write(b)
write_s = (time.perf_counter() - start) / len(packed)
print(json.dumps({"library": fastgzip.__name__, "scan_bytes": int(ct.hu_a.nbytes), "read_s": read_s, "crop_s": crop_s, "gzip_s": gzip_s, "write_s": write_s,
                  "raw_bytes": sum(map(len, blobs)) / len(blobs), "packed_bytes": sum(map(len, packed)) / len(packed)}))
"""


def real_ct_slices() -> list[np.ndarray]:
    """pydicom's real CT slice (128x128, in Hounsfield units), in its eight rotated and mirrored views."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = ds.pixel_array.astype(np.int16) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
    views = []
    for k in range(4):
        turned = np.rot90(hu, k)
        views += [turned, turned[:, ::-1]]
    return [np.ascontiguousarray(v, dtype=np.int16) for v in views]


def ct_volume(depth: int, rng: random.Random, views: list[np.ndarray]) -> np.ndarray:
    """int16 HU, 512x512 slices of 4x4 real-CT tiles in random views."""
    tiles = SLICE_PX // views[0].shape[0]
    vol = np.empty((depth, SLICE_PX, SLICE_PX), dtype=np.int16)
    for z in range(depth):
        rows = [np.concatenate([views[rng.randrange(len(views))] for _ in range(tiles)], axis=1) for _ in range(tiles)]
        vol[z] = np.concatenate(rows, axis=0)
    return vol


def write_scans(luna: Path, uids: list[str], depth: int, candidates: int, csv_path: Path, seed: int = 3) -> dict[str, list[list[float]]]:
    """Scans under luna/subset0/ and the book's candidates.csv for them; returns uid -> candidate centres (mm)."""
    rng = random.Random(seed)
    views = real_ct_slices()
    folder = luna / "subset0"
    folder.mkdir(parents=True, exist_ok=True)
    centres: dict[str, list[list[float]]] = {}
    rows = []
    for uid in uids:
        ct_volume(depth, rng, views).tofile(folder / f"{uid}.raw")
        (folder / f"{uid}.mhd").write_text(
            "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\nCompressedData = False\n"
            "TransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 0 0 0\nCenterOfRotation = 0 0 0\nAnatomicalOrientation = RAI\n"
            f"ElementSpacing = {SPACING_MM[0]} {SPACING_MM[1]} {SPACING_MM[2]}\nDimSize = {SLICE_PX} {SLICE_PX} {depth}\n"
            f"ElementType = MET_SHORT\nElementDataFile = {uid}.raw\n")
        centres[uid] = []
        for i in range(candidates):
            xyz = [rng.uniform(0.1, 0.9) * SLICE_PX * SPACING_MM[0], rng.uniform(0.1, 0.9) * SLICE_PX * SPACING_MM[1],
                   rng.uniform(0.2, 0.8) * depth * SPACING_MM[2]]
            centres[uid].append(xyz)
            rows.append([uid, *(f"{v:.4f}" for v in xyz), 1 if i < 2 else 0])
    with open(csv_path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["seriesuid", "coordX", "coordY", "coordZ", "class"])
        writer.writerows(rows)
    return centres


def checkout(bundle: Path, where: Path, fixed: bool) -> Path:
    subprocess.run(["git", "clone", "-q", str(bundle), str(where)], check=True)
    if fixed:
        manifest = load_book_manifest("book/dlwpt-code.yaml", REPO / "configs")
        write_states(where, judge_checkout(manifest, where))
    return where


def du(folder: Path) -> int:
    return sum(p.lstat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """(wall seconds, CPU seconds of it and its children, the finished process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), proc


def entries(python: str, book: Path, scope: str) -> int:
    code = f"from diskcache import FanoutCache; print(len(FanoutCache('data-unversioned/cache/{scope}', shards=64)))"
    return int(subprocess.run([python, "-c", code], cwd=book, capture_output=True, text=True, check=True).stdout.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one scan, fewer slices and candidates (a check of this script)")
    parser.add_argument("--scans", type=int, default=6)
    parser.add_argument("--depth", type=int, default=192, help="slices per scan (LUNA16's are 100-500, 134 MB on average)")
    parser.add_argument("--candidates", type=int, default=620, help="candidates per scan (LUNA16: 620 on average)")
    parser.add_argument("--book-python", default=str(REPO / ".venv-book" / "bin" / "python"), help="an interpreter with the book's requirements")
    parser.add_argument("--bundle", default=os.environ.get("PROVISION_TEST_BOOK_BUNDLE") or str(REPO.parent / "shared" / "book" / "dlwpt-code.bundle"))
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.scans, args.depth, args.candidates = 1, 40, 120
    for need, what in ((args.book_python, "--book-python"), (args.bundle, "--bundle")):
        if not Path(need).exists():
            print(f"cache_bench: {what} {need} does not exist (scripts/test.sh makes .venv-book; the bundle is the book's code)", file=sys.stderr)
            return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="cache-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    raw_book = checkout(Path(args.bundle), work / "book-as-published", fixed=False)
    fixed_book = checkout(Path(args.bundle), work / "book-fixed", fixed=True)
    uids = [s.uid for s in choose_series(raw_book, args.scans)]
    data = work / "data"
    centres = write_scans(data / "part2" / "luna", uids, args.depth, args.candidates, work / "candidates.csv")
    for book in (raw_book, fixed_book):
        (book / "data-unversioned" / "part2").mkdir(parents=True)
        (book / "data-unversioned" / "part2" / "luna").symlink_to(data / "part2" / "luna", target_is_directory=True)
        shutil.copy(work / "candidates.csv", book / "data" / "part2" / "luna" / "candidates.csv")
    scan_mb = SLICE_PX * SLICE_PX * args.depth * 2 / 1e6
    print(f"{args.scans} scan(s) of {SLICE_PX}x{SLICE_PX}x{args.depth} ({scan_mb:.0f} MB each), {args.candidates} candidates each, "
          f"{cores} core(s); work in {work}", flush=True)

    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    book_wall, book_cpu, book_run = timed([args.book_python, "-m", "p2ch11.prepcache"], raw_book, env)
    if book_run.returncode != 0:
        print(book_run.stderr[-2000:], file=sys.stderr)
        return 1
    profile = work / "profile.yaml"
    profile.write_text(yaml.safe_dump({
        "extends": str(REPO / "configs" / "local.yaml"),
        "requirements": {"files": [], "venv": str(Path(args.book_python).parent.parent)},
        "data": {"root": str(fixed_book / "data-unversioned"), "cache_gb_per_subset": 0, "margin_gb": 0},
        "book": {"dir": str(fixed_book)},
    }))
    ours_wall, ours_cpu, ours_run = timed([sys.executable, "-m", "provision", "cache", "--chapters", "11", "--json", "-c", str(profile)], REPO, env)
    if ours_run.returncode != 0:
        print(ours_run.stdout[-2000:], ours_run.stderr[-2000:], file=sys.stderr)
        return 1
    built = json.loads(ours_run.stdout)["chapters"][0]
    book_bytes = du(raw_book / "data-unversioned" / "cache" / "part2ch11_raw")
    ours_bytes = du(fixed_book / "data-unversioned" / "cache" / "part2ch11_raw")
    book_entries = entries(args.book_python, raw_book, "part2ch11_raw")
    ours_entries = entries(args.book_python, fixed_book, "part2ch11_raw")
    rerun_wall, _, _ = timed([sys.executable, "-m", "provision", "cache", "--chapters", "11", "-c", str(profile)], REPO, env)

    print("\nchapter 11's cache, side by side")
    print(f"{'':<34}{'wall s':>9}{'CPU s':>9}{'entries':>9}{'MB on disk':>12}{'B/entry':>10}{'x book':>9}")
    print(f"{'book: python -m p2ch11.prepcache':<34}{book_wall:9.1f}{book_cpu:9.1f}{book_entries:9d}{book_bytes / 1e6:12.1f}"
          f"{book_bytes / max(1, book_entries):10.0f}{1.0:9.2f}")
    print(f"{'provision cache --chapters 11':<34}{ours_wall:9.1f}{ours_cpu:9.1f}{ours_entries:9d}{ours_bytes / 1e6:12.1f}"
          f"{ours_bytes / max(1, ours_entries):10.0f}{ours_wall / book_wall:9.2f}")
    print(f"bytes: {ours_bytes / book_bytes:.2f}x the book's (target <= 0.55x); time: {ours_wall / book_wall:.2f}x (target <= 0.5x); "
          f"entries equal: {'yes' if book_entries == ours_entries == built['entries'] else 'NO'}; a rerun (complete): {rerun_wall:.2f} s")

    rates = subprocess.run([args.book_python, "-c", RATES, uids[0], json.dumps(centres[uids[0]][:200])], cwd=fixed_book, env=env,
                           capture_output=True, text=True)
    if rates.returncode == 0:
        r = json.loads(rates.stdout.strip().splitlines()[-1])
        per_entry = r["read_s"] / args.candidates + r["crop_s"] + r["gzip_s"] + r["write_s"]
        print("\nper core, measured on the book's code in this run")
        print(f"  read a scan      {r['scan_bytes'] / r['read_s'] / 1e6:8.0f} MB/s  ({r['read_s']:.2f} s a scan, once per scan)")
        print(f"  cut a crop       {1 / r['crop_s']:8.0f} crops/s")
        print(f"  compress (gzip 1){r['raw_bytes'] / r['gzip_s'] / 1e6:8.0f} MB/s  ({r['raw_bytes']:.0f} -> {r['packed_bytes']:.0f} bytes an entry, "
              f"{r['library']})")
        print(f"  write an entry   {r['packed_bytes'] / r['write_s'] / 1e6:8.0f} MB/s")
        limit = per_entry * args.scans * args.candidates / cores
        print(f"  the cores' limit for these {args.scans * args.candidates} entries on {cores} core(s): {limit:.1f} s "
              f"(provision: {ours_wall / limit:.2f}x of it; the diskcache index and the book's dataset code are the rest)")
    else:
        print(f"\nper-core rates: not measured ({rates.stderr.strip().splitlines()[-1:]})")

    import gzip
    import pickle

    from isal import igzip

    views = real_ct_slices()
    gen = random.Random(9)
    crops = [np.stack([views[gen.randrange(8)][r:r + 48, r:r + 48] for r in (gen.randrange(80) for _ in range(32))]).astype(np.float32)
             for _ in range(40)]
    raw = sum(len(pickle.dumps((c, (1, 2, 3)), protocol=pickle.HIGHEST_PROTOCOL)) for c in crops)
    for name, compress in (("zlib's gzip level 1", gzip.compress), ("ISA-L's gzip level 1, as the fixed cache stores them", igzip.compress)):
        packed = sum(len(compress(pickle.dumps((c, (1, 2, 3)), protocol=pickle.HIGHEST_PROTOCOL), 1)) for c in crops)
        print(f"compression of 32x48x48 crops cut from pydicom's real CT slices, {name}: {raw / packed:.2f}x "
              f"({raw / len(crops):.0f} -> {packed / len(crops):.0f} bytes an entry)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
