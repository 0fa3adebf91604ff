"""The ``provision`` process around its command: TERM is Ctrl-C, and a stop at any moment is one line.

This is the first of the package's modules to run (``python -m provision`` and the ``provision`` script). Its
handler for SIGTERM is in place before anything else is imported, so a stop while the rest is still being
imported is the same one line and exit code as a stop later on, never a traceback nor a death by signal.
Notebooks call :func:`provision.run` instead, and keep their kernel's own handlers.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from .interrupt import INTERRUPTED, Terminated, exit_code

TYPE_CHECKING = False  # not typing's, nor types' FrameType at run time: each import is a moment before the handler
if TYPE_CHECKING:
    from types import FrameType


def _terminated(signum: int, frame: FrameType | None) -> None:
    """TERM reaches this process alone (Ctrl-C reaches the terminal's whole process group): it is passed on to the
    children, so that each ends as it would on its own TERM (git ends its remote helpers, pip its builds), rather than
    killed by the caller's cleanup with what they started left behind."""
    for pid in _descendants():
        _send(pid, signal.SIGTERM)
    raise Terminated()


def _stopped_already(signum: int, frame: FrameType | None) -> None:
    """Once the command has ended and said so, a further signal changes nothing: no second line, no traceback."""


def _stop_in_a_callback(unraisable: object) -> None:
    """A stop raised while Python ran a callback (a weakref's, as importlib's module locks have; a ``__del__``) cannot
    leave it: Python would print it as "Exception ignored" with a traceback and go on as if no stop had come. It is
    raised again a moment later, once the callback is over (a timer: a signal sent from here would be handled here);
    anything else is reported as Python would."""
    global _pending
    stop = getattr(unraisable, "exc_value", None)
    if isinstance(stop, KeyboardInterrupt):
        _pending = stop
        signal.signal(signal.SIGALRM, _raise_pending)
        signal.setitimer(signal.ITIMER_REAL, 0.005)
        return
    sys.__unraisablehook__(unraisable)  # type: ignore[arg-type]


_pending: KeyboardInterrupt | None = None  # a stop that landed in a callback, raised again by _raise_pending


def _raise_pending(signum: int, frame: FrameType | None) -> None:
    global _pending
    stop, _pending = _pending, None
    if stop is not None:
        raise stop


def main() -> int:
    """Run the command line as a process: TERM handled as Ctrl-C from the first moment, one line for either, and no
    child of the tool's left running once it ends."""
    try:
        sys.unraisablehook = _stop_in_a_callback
        signal.signal(signal.SIGTERM, _terminated)
        from .cli import main as command

        code = command()
    except KeyboardInterrupt as exc:  # during the imports, or past the command's own handler
        _quiet()
        print(INTERRUPTED, file=sys.stderr)
        code = exit_code(exc)
    _quiet()  # the interpreter's exit (threads joined, buffers flushed) is not interrupted into a traceback
    end_children()
    _forget_unhandled_interrupt()
    return code


def _forget_unhandled_interrupt() -> None:
    """CPython marks an interrupt that escapes code run from a string (``exec``: dataclasses makes each class's methods
    so, while the modules are imported) as unhandled, for the whole process, even once it is caught; its exit then
    kills itself with SIGINT (exit -2 after the one line) instead of exiting 130. Running a string clears the mark."""
    exec("")  # noqa: S102 - nothing is run; see the docstring


def end_children(grace_s: float = 5.0) -> None:
    """Children still running as the process ends, asked to stop (TERM), then killed. Each phase ends its own; this is
    for one a stop caught half-started (the interrupt raised inside ``subprocess.Popen``, after the fork, before the
    caller held the process to end it). Linux only (``/proc``): elsewhere nothing is known of them."""
    pids = _descendants()
    for pid in pids:
        _send(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while pids and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = [pid for pid in pids if _running(pid)]
    for pid in pids:
        _send(pid, signal.SIGKILL)


def _children(pid: int | str = "self") -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                found += [int(child) for child in fh.read().split()]
        except (OSError, ValueError):
            continue
    return [child for child in found if _running(child)]


def _descendants() -> list[int]:
    """The children and theirs, all the way down, while they are still linked (one that loses its parent is no longer
    found: git's remote helper, say, once git has ended), parents first."""
    found, todo = [], _children()
    while todo:
        pid = todo.pop(0)
        found.append(pid)
        todo += [child for child in _children(pid) if child not in found]
    return found


def _running(pid: int) -> bool:
    """Not yet ended: a child that has ended and not been waited for (a zombie) is not running."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _send(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except OSError:
        pass


def _quiet() -> None:
    """From here on a signal changes nothing: held (blocked) until the process has exited, when it is dropped. A second
    Ctrl-C while the first is said, or TERM while the interpreter exits (its handlers back to the default by then), is
    neither a traceback nor a death by signal in place of the exit code."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        return
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stopped_already)
