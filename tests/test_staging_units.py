"""A unit test for each staging module that the end-to-end tests cover only from outside: each part on its own,
with real files, real zip members and a real loopback server where a source is needed."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from provision.config import DataConfig
from provision.errors import ChecksumError, DownloadError
from provision.planvalues import DataPlan, FileLocation, FilePlan
from provision.staging.archive import checkpoint, md5state, members, naming, writeback
from provision.staging.archive.members import Layout, Member, MemberWriter, StreamMember, lzma1_filter
from provision.staging.context import FileResult, StageContext
from provision.staging.fallback import from_sources
from provision.staging.segments import SegmentContext, SegmentedDownload
from provision.staging.signals import ChecksumMismatch, PermanentError, Stopped, StreamCorrupt, TransientError
from provision.staging.state import FileRecord
from provision.staging.stop import StopSignal
from provision.staging.transport import http
from provision.staging.transport.local import LocalTransfer
from provision.staging.transport.opening import RangeReader, open_transfer
from provision.staging.transport.protocol import Retrier
from provision.staging.unpack import check_repair_source
from tests.support.server import FileServer


def file_plan(key: str = "a.zip", locations: tuple[FileLocation, ...] = (), size: int | None = None, md5: str | None = None) -> FilePlan:
    return FilePlan(key=key, record=None, subset=None, size=size, md5=md5, unpack=False, unpacked_bytes=None, unpacked_estimated=False,
                    locations=locations, dest="", stage="missing", partial_bytes=0)


def context(tmp_path: Path, **data: object) -> StageContext:
    plan = DataPlan(dataset="t", manifest="", root=str(tmp_path), target_dir=str(tmp_path / "t"), mode="archive", subsets=None, sources=(),
                    files=(), connections=4, files_in_flight=1, keep_archives=False)
    (tmp_path / "t").mkdir(exist_ok=True)
    return StageContext(DataConfig(backoff_s=0.01, **data), plan)  # type: ignore[arg-type]


# ---------------------------------------------------------------- archive.md5state, archive.checkpoint


@pytest.mark.skipif(not md5state.available(), reason="OpenSSL's MD5 is not reachable from this Python")
def test_an_md5_saved_half_way_and_restored_is_the_md5_of_the_whole() -> None:
    data = os.urandom(3 << 20)
    first = md5state.ResumableMd5()
    first.update(data[:1234567])
    second = md5state.ResumableMd5(first.state())
    second.update(memoryview(data)[1234567:])
    assert second.hexdigest() == hashlib.md5(data).hexdigest() and len(first.state()) == md5state.CTX_BYTES
    with pytest.raises(ValueError):
        md5state.ResumableMd5(b"short")


def layout(tmp_path: Path, crc: int = 1) -> Layout:
    member = Member("s/x.raw", tmp_path / "s" / "x.raw", 4, crc)
    return Layout((StreamMember(member, 0, 4, 0),), 100, 200, "a.zip")


def test_a_checkpoint_is_for_one_archive_and_resumes_only_its_own_members(tmp_path: Path) -> None:
    saved = checkpoint.CheckpointFile(tmp_path / "a.zip.stream.json", 200, "f" * 32)
    mine = layout(tmp_path)
    point = checkpoint.Checkpoint(checkpoint.directory_digest(mine), 1, 60, b"\0" * md5state.CTX_BYTES)
    saved.save(point, ["s/x.raw"])
    assert saved.load() == (point, ["s/x.raw"])
    assert checkpoint.CheckpointFile(saved.path, 201, "f" * 32).load() is None, "another size: another archive"
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "x.raw").write_bytes(b"1234")
    assert checkpoint.resume_point(mine, saved.load(), tmp_path) is None, "a member under a final name is not this stream's"
    held = members.held_path(mine.members[0].member, "a.zip")
    held.write_bytes(b"1234")
    if md5state.available():
        assert checkpoint.resume_point(mine, saved.load(), tmp_path) == point
    other = layout(tmp_path, crc=2)  # the same names, another directory
    assert checkpoint.directory_digest(other) != checkpoint.directory_digest(mine)
    assert checkpoint.resume_point(other, saved.load(), tmp_path) is None
    assert not held.exists(), "what another archive's stream holds is removed"
    assert (tmp_path / "s" / "x.raw").read_bytes() == b"1234", "a final name is never removed: it may be another archive's"
    vouched = checkpoint.Checkpoint(checkpoint.directory_digest(other), 1, 120, None, vouched="e" * 32)
    saved.save(vouched, ["s/x.raw"])
    assert checkpoint.resume_point(other, saved.load(), tmp_path) == vouched, "vouched: its members are named, or held"


# ---------------------------------------------------------------- archive.members


def test_a_member_is_held_only_when_its_crc_checks_out_and_named_only_when_published(tmp_path: Path) -> None:
    data = b"CT slice " * 5000
    packed = zlib.compressobj(1, zlib.DEFLATED, -15)
    raw = packed.compress(data) + packed.flush()
    dest = tmp_path / "s" / "a.raw"
    dest.parent.mkdir()
    (dest.parent / ".a.raw.x.zip.old.provision-tmp").write_bytes(b"left by a killed run")
    (dest.parent / ".a.raw.y.zip.old.provision-tmp").write_bytes(b"another archive's")
    member = Member("s/a.raw", dest, len(data), zlib.crc32(data))
    good = MemberWriter(StreamMember(member, 0, len(raw), zipfile.ZIP_DEFLATED), "x.zip")
    assert not (dest.parent / ".a.raw.x.zip.old.provision-tmp").exists(), "a killed run's temporary file is cleared"
    assert (dest.parent / ".a.raw.y.zip.old.provision-tmp").exists(), "another archive's temporary file is not its to clear"
    (dest.parent / ".a.raw.y.zip.old.provision-tmp").unlink()
    good.feed(raw[:100])
    good.feed(raw[100:])
    good.finish()
    assert not dest.exists() and members.is_held(member, "x.zip") and not members.is_held(member, "y.zip"), "held, not named"
    assert members.held_path(member, "x.zip").read_bytes() == data and f"{member.crc:08x}" in members.held_path(member, "x.zip").name
    bad = MemberWriter(StreamMember(Member("s/b.raw", tmp_path / "s" / "b.raw", len(data), 1234), 0, len(raw), zipfile.ZIP_DEFLATED), "x.zip")
    bad.feed(raw)
    with pytest.raises(StreamCorrupt, match="CRC"):
        bad.finish()
    assert [p.name for p in dest.parent.iterdir()] == [members.held_path(member, "x.zip").name], "nothing half-written, no temporary left"
    past = MemberWriter(StreamMember(Member("s/c.raw", tmp_path / "s" / "c.raw", 10, 0), 0, len(raw), zipfile.ZIP_DEFLATED), "x.zip")
    with pytest.raises(StreamCorrupt, match="inflates past"):
        past.feed(raw)
    past.discard()  # what its caller does with a member that failed
    assert lzma1_filter(bytes([93, 0, 0, 16, 0]))["dict_size"] == 1 << 20
    header = Member("s/a.mhd", dest.with_suffix(".mhd"), 3, zlib.crc32(b"mhd"))
    members.held_path(header, "x.zip").write_bytes(b"mhd")
    assert [m.name for m in naming.naming_order([header, member])] == ["s/a.raw", "s/a.mhd"], "a header takes its name last"
    naming.publish([header, member], "x.zip")
    assert dest.read_bytes() == data and header.dest.read_bytes() == b"mhd" and sorted(p.name for p in dest.parent.iterdir()) == ["a.mhd", "a.raw"]
    long = Member("s/" + "l" * 240, dest.parent / ("l" * 240), 1, 0)
    assert len(members.held_path(long, "x.zip").name.encode()) <= 255, "a long member name still has a temporary name that fits"


def test_a_member_is_whole_on_disk_when_synced_and_its_writing_starts_early(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fsync before a member's final name sees every byte (none left in the file object's buffer), the disk is
    asked to write each 8 MiB as it is written, so that the fsync waits for the last few only, and what is on disk
    leaves the page cache: a window once the disk had a window's time for it, the whole member after its fsync."""
    synced: list[int] = []
    calls: list[tuple[str, int, int]] = []
    real_fsync = os.fsync
    monkeypatch.setattr(members.os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_size), calls.append(("fsync", 0, 0)), real_fsync(fd)))
    flags = {writeback.SYNC_FILE_RANGE_WRITE: "start", writeback.WRITTEN: "wait"}
    monkeypatch.setattr(writeback, "_load", lambda: lambda fd, offset, length, how: calls.append((flags[how], offset, length)))
    monkeypatch.setattr(writeback, "forget", lambda fd, offset=0, length=0: calls.append(("forget", offset, length)))
    window = 8 << 20
    for name, data in (("small.raw", b"one short slice"), ("large.raw", b"CT slice " * (3 << 20))):
        calls.clear()
        packed = zlib.compressobj(1, zlib.DEFLATED, -15)
        raw = packed.compress(data) + packed.flush()
        dest = tmp_path / name
        writer = MemberWriter(StreamMember(Member(name, dest, len(data), zlib.crc32(data)), 0, len(raw), zipfile.ZIP_DEFLATED), "x.zip")
        writer.feed(raw)
        writer.finish()
        held = members.held_path(writer.member, "x.zip")
        assert synced[-1] == len(data) and held.read_bytes() == data, f"{name}: all of it on disk before it is held (and named)"
    assert len(data) > 3 * window
    assert calls == [("start", 0, window), ("start", window, window),
                     ("start", 2 * window, window), ("wait", 0, window), ("forget", 0, window),
                     ("fsync", 0, 0), ("forget", 0, 0)], \
        "the large member's three full windows were handed to the disk early, the first let go once the third was written"


