"""Staging progress for people: a bar on a terminal or in a notebook, plain lines in logs and CI.

Fed by the engine's events: ``bytes`` (n downloaded; negative when a failed pass is taken back),
``expect`` (n more to fetch than the plan knew of: repairs), ``unpack`` (an archive's unpacking
starts: its members and bytes), ``unpacked`` (a member written: its bytes), and ``file_done``,
``file_failed``, ``retry`` with a message. The rate is measured over the last seconds, and no ETA
is shown until it is known: a slow first connection does not promise hours.
"""

from __future__ import annotations

import collections
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from .disk import gb
from .sources import redact

RATE_WINDOW_S = 20.0  # the rate is what arrived over this many seconds
RATE_KNOWN_AFTER_S = 3.0  # no rate (so no ETA) before this much time has been measured


@dataclass
class Unpacking:
    members: int
    bytes_total: int
    members_done: int = 0
    bytes_done: int = 0


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """Receives engine events; draws a bar on a terminal or notebook, prints plain lines otherwise."""

    def __init__(self, total_bytes: int, *, stream: TextIO | None = None, bar: bool | None = None, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream or sys.stderr
        self.total = total_bytes
        self.done = 0
        self.files_done = 0
        self.interval_s = interval_s
        self.unpacking: dict[str, Unpacking] = {}
        self._clock = clock
        self._last = clock()
        self._samples: collections.deque[tuple[float, int]] = collections.deque([(clock(), 0)])
        use_bar = self.stream.isatty() or _in_notebook() if bar is None else bar
        self._bar = None
        if use_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, file=self.stream, desc="staging")

    def __call__(self, event: str, **info: Any) -> None:
        key = info.get("key", "")
        if event == "bytes":
            self.done += info["n"]
            self._samples.append((self._clock(), self.done))
            if self._bar is not None:
                self._bar.update(info["n"])
        elif event == "expect":
            self.total += info["n"]
            if self._bar is not None:
                self._bar.total = self.total
                self._bar.refresh()
        elif event == "unpack":
            self.unpacking[key] = Unpacking(info["members"], info["bytes"])
        elif event == "unpacked":
            state = self.unpacking.get(key)
            if state is not None:
                state.members_done += 1
                state.bytes_done += info["n"]
                if state.members_done >= state.members:
                    del self.unpacking[key]
        elif event in ("file_done", "file_failed", "retry"):
            if event == "file_done":
                self.files_done += 1
                self.unpacking.pop(key, None)
            self._say(info.get("message"))
        self._update()

    def rate(self) -> float | None:
        """Bytes per second over the last RATE_WINDOW_S, or None while too little time has been measured."""
        now = self._clock()
        while len(self._samples) > 2 and now - self._samples[1][0] > RATE_WINDOW_S:
            self._samples.popleft()
        first_t, first_done = self._samples[0]
        if now - first_t < RATE_KNOWN_AFTER_S:
            return None
        return (self.done - first_done) / (now - first_t)

    def line(self) -> str:
        total = max(self.total, self.done)
        text = f"staging: {gb(self.done)} of {gb(total)} ({100 * self.done / total if total else 100:.0f}%)"
        rate = self.rate()
        if rate is not None:
            text += f", {rate / 1e6:.1f} MB/s"
            if rate > 0 and total > self.done:
                text += f", ETA {duration((total - self.done) / rate)}"
        for key, state in self.unpacking.items():
            text += f"; unpacking {key}: {state.members_done} of {state.members} members ({gb(state.bytes_done)} of {gb(state.bytes_total)})"
        return text + f"; {self.files_done} files done"

    def _update(self) -> None:
        now = self._clock()
        if self._bar is not None:
            unpacking = "; ".join(f"unpacking {k} {s.members_done}/{s.members}" for k, s in self.unpacking.items())
            self._bar.set_postfix_str(f"{self.files_done} files done" + (f"; {unpacking}" if unpacking else ""), refresh=False)
            return
        if now - self._last >= self.interval_s:
            self._last = now
            print(self.line(), file=self.stream, flush=True)

    def _say(self, message: str | None) -> None:
        if not message:
            return
        message = redact(message)
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except Exception:  # noqa: BLE001
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"
