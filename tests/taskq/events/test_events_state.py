"""The events State: workers alive by received heartbeats, tasks by logical clock."""

from __future__ import annotations

import logging

from taskq.events.state import State


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def heartbeat(host: str, received: float, sent: float | None = None, clock: int = 1) -> dict:
    return {"type": "worker-heartbeat", "hostname": host, "freq": 2.0, "clock": clock,
            "timestamp": received if sent is None else sent, "local_received": received,
            "active": 1, "processed": 5}


def test_worker_goes_offline_after_missed_heartbeats_by_receive_time():
    now = FakeTime()
    state = State(clock=now)
    state.event(heartbeat("w1", received=now.now))
    assert [w.hostname for w in state.alive_workers()] == ["w1"]
    now.now += 3.9
    assert state.alive_workers()
    now.now += 0.2  # past two heartbeat intervals
    assert state.alive_workers() == []


def test_a_skewed_sender_clock_is_warned_about_once(caplog):
    state = State()
    with caplog.at_level(logging.WARNING):
        state.event(heartbeat("w1", received=1000.0, sent=960.0))
        state.event(heartbeat("w1", received=1002.0, sent=962.0))
    assert caplog.text.count("clock is off by 40 s") == 1


def test_task_state_follows_the_logical_clock_not_arrival_order():
    state = State()
    state.event({"type": "task-succeeded", "uuid": "t", "clock": 5, "result": "1"})
    state.event({"type": "task-started", "uuid": "t", "clock": 3, "pid": 9})
    assert state.tasks["t"].state == "SUCCESS"
    assert state.tasks["t"].pid == 9


def test_unknown_events_are_counted_not_fatal():
    state = State()
    state.event({"type": "martian-landing", "clock": 1})
    state.event({"nonsense": True})
    assert state.unknown_events == 2
