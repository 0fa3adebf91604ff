"""Staging progress for people: a bar on a terminal or in a notebook, plain lines in logs and CI.

Fed by the engine's events: ``bytes`` (n downloaded; negative when a failed pass is taken back),
``expect`` (n more to fetch than the plan knew of: repairs), ``unpack`` (an archive's unpacking
starts: its members and bytes), ``unpacked`` (a member written: its bytes), and ``file_done``,
``file_failed``, ``retry`` with a message. The rate is measured over the last seconds, and no ETA
is shown until it is known: a slow first connection does not promise hours.
"""

from __future__ import annotations

import collections
import io
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from .disk import gb
from .sources import redact

RATE_WINDOW_S = 20.0  # the rate is what arrived over this many seconds
RATE_KNOWN_AFTER_S = 3.0  # no rate (so no ETA) before this much time has been measured
TICK_S = 0.5  # a bar is redrawn at least this often, bytes or not: its clock never stops


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


class Console:
    """Where the lines that show long work is alive go (stderr; nothing under --quiet). While a bar is drawn, a line is
    written above it through the bar, so that lines from other threads (the cache's, the installer's) never tear it."""

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self._lock = threading.Lock()
        self._bar: Any = None  # the tqdm bar being drawn, if any

    def say(self, line: str) -> None:
        if self.quiet or not line:
            return
        line = redact(line)
        with self._lock:
            bar = self._bar
            if bar is not None:
                bar.write(line, file=self.stream)
            else:
                print(line, file=self.stream, flush=True)

    def progress(self, total_bytes: int, *, bar: bool | None = None) -> Progress:
        """A staging display on this console, redrawn every TICK_S until closed (nothing under --quiet)."""
        progress = Progress(total_bytes, stream=self.stream, bar=bar, console=self, silent=self.quiet)
        progress.start(TICK_S)
        return progress

    def _attach(self, bar: Any) -> None:
        with self._lock:
            self._bar = bar


class Progress:
    """Receives engine events; draws a bar on a terminal or notebook, prints plain lines otherwise. Started, it also
    redraws on a timer, so its clock runs while no bytes arrive (a stalled server, a long unpacking)."""

    def __init__(self, total_bytes: int, *, stream: TextIO | None = None, bar: bool | None = None, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, console: Console | None = None, silent: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.console = console or Console(self.stream, quiet=silent)
        self.total = total_bytes
        self.done = 0
        self.files_done = 0
        self.interval_s = interval_s
        self.silent = silent
        self.unpacking: dict[str, Unpacking] = {}
        self._clock = clock
        self._start = clock()
        self._last = self._start
        self._samples: collections.deque[tuple[float, int]] = collections.deque([(self._start, 0)])
        self._lock = threading.RLock()  # engine threads and the timer
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        use_bar = not silent and (self.stream.isatty() or _in_notebook() if bar is None else bar)
        self._bar = None
        if use_bar:
            self._bar = _bar_class()(total=total_bytes, file=self.stream, desc="staging", bar_format="{desc} {percentage:3.0f}%|{bar}| {text}",
                                     mininterval=TICK_S / 2, **_unsized(self.stream), text=self.text())
            self.console._attach(self._bar)

    def __call__(self, event: str, **info: Any) -> None:
        with self._lock:
            self._event(event, info)
            self._update()

    def _event(self, event: str, info: dict[str, Any]) -> None:
        key = info.get("key", "")
        if event == "bytes":
            self.done += info["n"]
            self._samples.append((self._clock(), self.done))
            if self._bar is not None:
                self._bar.n = max(0, min(self.done, max(self.total, self.done)))
        elif event == "expect":
            self.total += info["n"]
            if self._bar is not None:
                self._bar.total = self.total
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
            self.console.say(info.get("message") or "")

    def start(self, tick_s: float) -> None:
        """Redraw every ``tick_s`` seconds (a bar; plain lines every ``interval_s``) until :meth:`close`."""
        if self.silent or self._timer is not None:
            return
        self._timer = threading.Thread(target=self._tick, args=(tick_s,), name="provision-progress", daemon=True)
        self._timer.start()

    def _tick(self, tick_s: float) -> None:
        while not self._stop.wait(tick_s):
            with self._lock:
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

    def text(self, percent: bool = False) -> str:
        """What staging has done so far, in the plan's decimal units: bytes of the total, time spent, rate and ETA once
        known, the archives being unpacked, the files done."""
        total = max(self.total, self.done)
        text = f"{gb(self.done)} of {gb(total)}" + (f" ({100 * self.done / total if total else 100:.0f}%)" if percent else "")
        text += f" in {duration(self._clock() - self._start)}"
        rate = self.rate()
        if rate is not None:
            text += f", {rate / 1e6:.1f} MB/s"
            if rate > 0 and total > self.done:
                text += f", ETA {duration((total - self.done) / rate)}"
        for key, state in self.unpacking.items():
            text += f"; unpacking {key}: {state.members_done} of {state.members} members ({gb(state.bytes_done)} of {gb(state.bytes_total)})"
        return text + f"; {self.files_done} files done"

    def line(self) -> str:
        return f"staging: {self.text(percent=True)}"

    def _update(self) -> None:
        if self.silent:
            return
        if self._bar is not None:
            self._bar.text = self.text()
            self._bar.refresh()
            return
        now = self._clock()
        if now - self._last >= self.interval_s:
            self._last = now
            print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.join()
        if self._bar is not None:
            with self._lock:
                self._bar.text = self.text()
                self._bar.close()
            self.console._attach(None)


def _bar_class() -> Any:
    """tqdm's bar (a notebook's where one runs) drawing our text: decimal units as the plan prints them, our rate and ETA."""
    from tqdm.auto import tqdm

    class Bar(tqdm):
        def __init__(self, *args: Any, text: str = "", **kwargs: Any) -> None:
            self.text = text  # before tqdm's first draw
            super().__init__(*args, **kwargs)

        @property
        def format_dict(self) -> dict[str, Any]:
            return {**super().format_dict, "text": self.text}

    return Bar


def _unsized(stream: TextIO) -> dict[str, int]:
    """A size for tqdm where the terminal reports none (a pseudo-terminal never sized: docker, CI), where it would
    draw nothing at all."""
    try:
        if os.get_terminal_size(stream.fileno()).columns == 0:
            return {"ncols": 120, "nrows": 24}
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        pass
    return {}


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except Exception:  # noqa: BLE001
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"
