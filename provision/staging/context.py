"""What every part of a staging run shares: its settings and plan, where data goes, the event sink, the
stop event, the hosts' gates and the retry policy; and the record each file's work fills in."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..config import DataConfig
from ..planvalues import DataPlan
from .signals import Stopped, TransientError
from .state import partial_dir
from .stop import StopSignal
from .transport.ordered import ReadAhead
from .transport.protocol import Retrier
from .transport.throttle import Throttle
from .transport.zenodo import ZenodoRecords

T = TypeVar("T")
Emit = Callable[..., None]


@dataclass
class FileResult:
    """One file's outcome, filled in as its staging goes."""

    key: str
    outcome: str = "pending"  # already staged | staged | linked | repaired | failed | stopped (by another file's cause)
    source: str | None = None
    bytes_fetched: int = 0
    retries: list[str] = field(default_factory=list)
    members: int = 0
    error: str | None = None
    hint: str | None = None
    checked: str = "md5"  # what vouches for the bytes: the archive's md5, or (an unpacked copy) its members against the pins


class StageContext:
    """The run's shared parts. ``emit(event, **info)`` is thread-safe; ``stop`` ends every transfer and wait."""

    def __init__(self, data: DataConfig, plan: DataPlan, emit: Emit | None = None) -> None:
        self.cfg = data
        self.plan = plan
        self.root = Path(plan.root)
        self.target = Path(plan.target_dir)
        self.stop = StopSignal()
        self.throttle = Throttle(data.connections_to, stop=self.stop)
        self.zenodo = ZenodoRecords(data.zenodo_url, data.timeout_s, self.throttle)
        # stream mode over several connections: the chunks fetched ahead of the inflating readers, every archive's together
        self.read_ahead = (ReadAhead(plan.stream_chunk_bytes, plan.stream_read_ahead_bytes // plan.stream_chunk_bytes)
                           if plan.stream_chunk_bytes and plan.stream_read_ahead_bytes >= plan.stream_chunk_bytes else None)
        self._emit = emit or (lambda event, **info: None)
        self._emit_lock = threading.Lock()

    def emit(self, event: str, **info: Any) -> None:
        with self._emit_lock:
            self._emit(event, **info)

    def count(self, result: FileResult, key: str, n: int) -> None:
        """``n`` bytes of ``key`` arrived."""
        result.bytes_fetched += n
        self.emit("bytes", n=n, key=key)

    def retrier(self) -> Retrier:
        """The retry policy for one transfer: tries for ordinary errors, minutes of patience for a throttling host."""
        return Retrier(self.cfg.retries, self.cfg.backoff_s, self.cfg.blocked_patience_min * 60)

    def with_retries(self, call: Callable[[], T], what: str, result: FileResult) -> T:
        retrier = self.retrier()
        while True:
            try:
                return call()
            except TransientError as exc:
                delay = retrier.after(exc)
                result.retries.append(f"{what}: {exc.reason}")
                self.sleep(delay)

    def sleep(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise Stopped(self.stop.reason)

    @property
    def partial(self) -> Path:
        """Where this run's partial downloads and stream checkpoints go (on the target's filesystem)."""
        return partial_dir(self.root, self.target)

    def free_bytes(self) -> int:
        st = os.statvfs(self.target)
        return st.f_bavail * st.f_frsize
