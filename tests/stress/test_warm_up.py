"""A cell's warm-up: in a fleet each worker must run a warm-up task itself before its
baseline (children, fds) is taken; one another member ran does not count."""

from __future__ import annotations

from typing import Any

from stress.cell import CellRun
from stress.ledger import Book, Entry


class _Fleet:
    """Publisher and ledger reader in one: each warm-up task is run by the next member in
    ``runners``."""

    def __init__(self, runners: list[str]) -> None:
        self.runners = runners
        self.published: list[str] = []
        self.pending: list[Entry] = []

    def publish_one(self, kind: str, task_id: str) -> None:
        member = self.runners[len(self.published)]
        self.published.append(task_id)
        self.pending += [Entry("started", task_id, 10, 1.0, 1.0, {"member": member}),
                         Entry("finished", task_id, 10, 2.0, 2.0, {"outcome": "ok"})]

    def poll(self) -> list[Entry]:
        out, self.pending = self.pending, []
        return out


class _Worker:
    command = "taskq worker"

    def alive(self) -> bool:
        return True


def _warm_up(fleet: _Fleet, member: int | None) -> None:
    run: Any = CellRun.__new__(CellRun)
    run._warm_up(fleet, _Worker(), Book(), fleet, 5.0, member)


def test_a_warm_up_task_run_by_another_member_is_sent_again() -> None:
    fleet = _Fleet(["2", "2", "1"])
    _warm_up(fleet, 1)
    assert len(fleet.published) == 3


def test_alone_any_run_of_the_warm_up_task_will_do() -> None:
    fleet = _Fleet(["2"])
    _warm_up(fleet, None)
    assert len(fleet.published) == 1
