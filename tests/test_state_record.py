"""The typed state record: what a file's stage is, the transitions that write it, and state files of older versions."""

from __future__ import annotations

import json
from pathlib import Path

from provision.staging.state import FileRecord, Stage, StateStore, file_statuses


def test_each_transition_leads_to_its_stage(tmp_path: Path) -> None:
    state = StateStore(tmp_path)
    assert state.record("a.zip") is None
    state.stream_started("a.zip", md5="0" * 32, size=10, source="https://m/a.zip")
    assert state.record("a.zip").stage is Stage.PARTIAL  # type: ignore[union-attr]
    state.streamed("a.zip", {"a/x.raw": (5, 7)}, None, md5_checked=True, unpacked_bytes=5)
    rec = state.record("a.zip")
    assert rec is not None and rec.stage is Stage.EXTRACTED and rec.members == {"a/x.raw": (5, 7)} and rec.md5_checked
    state.fetched("b.zip", md5="1" * 32, size=3, source="s", unpack=True, stamp=(3, 99), repairing=False)
    assert state.record("b.zip").stage is Stage.VERIFIED  # type: ignore[union-attr]
    state.unpacked("b.zip", {"b/1": (1, 1), "b/2": (2, 2)}, None, 3)
    state.found_damaged("b.zip", ["b/2"])
    state.unpacked("b.zip", {"b/2": (2, 2)}, frozenset({"b/2"}), 3)  # a repair keeps the other members
    rec = state.record("b.zip")
    assert rec is not None and rec.members == {"b/1": (1, 1), "b/2": (2, 2)} and rec.damaged == ()
    state.archive_removed("b.zip")
    assert state.record("b.zip").stamp is None  # type: ignore[union-attr]
    state.linked("c.zip", unpack=True, source="/copy/subset2", members={"c/1": (4, None)}, md5=None, size=None)
    assert state.record("c.zip").stage is Stage.LINKED  # type: ignore[union-attr]
    again = StateStore(tmp_path)  # written atomically, read back the same
    assert again.record("b.zip") == state.record("b.zip") and again.record("c.zip") == state.record("c.zip")


def test_a_state_file_of_an_older_version_is_read(tmp_path: Path) -> None:
    old = {"version": 1, "files": {
        "subset0.zip": {"verified": True, "extracted": True, "unpack": True, "members": {"s/x": [10, 123]}, "damaged": [],
                        "stamp": {"size": 1, "mtime_ns": 2}, "source": "z", "some_future_key": 1},
        "annotations.csv": {"verified": True, "unpack": False, "stamp": {"size": 5, "mtime_ns": 6}},
        "subset1.zip": {"streaming": True},
        "broken.zip": "not a mapping"}}
    (tmp_path / ".provision").mkdir()
    (tmp_path / ".provision" / "state.json").write_text(json.dumps(old))
    state = StateStore(tmp_path)
    rec = state.record("subset0.zip")
    assert rec == FileRecord(unpack=True, verified=True, extracted=True, source="z", stamp=(1, 2), members={"s/x": (10, 123)})
    assert state.record("annotations.csv").stage is Stage.VERIFIED  # type: ignore[union-attr]
    statuses = file_statuses(tmp_path, ["subset0.zip", "annotations.csv", "subset1.zip", "broken.zip", "never.zip"], tmp_path)
    assert {k: s.stage for k, s in statuses.items()} == {"subset0.zip": "extracted", "annotations.csv": "verified", "subset1.zip": "partial",
                                                         "broken.zip": "missing", "never.zip": "missing"}
