"""gs:// sources and `provision mirror` against a real GCS endpoint: the gcp-storage-emulator package."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from provision.cli import main
from tests.support.dataset import Built, tree_md5s
from tests.test_stage import expected_tree, total_bytes


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    code = main([*args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_mirror_then_stage_from_the_bucket(built: Built, serve, write_profile, bucket, capsys, tmp_path: Path) -> None:
    http = serve()
    dest = f"gs://{bucket.name}/luna16/"
    mirror_profile = write_profile({"dataset": str(built.manifest), "sources": [http.url + "/mirror/"], "root": str(tmp_path / "scratch")}, name="m.yaml")

    code, dry = run_json(capsys, "mirror", "-c", str(mirror_profile), "--to", dest, "--dry-run")
    assert code == 0 and dry["bytes_to_upload"] == total_bytes(built)
    assert {i["action"] for i in dry["items"]} == {"upload"} and http.stats.bytes_sent == 0

    code, done = run_json(capsys, "mirror", "-c", str(mirror_profile), "--to", dest)
    assert code == 0, done
    assert {i["action"] for i in done["items"]} == {"uploaded"}
    for key, info in built.files.items():
        blob = bucket.get_blob(f"luna16/{key}")
        assert blob.size == info["size"] and blob.metadata["md5"] == info["md5"]
        assert blob.download_as_bytes() == (built.folder / key).read_bytes()
    assert not list(bucket.list_blobs(prefix="luna16/.provision-parts/")), "parts are removed after compose"

    sent = http.stats.bytes_sent
    code, again = run_json(capsys, "mirror", "-c", str(mirror_profile), "--to", dest)
    assert code == 0 and {i["action"] for i in again["items"]} == {"present"} and again["bytes_to_upload"] == 0
    assert http.stats.bytes_sent == sent, "a second mirror fetches and uploads nothing"

    from_gs = write_profile({"dataset": str(built.manifest), "sources": [dest], "root": str(tmp_path / "gs-root")}, name="gs.yaml")
    from_http = write_profile({"dataset": str(built.manifest), "sources": [http.url + "/mirror/"], "root": str(tmp_path / "http-root")}, name="h.yaml")
    code, report = run_json(capsys, "stage", "-c", str(from_gs))
    assert code == 0, report
    assert {f["source"] for f in report["files"]} == {dest + k for k in built.files}
    assert run_json(capsys, "stage", "-c", str(from_http))[0] == 0
    gs_tree = tree_md5s(tmp_path / "gs-root" / "part2" / "luna")
    assert gs_tree == tree_md5s(tmp_path / "http-root" / "part2" / "luna") == expected_tree(built)


def test_missing_and_tampered_objects_fall_back(built: Built, serve, write_profile, bucket, capsys, tmp_path: Path) -> None:
    http = serve()
    for key in built.files:
        if key != "subset1.zip":  # missing from the bucket
            data = (built.folder / key).read_bytes()
            if key == "subset2.zip":  # tampered: one byte differs
                data = data[:50] + bytes([data[50] ^ 1]) + data[51:]
            bucket.blob(f"luna16/{key}").upload_from_string(data)
    dest = f"gs://{bucket.name}/luna16/"
    profile = write_profile({"dataset": str(built.manifest), "sources": [dest, http.url + "/mirror/"]})

    assert main(["plan", "-c", str(profile), "--probe", "--json"]) == 0
    probed = {f["key"]: f for f in json.loads(capsys.readouterr().out)["data"]["files"]}
    assert probed["subset0.zip"]["bucket_status"] == "present"
    assert probed["subset1.zip"]["bucket_status"] == "missing"
    assert probed["subset2.zip"]["bucket_status"] == "md5 differs"

    code, report = run_json(capsys, "stage", "-c", str(profile))
    assert code == 0, report
    files = {f["key"]: f for f in report["files"]}
    assert files["subset0.zip"]["source"] == dest + "subset0.zip"
    assert files["subset1.zip"]["source"] == http.url + "/mirror/subset1.zip"
    assert files["subset2.zip"]["source"] == http.url + "/mirror/subset2.zip"
    assert any("the manifest says" in r and built.files["subset2.zip"]["md5"] in r for r in files["subset2.zip"]["retries"])
    assert tree_md5s(tmp_path / "root" / "part2" / "luna") == expected_tree(built)
    assert http.stats.bytes_for("subset0.zip") == 0


def test_missing_bucket_is_a_clear_failure(built: Built, write_profile, emulator, monkeypatch, capsys) -> None:
    from provision.staging.transport import gcs

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    gcs._clients.clear()
    profile = write_profile({"dataset": str(built.manifest), "sources": ["gs://no-such-bucket-here/luna16/"], "subsets": "0"})
    code, report = run_json(capsys, "stage", "-c", str(profile))
    assert code == 1
    assert all(f["outcome"] == "failed" for f in report["files"])
    assert "gs://no-such-bucket-here/luna16/subset0.zip" in report["files"][0]["error"]
    gcs._clients.clear()


def test_large_files_upload_as_parts_and_resume(built: Built, serve, write_profile, bucket, capsys, monkeypatch, tmp_path: Path) -> None:
    from provision.staging import mirror

    monkeypatch.setattr(mirror, "MIN_PART_BYTES", 200_000)
    assert [len(mirror.part_plan(1_000_000, 8))] == [5]
    assert mirror.part_plan(10, 8) == [(0, 10)]
    http = serve()
    size = built.files["subset0.zip"]["size"]
    parts = mirror.part_plan(size, 8)
    assert len(parts) > 1
    # an earlier, interrupted mirror left the first part behind: it is reused, not uploaded again
    start, end = parts[0]
    leftover = bucket.blob("luna16/.provision-parts/subset0.zip.000")
    leftover.upload_from_string((built.folder / "subset0.zip").read_bytes()[start:end])
    seen: list[str] = []
    original = mirror.BucketMirror._upload_range

    def spy(self, local, blob, s, e, metadata):
        seen.append(blob.name)
        return original(self, local, blob, s, e, metadata)

    monkeypatch.setattr(mirror.BucketMirror, "_upload_range", spy)
    profile = write_profile({"dataset": str(built.manifest), "sources": [http.url + "/mirror/"], "subsets": "0"})
    code, done = run_json(capsys, "mirror", "-c", str(profile), "--to", f"gs://{bucket.name}/luna16/")
    assert code == 0, done
    assert {i["key"]: i["parts"] for i in done["items"]}["subset0.zip"] == len(parts)
    assert leftover.name not in seen and f"luna16/.provision-parts/subset0.zip.{len(parts) - 1:03d}" in seen
    assert bucket.get_blob("luna16/subset0.zip").download_as_bytes() == (built.folder / "subset0.zip").read_bytes()
    assert not list(bucket.list_blobs(prefix="luna16/.provision-parts/"))


@pytest.mark.parametrize(
    ("raised", "kind", "words"),
    [
        (("Forbidden", "caller does not have storage.objects.get access"), "permanent", ["roles/storage.objectViewer", "gs://b"]),
        (("Forbidden", "Bucket is a requester pays bucket but no user project provided."), "permanent", ["requester-pays", "data.gcs.user_project"]),
        (("BadRequest", "User project specified in the request is invalid."), "permanent", ["requester-pays"]),
        (("Unauthorized", "invalid credentials"), "permanent", ["application-default login"]),
        (("NotFound", "The specified bucket does not exist."), "permanent", ["bucket gs://b does not exist"]),
        (("NotFound", "No such object: b/x"), "permanent", ["no such object"]),
        (("TooManyRequests", "slow down"), "transient", ["TooManyRequests"]),
        (("ServiceUnavailable", "try later"), "transient", ["ServiceUnavailable"]),
    ],
)
def test_gcs_errors_are_sorted_and_explained(raised: tuple[str, str], kind: str, words: list[str]) -> None:
    """The library's own exception classes, as the client raises them, mapped to retry or next source."""
    from google.api_core import exceptions as gx

    from provision.staging.signals import PermanentError, TransientError
    from provision.staging.transport.gcs import gcs_errors

    expected = PermanentError if kind == "permanent" else TransientError
    with pytest.raises(expected) as info, gcs_errors("gs://b/x", "b", object()):
        name, message = raised
        raise getattr(gx, name)(message)
    for word in words:
        assert word in info.value.reason
    assert "token" not in info.value.reason.lower()


def test_stream_mode_from_a_bucket(built: Built, write_profile, bucket, capsys, tmp_path: Path) -> None:
    for key in built.files:
        bucket.blob(f"luna16/{key}").upload_from_string((built.folder / key).read_bytes())
    profile = write_profile({"dataset": str(built.manifest), "sources": [f"gs://{bucket.name}/luna16/"], "mode": "stream"})
    code, report = run_json(capsys, "stage", "-c", str(profile))
    assert code == 0, report
    assert tree_md5s(tmp_path / "root" / "part2" / "luna") == expected_tree(built)
    assert not list((tmp_path / "root").rglob("*.zip")), "stream mode stores no archive"
