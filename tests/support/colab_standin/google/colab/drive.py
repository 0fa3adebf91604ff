"""STAND-IN for ``google.colab.drive``: records the call (no real Drive)."""

import os


def mount(path: str, force_remount: bool = False) -> None:
    log = os.environ.get("COLAB_STANDIN_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(f"drive.mount {path}\n")