def test_what_is_on_disk_leaves_the_page_cache_and_a_refusal_is_only_a_lost_hint(tmp_path: Path) -> None:
    """The real calls on a real file: they return, the file is whole, and a descriptor they refuse raises nothing."""
    path = tmp_path / "member.raw"
    data = os.urandom(3 << 20)
    with open(path, "wb") as out:
        early = writeback.EarlyWriteback(out.fileno(), window_bytes=1 << 20)
        for at in range(0, len(data), 1 << 19):
            out.write(data[at : at + (1 << 19)])
            out.flush()
            early.written(at + (1 << 19))
        os.fsync(out.fileno())
        early.synced()
    assert early.started == 3 << 20 and early.forgotten == 1 << 20
    assert path.read_bytes() == data
    closed = os.open(path, os.O_RDONLY)
    os.close(closed)
    writeback.forget(closed)  # a closed descriptor: EBADF, swallowed


# ---------------------------------------------------------------- stop, context, fallback


def test_the_stop_signal_keeps_its_first_cause_and_cuts_what_is_open(tmp_path: Path) -> None:
    stop = StopSignal()
    cut: list[str] = []
    stop.on_set(lambda: cut.append("sockets"))
    stop.check()  # not set: nothing happens
    first = RuntimeError("a disk")
    stop.set("the first reason", first)
    stop.set("a later reason", RuntimeError("later"))
    assert stop.reason == "the first reason" and stop.cause is first and cut == ["sockets"]
    stop.on_set(lambda: cut.append("late"))
    assert cut == ["sockets", "late"], "a callback added after the stop runs at once"
    with pytest.raises(Stopped):
        stop.check()
    ctx = context(tmp_path)
    ctx.stop.set("interrupted")
    with pytest.raises(Stopped):
        ctx.sleep(10)


