"""Synthetic LUNA16 scans the book's Part 2 code accepts, built around the book's own CSVs.

The scans take real series UIDs from the book checkout's ``annotations_with_malignancy.csv`` and
put a dense sphere at each annotated nodule (in millimetres, through the MetaImage header's
origin and spacing), in a 512x512 in-plane volume (chapter 13 assumes 512x512 slices). The
chosen series sort so that the first (the validation series of the book's 1-in-10 split) has
both a benign and a malignant nodule, and the others (training) have both kinds between them.
``candidates_csv`` writes the CSV the book reads and the bundle leaves out: one positive row per
annotation of the chosen series, some negatives, and rows of series that are not on disk.
"""

from __future__ import annotations

import csv
import random
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SLICE_PX = 512
SPACING_XY_MM = 0.7
DEPTH = 36  # the book's classification crop is 32 slices deep


@dataclass(frozen=True)
class Nodule:
    xyz: tuple[float, float, float]
    diameter_mm: float
    malignant: bool


@dataclass(frozen=True)
class Series:
    uid: str
    nodules: tuple[Nodule, ...]


def read_nodules(book: Path) -> dict[str, list[Nodule]]:
    """series uid -> its annotated nodules, from the book's annotations_with_malignancy.csv."""
    by_series: dict[str, list[Nodule]] = defaultdict(list)
    with open(book / "data" / "part2" / "luna" / "annotations_with_malignancy.csv", newline="") as fh:
        for row in list(csv.reader(fh))[1:]:
            xyz = (float(row[1]), float(row[2]), float(row[3]))
            by_series[row[0]].append(Nodule(xyz, float(row[4]), row[5] == "True"))
    return by_series


def _fits(nodules: list[Nodule]) -> bool:
    xs, ys = [n.xyz[0] for n in nodules], [n.xyz[1] for n in nodules]
    half = SLICE_PX * SPACING_XY_MM / 2 - 25
    return max(xs) - min(xs) < 2 * half and max(ys) - min(ys) < 2 * half and len(nodules) <= 6


def choose_series(book: Path, count: int) -> list[Series]:
    """``count`` series in UID order: the first with benign and malignant nodules, the rest with both kinds between them."""
    nodules = {uid: found for uid, found in read_nodules(book).items() if _fits(found)}
    mixed = sorted(uid for uid, found in nodules.items() if {n.malignant for n in found} == {True, False})
    first = mixed[0]
    rest = sorted(uid for uid in nodules if uid > first)
    chosen = [first]
    want_kinds = {True, False}
    for uid in rest:
        if len(chosen) == count:
            break
        kinds = {n.malignant for n in nodules[uid]}
        if len(chosen) == count - 1 and want_kinds and not kinds & want_kinds:
            continue  # the last training series must bring the kind still missing
        chosen.append(uid)
        want_kinds -= kinds
    return [Series(uid, tuple(nodules[uid])) for uid in chosen]


def geometry(series: Series) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(origin, spacing) in millimetres that put every nodule well inside the volume."""
    xs, ys, zs = zip(*(n.xyz for n in series.nodules), strict=True)
    half = SLICE_PX * SPACING_XY_MM / 2
    z_spacing = max(1.25, (max(zs) - min(zs) + 30) / (DEPTH - 8))
    origin = ((max(xs) + min(xs)) / 2 - half, (max(ys) + min(ys)) / 2 - half, (max(zs) + min(zs)) / 2 - DEPTH / 2 * z_spacing)
    return origin, (SPACING_XY_MM, SPACING_XY_MM, z_spacing)


def volume(series: Series, rng: random.Random) -> np.ndarray:
    """int16 Hounsfield units: lung-like air with faint noise and a dense sphere per nodule."""
    origin, spacing = geometry(series)
    gen = np.random.default_rng(rng.randrange(2**32))
    hu = (-850 + gen.integers(-3, 4, size=(DEPTH, SLICE_PX, SLICE_PX))).astype(np.int16)
    zz, yy, xx = np.ogrid[:DEPTH, :SLICE_PX, :SLICE_PX]
    for n in series.nodules:
        cx, cy, cz = ((n.xyz[i] - origin[i]) / spacing[i] for i in range(3))
        r = max(n.diameter_mm / 2, 2.0)
        inside = ((xx - cx) * spacing[0]) ** 2 + ((yy - cy) * spacing[1]) ** 2 + ((zz - cz) * spacing[2]) ** 2 <= r**2
        hu[inside] = 40
    return hu


def mhd_header(series: Series) -> bytes:
    origin, spacing = geometry(series)
    return (
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\nCompressedData = False\n"
        "TransformMatrix = 1 0 0 0 1 0 0 0 1\n"
        f"Offset = {origin[0]:.4f} {origin[1]:.4f} {origin[2]:.4f}\nCenterOfRotation = 0 0 0\n"
        "AnatomicalOrientation = RAI\n"
        f"ElementSpacing = {spacing[0]:.4f} {spacing[1]:.4f} {spacing[2]:.4f}\n"
        f"DimSize = {SLICE_PX} {SLICE_PX} {DEPTH}\nElementType = MET_SHORT\nElementDataFile = {series.uid}.raw\n"
    ).encode()


def write_subset_zips(folder: Path, subsets: list[list[Series]], seed: int = 11) -> list[Path]:
    """subsetN.zip per list of series, laid out as LUNA16's: subsetN/<uid>.mhd and .raw."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for number, members in enumerate(subsets):
        path = folder / f"subset{number}.zip"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for series in members:
                zf.writestr(f"subset{number}/{series.uid}.mhd", mhd_header(series))
                zf.writestr(f"subset{number}/{series.uid}.raw", volume(series, rng).tobytes())
        paths.append(path)
    return paths


def candidates_csv(path: Path, series: list[Series], absent: list[Series], negatives: int = 6, seed: int = 5) -> None:
    """The book's candidates.csv for these series: a positive near each nodule, negatives in the lung,
    and rows for series that are not on disk (the book must skip those)."""
    rng = random.Random(seed)
    rows = []
    for s in [*series, *absent]:
        origin, spacing = geometry(s)
        for n in s.nodules:
            rows.append((s.uid, *(c + rng.uniform(-0.5, 0.5) for c in n.xyz), 1))
        for _ in range(negatives):
            xyz = tuple(origin[i] + rng.uniform(0.3, 0.7) * extent * spacing[i] for i, extent in enumerate((SLICE_PX, SLICE_PX, DEPTH)))
            rows.append((s.uid, *xyz, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["seriesuid", "coordX", "coordY", "coordZ", "class"])
        writer.writerows(rows)
