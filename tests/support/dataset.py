"""Build LUNA-like data sets in tests: subsetN.zip holding subsetN/<uid>.mhd + .raw, and their manifest."""

from __future__ import annotations

import hashlib
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class Built:
    folder: Path                 # where the archives are (what the server serves)
    files: dict[str, dict]       # key -> {size, md5, members: {name: bytes-md5}, unpacked_size}
    manifest: Path


_LOW_BITS = bytes(b & 0x0F for b in range(256))


def ct_like_bytes(n: int, rng: random.Random) -> bytes:
    """Bytes that deflate about 2:1, like CT volumes: 16-bit samples whose low byte is noisy
    (4 random bits) and whose high byte changes slowly."""
    out = bytearray(n)
    evens = len(range(0, n, 2))
    out[0::2] = rng.randbytes(evens).translate(_LOW_BITS)
    ramp = bytes(i // 64 for i in range(256 * 64))
    out[1::2] = (ramp * ((n - evens) // len(ramp) + 1))[: n - evens]
    return bytes(out)


def build_luna_like(folder: Path, *, subsets: int = 3, scans: int = 2, raw_bytes: int = 200_000, seed: int = 7,
                    name: str = "luna-like", records: bool = True, extra_plain: bool = True, compression: int = zipfile.ZIP_DEFLATED) -> Built:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    files: dict[str, dict] = {}
    for s in range(subsets):
        key = f"subset{s}.zip"
        members: dict[str, str] = {}
        with zipfile.ZipFile(folder / key, "w", compression=compression, compresslevel=1 if compression == zipfile.ZIP_DEFLATED else None) as zf:
            for i in range(scans):
                uid = f"1.3.6.1.4.1.14519.5.2.1.6279.6001.{s:02d}{i:04d}{rng.randrange(10**6):06d}"
                slices = max(1, (raw_bytes + rng.randrange(1000)) // 8192)  # 64 x 64 x 2 bytes a slice: the header tells the size
                raw = ct_like_bytes(slices * 8192, rng)
                mhd = (f"ObjectType = Image\nNDims = 3\nDimSize = 64 64 {slices}\n"
                       f"ElementType = MET_SHORT\nElementDataFile = {uid}.raw\n").encode()
                for member, data in ((f"subset{s}/{uid}.mhd", mhd), (f"subset{s}/{uid}.raw", raw)):
                    zf.writestr(member, data)
                    members[member] = hashlib.md5(data).hexdigest()
        blob = (folder / key).read_bytes()
        with zipfile.ZipFile(folder / key) as zf:
            unpacked = sum(i.file_size for i in zf.infolist())
        files[key] = {"size": len(blob), "md5": hashlib.md5(blob).hexdigest(), "members": members, "unpacked_size": unpacked,
                      "record": "1001" if s < max(1, subsets - 1) else "1002"}
    if extra_plain:
        text = b"seriesuid,coordX,coordY,coordZ,diameter_mm\r\n" + b"".join(f"1.2.{i},1,2,3,4\r\n".encode() for i in range(200))
        (folder / "annotations.csv").write_bytes(text)
        files["annotations.csv"] = {"size": len(text), "md5": hashlib.md5(text).hexdigest(), "members": {}, "unpacked_size": None, "record": "1001"}
    manifest_path = folder.parent / f"{name}.yaml"
    entries = []
    for key, info in files.items():
        entry = {"key": key, "size": info["size"], "md5": info["md5"], "unpack": key.endswith(".zip")}
        if records:
            entry["record"] = info["record"]
        entries.append(entry)
    manifest_path.write_text(yaml.safe_dump({"name": name, "dir": "part2/luna", "unpack_ratio": 2.0, "files": entries}, sort_keys=False))
    return Built(folder=folder, files=files, manifest=manifest_path)


def records_of(built: Built) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, info in built.files.items():
        out.setdefault(info["record"], []).append(key)
    return out


def tree_md5s(target: Path) -> dict[str, str]:
    """relative path -> md5 of every regular file under ``target`` (hidden files included)."""
    return {str(p.relative_to(target)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(target.rglob("*")) if p.is_file()}
