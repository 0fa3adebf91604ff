"""Archive mode unpacks an archive while it lands: each member is inflated as its bytes land on disk, on as many
threads as unpacking uses, instead of once the whole archive is there.

The central directory is read first (ranged reads of the tail, as stream mode does, on a thread of its own so the
download does not wait for it). Members are then inflated in any order their bytes land (the download's segments
arrive side by side): a worker takes the member with the most landed bytes not yet inflated (all of its rest, or
FOLLOW_BYTES at least), inflates them and puts it back if more are to come, so a member that a segment is still
bringing is followed a few MiB behind, and the last byte of the archive leaves a few MiB a member to inflate, not
whole members. Bytes are read back from the partial file (the page cache) and written under temporary names, each
held once its size and CRC-32 check out (:mod:`.members`). No member takes its final name here before the archive is
vouched for: ``finish`` is given the archive once its md5 checked out, and names the members together only when the
directory they were cut by is the archive's own; on any doubt what this landing holds is removed (its own temporary
files, never a final name) and the archive is unpacked the ordinary way.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ...errors import ExtractError, OutOfSpaceError
from ..signals import Stopped
from ..stop import StopSignal
from ..transport.opening import BLOCK_BYTES
from .extract import MemberFromFile, same_directory
from .members import Layout, Member, StreamMember, is_held
from .naming import discard, publish

log = logging.getLogger(__name__)
POLL_S = 0.05  # how often an idle worker looks for a member with bytes to inflate
FOLLOW_BYTES = 4 << 20  # a member still landing is inflated on once this many of its bytes wait (or all of its rest)
# smaller archives (under 1 MiB) are unpacked once whole: reading the directory first costs a block (64 KiB) or two,
# and their unpacking takes a moment anyway
MIN_ARCHIVE_BYTES = 16 * BLOCK_BYTES


class _Job:
    """A member on its way: where its bytes end in the archive (the next member's header), and its inflation once
    begun."""

    def __init__(self, sm: StreamMember, end: int) -> None:
        self.sm = sm
        self.end = end
        self.member: MemberFromFile | None = None
        self.upto = 0  # the landed bytes it was taken for

    @property
    def at(self) -> int:
        """The first byte it still needs (its local header until it is begun)."""
        return self.member.pos if self.member is not None else self.sm.header_offset


class Landing:
    """One archive's members unpacked as its download lands. ``landed(start, end)`` says up to which byte the partial
    file is written from ``start`` on, without a gap (``end`` at most); ``layout(halt)`` reads the directory, on a
    thread of its own (None: do not unpack early, the archive is unpacked once it is whole; ``halt`` says the landing
    was abandoned). ``finish`` waits for the last members, ``abandon`` stops them."""

    def __init__(self, layout: Callable[[threading.Event], Layout | None], part: Path, landed: Callable[[int, int], int], *, target: Path,
                 workers: int, stop: StopSignal, on_member: Callable[[Member], None] | None = None) -> None:
        self.read_layout = layout
        self.target = target
        self.landed = landed
        self.workers = max(1, workers)
        self.on_member = on_member
        self.stop = stop
        self.halt = threading.Event()
        stop.on_set(self.halt.set)
        self.fd = os.open(part, os.O_RDONLY)  # opened now: the partial file is renamed once verified, its readers go on
        self.layout: Layout | None = None
        self.pending: list[_Job] = []  # the members not written yet and not in a worker's hands
        self.in_hand = 0  # members in a worker's hands: a worker with none to take waits while one may be put back
        self.lock = threading.Condition()
        self.next_look = 0.0  # when the next look for landed members is due
        self.errors: list[BaseException] = []
        self.written: list[Member] = []
        self.kept: list[Member] = []  # held already, by a run of this archive that was stopped
        self.threads: list[threading.Thread] = []
        self.starter = threading.Thread(target=self._start, name="landing", daemon=True)
        self.starter.start()

    def _start(self) -> None:
        try:
            layout = self.read_layout(self.halt)
        except BaseException as exc:  # noqa: BLE001 - a bug in reading the directory: reported by finish()
            self.errors.append(exc)
            return
        if layout is None:
            return
        ends = [sm.header_offset for sm in layout.members[1:]] + [layout.directory_offset]
        with self.lock:  # under the lock: once abandon() has halted, no worker starts
            if self.halt.is_set():
                return
            self.layout = layout
            self.pending = [_Job(sm, end) for sm, end in zip(layout.members, ends, strict=True)]
            for i in range(min(self.workers, len(self.pending))):
                thread = threading.Thread(target=self._work, name=f"landing-{i}", daemon=True)
                self.threads.append(thread)
                thread.start()

    def _next(self) -> _Job | None:
        """The member with the most landed bytes not yet inflated (all of its rest, or FOLLOW_BYTES at least), waiting
        for one; None when none is left or the work stops. One look over the members every POLL_S, whatever the
        number of workers (and again at once after a look that found one: more may have landed)."""
        with self.lock:
            while (self.pending or self.in_hand) and not self.halt.is_set():
                now = time.monotonic()
                if self.pending and now >= self.next_look:
                    best, best_upto, best_bytes = -1, 0, 0
                    for i, job in enumerate(self.pending):
                        upto = self.landed(job.at, job.end)
                        if upto - job.at >= min(FOLLOW_BYTES, job.end - job.at) and upto - job.at > best_bytes:
                            best, best_upto, best_bytes = i, upto, upto - job.at
                    if best >= 0:
                        self.lock.notify()
                        self.in_hand += 1
                        job = self.pending.pop(best)
                        job.upto = best_upto
                        return job
                    self.next_look = now + POLL_S
                self.lock.wait(self.next_look - now if self.next_look > now else POLL_S)
            return None

    def _work(self) -> None:
        job: _Job | None = None
        try:
            while (job := self._next()) is not None:
                self._advance(job)
        except BaseException as exc:  # noqa: BLE001 - handed to finish()
            if job is not None and job.member is not None:
                job.member.discard()
                job.member = None
            with self.lock:
                if isinstance(exc, Stopped) and not self.stop.is_set() and job is not None:
                    self.pending.append(job)  # halted by the landing itself (another member failed): unfinished, not a failure
                else:
                    self.errors.append(exc)
                self.lock.notify_all()
            self.halt.set()
            if isinstance(exc, OutOfSpaceError):  # the disk is full: the download stops too
                self.stop.set(exc.message, exc)

    def _advance(self, job: _Job) -> None:
        """Inflate the bytes ``job`` was taken for; written and held once all are in, put back while more are to come."""
        assert self.layout is not None
        if job.member is None:
            if is_held(job.sm.member, self.layout.archive):  # checked out in a stopped run, with this directory's CRC
                with self.lock:
                    self.kept.append(job.sm.member)
                self._done(job.sm.member)
                return
            job.member = MemberFromFile(self.fd, job.sm, self.layout.archive)
        job.member.feed(job.upto, self.halt)
        if not job.member.fed:
            with self.lock:
                self.pending.append(job)
                self.in_hand -= 1
                self.lock.notify()
            return
        job.member.finish()
        with self.lock:
            self.written.append(job.sm.member)
        self._done(job.sm.member)

    def _done(self, member: Member) -> None:
        with self.lock:
            self.in_hand -= 1
            self.lock.notify_all()  # when it was the last, the workers waiting for one end
        if self.on_member is not None:
            self.on_member(member)

    def _join(self) -> None:
        """Wait for the workers (the directory's reader, if it still reads, ends on its own: it starts none now)."""
        for thread in self.threads:
            thread.join()
        for job in self.pending:  # begun and put back, never finished: their temporary files go
            if job.member is not None:
                job.member.discard()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def finish(self, archive: Path) -> list[Member] | None:
        """Every member of the verified ``archive``, named once the last is written; None when it is to be unpacked the
        ordinary way (its directory could not be read first, or differs from the one the members were cut by: what
        this landing holds then goes; or a member did not check out: the others stay held for the ordinary way)."""
        self.landed = lambda start, end: end  # the download is complete
        self.starter.join()
        with self.lock:
            self.next_look = 0.0
            self.lock.notify_all()
        self._join()
        if self.stop.is_set():
            raise Stopped(self.stop.reason)
        damaged = [e for e in self.errors if isinstance(e, ExtractError)]
        if self.errors and len(damaged) < len(self.errors):
            raise next(e for e in self.errors if not isinstance(e, ExtractError))
        if self.layout is None:
            return None
        if not same_directory(archive, self.layout):
            log.warning("%s: its directory differs from the one read before the download: unpacking it again", archive.name)
            self._remove()
            return None
        if damaged or self.pending:
            return None  # unpacked once whole: the ordinary way tells what is wrong (and takes up what checked out)
        members = [sm.member for sm in self.layout.members]
        publish(members, self.layout.archive)
        return members

    def abandon(self, remove: bool) -> None:
        """Stop; with ``remove``, what this landing holds goes too (its archive turned out damaged); otherwise it stays
        held for the next run to take up."""
        with self.lock:
            self.halt.set()
            self.lock.notify_all()
        self._join()
        if remove:
            self._remove()

    def _remove(self) -> None:
        """What this landing holds goes (its own temporary files), and the folders left empty by them, up to the target."""
        if self.layout is not None:
            discard(self.written + self.kept, self.layout.archive, self.target)
        self.written, self.kept = [], []
