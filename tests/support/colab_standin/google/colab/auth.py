"""STAND-IN for ``google.colab.auth``: records the call in $COLAB_STANDIN_LOG (no real sign-in)."""

import os


def authenticate_user() -> None:
    log = os.environ.get("COLAB_STANDIN_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write("auth.authenticate_user\n")
