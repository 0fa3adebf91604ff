"""Chapter 15's assets (the second edition): the Segment Anything checkpoints, staged like the data into the book's
p2ch15/, where its own utils.get_sam_model finds them. Served by a loopback stand-in of dl.fbaipublicfiles.com; the
checkpoints are small fakes whose md5s a test manifest pins (the real ones are in configs/datasets/segment-anything.yaml)."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
from pathlib import Path

import pytest
import yaml

from provision.cli import main
from tests.conftest import stage_and_kill_half_way, stage_in_child
from tests.support.dataset import Built
from tests.support.server import Faults, FileServer

CHECKPOINTS = {"sam_vit_b_01ec64.pth": 3_000_000, "sam_vit_l_0b3195.pth": 5_000_000, "sam_vit_h_4b8939.pth": 1_000_000}


def fake_checkpoints(folder: Path, seed: int = 15) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    blobs = {key: rng.randbytes(size) for key, size in CHECKPOINTS.items()}
    for key, blob in blobs.items():
        (folder / key).write_bytes(blob)
    return blobs


def pinned_manifest(where: Path, blobs: dict[str, bytes], sources: list[str]) -> Path:
    """segment-anything.yaml's shape, with the fakes' sizes and md5s pinned and the stand-in as the source."""
    files = [{"key": key, "size": len(blob), "md5": hashlib.md5(blob).hexdigest()} for key, blob in blobs.items()]
    path = where / "sam-test.yaml"
    path.write_text(yaml.safe_dump({"name": "sam-test", "dir": "p2ch15", "sources": sources, "files": files}, sort_keys=False))
    return path


@pytest.fixture
def sam(tmp_path: Path, built: Built, serve, book2_profile):
    """A checked-out second edition with LUNA-like data staged, the fakes on a stand-in server, and a profile maker."""
    blobs = fake_checkpoints(tmp_path / "fbaipublicfiles")
    data = serve()

    def profile(sources: list[str], name: str = "sam.yaml", **book: object) -> Path:
        manifest = pinned_manifest(tmp_path, blobs, sources)
        return book2_profile(book={"extras": True, "assets": str(manifest), **book}, name=name,
                             data={"dataset": str(built.manifest), "sources": [data.url + "/mirror/"], "segment_mb": 1, "backoff_s": 0.05})

    plain = book2_profile(data={"dataset": str(built.manifest), "sources": [data.url + "/mirror/"]}, name="plain.yaml")
    assert main(["book", "-c", str(plain)]) == 0
    assert main(["stage", "-c", str(plain)]) == 0
    return blobs, profile, tmp_path / "dlwpt-code-2e"


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# the book's own get_sam_model, out of p2ch15/utils.py (whose imports need transformers and torchvision); its download
# replaced by a failure, so that a checkpoint it did not find fails the probe
GET_SAM_MODEL = """
import ast, json, os, sys
source = open("p2ch15/utils.py").read()
function = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "get_sam_model")
class NoDownload:
    def get(self, url, **kwargs):
        raise SystemExit(f"get_sam_model downloads {url}: it did not find the checkpoint")