def test_the_context_retries_transient_failures_and_counts_bytes(tmp_path: Path) -> None:
    ctx = context(tmp_path, retries=3)
    seen: list[tuple[str, int]] = []
    ctx._emit = lambda event, **info: seen.append((event, info.get("n", 0)))  # noqa: SLF001 - a sink for this test
    result = FileResult("a.zip")
    tries = iter([TransientError("dropped"), TransientError("dropped"), "ok"])

    def call() -> str:
        got = next(tries)
        if isinstance(got, Exception):
            raise got
        return got

    assert ctx.with_retries(call, "a.zip", result) == "ok" and len(result.retries) == 2
    ctx.count(result, "a.zip", 7)
    assert result.bytes_fetched == 7 and ("bytes", 7) in seen
    assert ctx.partial == tmp_path / ".provision" / "partial" and ctx.free_bytes() > 0


def test_sources_are_tried_in_order_and_the_failure_says_what_was_tried(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    plan = file_plan(locations=(FileLocation("http", "https://a/"), FileLocation("http", "https://b/")), md5="0" * 32)
    tried: list[str] = []

    def attempt(loc: FileLocation) -> str:
        tried.append(loc.url)
        if loc.url == "https://a/":
            raise PermanentError("HTTP 404")
        return "bytes"

    assert from_sources(ctx, plan, FileResult("a.zip"), attempt, ChecksumMismatch) == ("https://b/", "bytes") and tried == ["https://a/", "https://b/"]

    def damaged(loc: FileLocation) -> str:
        raise ChecksumMismatch(f"md5 mismatch from {loc.url}")

    with pytest.raises(ChecksumError, match="every source delivered a wrong checksum"):
        from_sources(ctx, plan, FileResult("a.zip"), damaged, ChecksumMismatch)

    def unreachable(loc: FileLocation) -> str:
        raise TransientError(f"cannot resolve {loc.url}", unreachable="unresolved")

    with pytest.raises(DownloadError) as refused:
        from_sources(ctx, plan, FileResult("a.zip"), unreachable, ChecksumMismatch)
    assert "could not reach a, b" in (refused.value.hint or "") and "https://a/" in refused.value.message


# ---------------------------------------------------------------- segments, transport


def test_a_segmented_download_of_a_local_file_is_verified_and_named(tmp_path: Path) -> None:
    data = os.urandom(3_000_000)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    part, final = tmp_path / "a.bin.part", tmp_path / "a.bin"
    names: list[Path] = []

    def finish(p: Path, f: Path, size: int | None, md5: str | None, got: str, label: str) -> str:
        assert got == md5
        p.replace(f)
        names.append(f)
        return got

    job = SegmentContext(segment_min_bytes=256 << 10, connections=4, retrier=lambda: Retrier(2, 0.01, 1.0), stop=StopSignal(),
                         emit=lambda *a, **k: None, finish=finish)
    md5 = hashlib.md5(data).hexdigest()
    with ThreadPoolExecutor(4) as conns:
        got = SegmentedDownload(job, file_plan("a.bin"), LocalTransfer(str(source)), part, tmp_path / "a.progress.json", final, len(data), md5,
                                FileResult("a.bin"), conns).run()
    assert got == md5 and final.read_bytes() == data and names == [final] and not (tmp_path / "a.progress.json").exists()


@pytest.mark.parametrize("saved", ["starts", "segment"])
def test_a_resumed_download_keeps_the_segments_it_saved_whatever_their_bounds(tmp_path: Path, saved: str) -> None:
    """A progress file with bounds of its own (moved to member headers; or, from an older version, another segment size)
    resumes with them: only the bytes it lacks are fetched. One that makes no sense starts the file over."""
    data = os.urandom(3_000_000)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    part, final, progress = tmp_path / "a.bin.part", tmp_path / "a.bin", tmp_path / "a.progress.json"
    starts = [0, 700_001, 1_500_007, 2_300_003] if saved == "starts" else [0, 900_000, 1_800_000, 2_700_000]
    done = {0: 700_001, 700_001: 12_345, 1_500_007: 0, 2_300_003: 699_997} if saved == "starts" else \
        {0: 900_000, 900_000: 4_000, 1_800_000: 0, 2_700_000: 300_000}
    part.write_bytes(b"".join(data[s:s + n] + bytes(e - s - n) for (s, n), e in zip(done.items(), [*starts[1:], len(data)], strict=True)))
    layout = {"starts": starts} if saved == "starts" else {"segment": 900_000}
    md5 = hashlib.md5(data).hexdigest()
    progress.write_text(json.dumps({"size": len(data), "md5": md5, **layout, "done": {str(k): v for k, v in done.items()}}))
    job = SegmentContext(segment_min_bytes=256 << 10, connections=4, retrier=lambda: Retrier(2, 0.01, 1.0), stop=StopSignal(),
                         emit=lambda *a, **k: None, finish=lambda p, f, size, md5, got, label: (p.replace(f), got)[1])
    result = FileResult("a.bin")
    with ThreadPoolExecutor(4) as conns:
        got = SegmentedDownload(job, file_plan("a.bin"), LocalTransfer(str(source)), part, progress, final, len(data), md5, result, conns).run()
    assert got == md5 and final.read_bytes() == data
    assert result.bytes_fetched == len(data) - sum(done.values()), "only what the saved segments lacked"

    part.write_bytes(bytes(len(data)))  # bounds that overlap: nothing of the file is trusted
    progress.write_text(json.dumps({"size": len(data), "md5": md5, "starts": [0, 900_000, 800_000], "done": {"0": 900_000}}))
    result = FileResult("a.bin")
    with ThreadPoolExecutor(4) as conns:
        got = SegmentedDownload(job, file_plan("a.bin"), LocalTransfer(str(source)), part, progress, final, len(data), md5, result, conns).run()
    assert got == md5 and final.read_bytes() == data and result.bytes_fetched == len(data)


def test_a_range_reader_reads_a_remote_file_as_a_seekable_one(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("s/a.mhd", b"DimSize = 1 1 1\n")
        zf.writestr("s/a.raw", os.urandom(200_000))
    (tmp_path / "a.zip").write_bytes(buffer.getvalue())
    reader = RangeReader(LocalTransfer(str(tmp_path / "a.zip")), len(buffer.getvalue()))
    with zipfile.ZipFile(io.BufferedReader(reader, 4096)) as remote, zipfile.ZipFile(tmp_path / "a.zip") as local:
        assert [(i.filename, i.CRC) for i in remote.infolist()] == [(i.filename, i.CRC) for i in local.infolist()]
    assert reader.requests <= 4, "the directory costs a few block reads of the tail"
    assert open_transfer(FileLocation("local", str(tmp_path / "a.zip")), DataConfig()).info().size == len(buffer.getvalue())
    with pytest.raises(PermanentError, match="no transfer"):
        open_transfer(FileLocation("ftp", "ftp://x/"), DataConfig())


def test_http_reads_ranges_and_names_a_size_the_server_contradicts(tmp_path: Path) -> None:
    (tmp_path / "f.bin").write_bytes(b"0123456789" * 1000)
    with FileServer(tmp_path) as srv:
        got = bytearray()
        http.HttpTransfer(f"{srv.url}/mirror/f.bin", 5).read_range(10, 30, got.extend)
        assert bytes(got) == b"0123456789" * 2
        with pytest.raises(PermanentError, match="the manifest says 9999"):
            http.HttpTransfer(f"{srv.url}/mirror/f.bin", 5, expected_size=9999).read_range(0, 10, bytearray().extend)
    assert http.retry_after_seconds("7") == 7.0 and http.retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert http._unresolved(ConnectionError(OSError(socket.gaierror(-2, "Name or service not known")))) is True  # noqa: SLF001
    assert http._unresolved(ConnectionError("refused")) is False  # noqa: SLF001


def test_a_repair_refuses_a_source_that_serves_another_archive(tmp_path: Path) -> None:
    staged = FileRecord(unpack=True, verified=True, extracted=True, members={"s/x.raw": (4, 1)})
    check_repair_source(staged, layout(tmp_path, crc=1), frozenset({"s/x.raw"}), "https://m/a.zip")
    with pytest.raises(PermanentError, match="serves a different a.zip"):
        check_repair_source(staged, layout(tmp_path, crc=2), frozenset({"s/x.raw"}), "https://m/a.zip")
