"""The revoked set forgets old ids and stays bounded; the state DB survives a restart."""

from __future__ import annotations

import json

from kombu.clocks import LamportClock

from taskq.worker.state import RevokedSet, StateDB


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_revoked_ids_expire_after_their_time():
    clock = FakeTime()
    revoked = RevokedSet(expires=60, clock=clock)
    revoked.add("a")
    assert "a" in revoked
    clock.now += 61
    assert "a" not in revoked


def test_revoked_set_keeps_only_the_newest_ids():
    revoked = RevokedSet(maxlen=3, clock=FakeTime())
    for task_id in "abcde":
        revoked.add(task_id)
    assert len(revoked) == 3
    assert "a" not in revoked and "e" in revoked


def test_statedb_round_trips_revoked_ids_and_the_clock(tmp_path):
    path = str(tmp_path / "state.json")
    clock = LamportClock()
    clock.adjust(41)
    revoked = RevokedSet()
    revoked.add("gone")
    StateDB(path, revoked, clock).save()

    fresh_clock, fresh = LamportClock(), RevokedSet()
    StateDB(path, fresh, fresh_clock).load()
    assert "gone" in fresh
    assert fresh_clock.value >= 42


def test_a_corrupt_statedb_starts_empty_instead_of_crashing(tmp_path, caplog):
    path = tmp_path / "state.json"
    path.write_text("{not json")
    revoked = RevokedSet()
    StateDB(str(path), revoked).load()
    assert len(revoked) == 0
    assert "cannot be read" in caplog.text


def test_statedb_file_is_json_with_a_version(tmp_path):
    path = tmp_path / "s.json"
    StateDB(str(path), RevokedSet()).save()
    assert json.loads(path.read_text())["version"] == 1