scope = {"os": os, "requests": NoDownload(), "tqdm": None}
exec(compile(ast.Module([function], []), "p2ch15/utils.py", "exec"), scope)
config, path = scope["get_sam_model"](sys.argv[1])
print(json.dumps({"config": config, "path": path, "bytes": os.path.getsize(path)}))
"""


def book_finds(checkout: Path, size: str) -> dict:
    proc = subprocess.run(["python3", "-c", GET_SAM_MODEL, size], cwd=checkout, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def test_the_books_checkpoint_is_staged_where_get_sam_model_finds_it(sam, tmp_path: Path, capsys) -> None:
    blobs, profile, checkout = sam
    with FileServer(tmp_path / "fbaipublicfiles") as fbai:
        path = profile([fbai.url + "/mirror/"])
        capsys.readouterr()
        assert main(["stage", "--json", "-c", str(path)]) == 0
        result = json.loads(capsys.readouterr().out)
    staged = {f["key"]: f["outcome"] for f in result["files"]}
    assert staged["sam_vit_l_0b3195.pth"] == "staged" and "sam_vit_b_01ec64.pth" not in staged, "the book's default only: vit_l"
    assert staged["subset0.zip"] == "already staged"
    final = checkout / "p2ch15" / "sam_vit_l_0b3195.pth"
    assert md5(final) == hashlib.md5(blobs["sam_vit_l_0b3195.pth"]).hexdigest()
    assert book_finds(checkout, "large") == {"config": "vit_l", "path": "p2ch15/sam_vit_l_0b3195.pth", "bytes": CHECKPOINTS["sam_vit_l_0b3195.pth"]}
    untracked = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=checkout, capture_output=True, text=True,
                               check=True).stdout
    assert "sam_vit" not in untracked and ".provision" not in untracked, "the checkpoints and the engine's state stay out of git status"

    assert main(["status", "--json", "-c", str(path)]) == 0
    rows = {r["key"]: r["stage"] for r in json.loads(capsys.readouterr().out)["files"]}
    assert rows["sam_vit_l_0b3195.pth"] == "verified" and rows["subset0.zip"] == "extracted"
    assert main(["verify", "--full", "--json", "-c", str(path)]) == 0
    checked = {r["key"]: r for r in json.loads(capsys.readouterr().out)["files"]}
    assert checked["sam_vit_l_0b3195.pth"]["stage"] == "verified" and not checked["sam_vit_l_0b3195.pth"]["damaged"]
    final.write_bytes(b"\0" + final.read_bytes()[1:])  # the same size, one byte wrong
    assert main(["verify", "--full", "-c", str(path)]) == 1
    assert "sam_vit_l_0b3195.pth" in capsys.readouterr().out
    with FileServer(tmp_path / "fbaipublicfiles") as fbai:
        assert main(["stage", "-c", str(profile([fbai.url + "/mirror/"]))]) == 0, "verify recorded the damage: stage fetches it again"
    assert md5(final) == hashlib.md5(blobs["sam_vit_l_0b3195.pth"]).hexdigest()


def test_the_plan_and_its_disk_count_the_checkpoints_only_when_chapter_15_is_asked_for(sam, book2_profile, built: Built, capsys) -> None:
    blobs, profile, checkout = sam

    def plan(path: Path) -> dict:
        assert main(["plan", "--json", "-c", str(path)]) == 0
        return json.loads(capsys.readouterr().out)

    without = plan(book2_profile(data={"dataset": str(built.manifest)}, name="none.yaml"))
    assert without["assets"] is None
    chosen = plan(profile(["https://dl.example.org/segment_anything/"], sam=["base", "vit_h"]))
    assert [f["key"] for f in chosen["assets"]["files"]] == ["sam_vit_b_01ec64.pth", "sam_vit_h_4b8939.pth"]
    assert chosen["assets"]["target_dir"] == str(checkout / "p2ch15")
    assert chosen["assets"]["files"][0]["locations"][0]["url"] == "https://dl.example.org/segment_anything/sam_vit_b_01ec64.pth"
    more = CHECKPOINTS["sam_vit_b_01ec64.pth"] + CHECKPOINTS["sam_vit_h_4b8939.pth"]
    assert chosen["disk"][0]["final_bytes"] - without["disk"][0]["final_bytes"] == more, "the disk plan counts them"
    assert main(["plan", "-c", str(profile(["https://dl.example.org/segment_anything/"]))]) == 0
    text = capsys.readouterr().out
    assert f"chapter 15 Segment Anything checkpoints (book.sam), into {checkout / 'p2ch15'}" in text
    assert "sam_vit_l_0b3195.pth" in text and "sam_vit_b_01ec64.pth" not in text
    assert plan(profile(["https://dl.example.org/segment_anything/"], extras=False))["assets"] is None, "chapter 15 not asked for"


def test_a_checkpoint_name_the_book_does_not_know_is_refused(sam, capsys) -> None:
    _, profile, _ = sam
    assert main(["plan", "-c", str(profile(["https://dl.example.org/x/"], sam=["vit_xl"]))]) == 2
    err = capsys.readouterr().err
    assert "'vit_xl' is not a Segment Anything checkpoint" in err and "hint:" in err and "Traceback" not in err


def test_a_download_killed_half_way_resumes_and_never_shows_a_partial_checkpoint(sam, tmp_path: Path) -> None:
    blobs, profile, checkout = sam
    key = "sam_vit_l_0b3195.pth"
    with FileServer(tmp_path / "fbaipublicfiles", Faults(rate_per_conn=600_000)) as fbai:
        path = profile([fbai.url + "/mirror/"])
        stage_and_kill_half_way(path, fbai, CHECKPOINTS[key])
        assert not (checkout / "p2ch15" / key).exists(), "killed half way: nothing under the name get_sam_model checks"
        partials = [p for p in (checkout / ".provision").rglob("*") if p.name.startswith(key)]
        assert partials, "the bytes that landed are kept for the next run"
        fbai.faults.rate_per_conn = None
        sent = fbai.stats.bytes_sent
        done = stage_in_child(path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert fbai.stats.bytes_sent - sent <= 0.75 * CHECKPOINTS[key], "resumed, not fetched again from its first byte"
    assert md5(checkout / "p2ch15" / key) == hashlib.md5(blobs[key]).hexdigest()


def test_a_mirror_that_lies_is_refused_and_the_next_source_delivers(sam, tmp_path: Path, capsys) -> None:
    blobs, profile, checkout = sam
    key = "sam_vit_l_0b3195.pth"
    lies = tmp_path / "liar"
    lies.mkdir()
    (lies / key).write_bytes(random.Random(1).randbytes(CHECKPOINTS[key]))  # the right size, other bytes
    with FileServer(lies) as liar:
        only_liar = profile([liar.url + "/mirror/"], name="liar.yaml")
        assert main(["stage", "-c", str(only_liar)]) == 1
        captured = capsys.readouterr()
        assert "md5" in captured.out + captured.err and "Traceback" not in captured.err
        assert not (checkout / "p2ch15" / key).exists(), "wrong bytes never take the checkpoint's name"
        with FileServer(tmp_path / "fbaipublicfiles") as fbai:
            both = profile([liar.url + "/mirror/", fbai.url + "/mirror/"], name="both.yaml")
            assert main(["stage", "--json", "-c", str(both)]) == 0
            result = {f["key"]: f for f in json.loads(capsys.readouterr().out)["files"]}
    assert result[key]["source"].startswith(fbai.url)
    assert md5(checkout / "p2ch15" / key) == hashlib.md5(blobs[key]).hexdigest()


def test_staging_them_before_the_book_is_checked_out_is_refused(tmp_path: Path, built: Built, serve, book2_profile, capsys) -> None:
    """The checkpoints go into the checkout's p2ch15/: written first, they would block the clone."""
    srv = serve()
    manifest = pinned_manifest(tmp_path, fake_checkpoints(tmp_path / "fakes"), [srv.url + "/mirror/"])
    path = book2_profile(book={"extras": True, "assets": str(manifest)}, data={"dataset": str(built.manifest), "sources": [srv.url + "/mirror/"]})
    assert main(["stage", "-c", str(path)]) == 1
    err = capsys.readouterr().err
    assert "holds no checkout" in err and "provision book" in err
    assert not (tmp_path / "dlwpt-code-2e").exists(), "nothing written"


def test_the_shipped_manifest_pins_the_books_three_checkpoints() -> None:
    from provision.config import configs_dir
    from provision.manifest import load_manifest

    manifest = load_manifest("segment-anything", configs_dir())
    assert manifest.sources == ("https://dl.fbaipublicfiles.com/segment_anything/",) and manifest.dir == "p2ch15"
    pins = {f.key: f.md5 for f in manifest.files}
    assert pins == {"sam_vit_b_01ec64.pth": "01ec64d29a2fca3f0661936605ae66f8", "sam_vit_l_0b3195.pth": "0b3195507c641ddb6910d2bb5adee89c",
                    "sam_vit_h_4b8939.pth": "4b8939a88964f0f4ff5f5b2642c598a6"}
    assert all(key.split("_")[-1].removesuffix(".pth") == md5[:6] for key, md5 in pins.items()), "each name carries its md5's start"
