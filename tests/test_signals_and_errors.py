"""One exception hierarchy for the user (errors.py) and one internal family for staging's parts (staging/signals.py)."""

from __future__ import annotations

from pathlib import Path

from provision.errors import OutOfSpaceError, ProvisionError
from provision.staging import signals


def test_every_staging_signal_has_a_reason_and_a_message_and_none_is_a_provision_error() -> None:
    kinds = [signals.TransientError, signals.PermanentError, signals.NotTheFile, signals.CopyDamaged, signals.NoRangeSupport,
             signals.ChecksumMismatch, signals.StreamCorrupt, signals.CannotStream, signals.Stopped]
    for kind in kinds:
        exc = kind("why it happened")
        assert isinstance(exc, signals.StagingSignal) and not isinstance(exc, ProvisionError)
        assert exc.reason == exc.message == "why it happened" == str(exc)
    assert issubclass(signals.ChecksumMismatch, signals.Damaged) and issubclass(signals.StreamCorrupt, signals.Damaged)
    assert issubclass(signals.NotTheFile, signals.PermanentError) and issubclass(signals.CopyDamaged, signals.PermanentError)


def test_a_full_disk_has_one_way_of_saying_it(tmp_path: Path) -> None:
    writing = OutOfSpaceError.disk_full(tmp_path / "a" / "file.part", "downloading file")
    assert writing.message == f"the disk holding {tmp_path / 'a'} is full while downloading file"
    short = OutOfSpaceError.disk_full(tmp_path, "unpacking x.zip", needed=10, free=4)
    assert "has only 4 bytes free while unpacking x.zip, and 10 are needed" in short.message and short.facts["needed"] == 10
    for exc in (writing, short):
        assert exc.hint is not None and exc.hint.startswith("free some space") and exc.exit_code == 1
