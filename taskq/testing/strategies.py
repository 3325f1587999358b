"""Hypothesis helpers: task arguments that survive the JSON round trip, and a state machine
base for checking that a task is idempotent under redelivery.

Needs ``hypothesis`` (a test dependency, imported only here).
"""

from __future__ import annotations

import uuid
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from taskq.task import Task

MAX_SAFE_INT = 2**53  # JSON numbers beyond this lose precision in other languages

json_scalars = (
    st.none() | st.booleans() | st.integers(-MAX_SAFE_INT, MAX_SAFE_INT)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=50)
)


def json_values(max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """Any value that JSON carries unchanged (no tuples, no non-string keys, no NaN)."""
    return st.recursive(
        json_scalars,
        lambda inner: st.lists(inner, max_size=5)
        | st.dictionaries(st.text(max_size=20), inner, max_size=5),
        max_leaves=max_leaves,
    )


def task_args(max_size: int = 5) -> st.SearchStrategy[list[Any]]:
    return st.lists(json_values(), max_size=max_size)


def task_kwargs(max_size: int = 5) -> st.SearchStrategy[dict[str, Any]]:
    keys = st.from_regex(r"[a-z_][a-z0-9_]{0,15}", fullmatch=True)
    return st.dictionaries(keys, json_values(), max_size=max_size)


class IdempotencyMachine(RuleBasedStateMachine):
    """Subclass to check that running a task's message again changes nothing.

    Set ``task`` (a ``Task``) and override ``arguments()`` (a strategy of ``(args, kwargs)``)
    and ``observe()`` (a snapshot of what the task affects). Hypothesis then runs messages,
    redelivers some of them (the same task id, as a broker does after a lost worker) and checks
    after every step that the world equals what running each message once produced.
    """

    task: Task

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, list[Any], dict[str, Any]]] = []
        self.expected: Any = None

    @classmethod
    def arguments(cls) -> st.SearchStrategy[tuple[list[Any], dict[str, Any]]]:
        return st.tuples(task_args(), task_kwargs())

    def observe(self) -> Any:
        raise NotImplementedError("return a snapshot of what the task changes")

    def _run(self, task_id: str, args: list[Any], kwargs: dict[str, Any]) -> None:
        self.task.apply(args, kwargs, task_id=task_id)

    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        args, kwargs = data.draw(self.arguments())
        task_id = str(uuid.uuid4())
        self._run(task_id, list(args), dict(kwargs))
        self.sent.append((task_id, list(args), dict(kwargs)))
        self.expected = self.observe()

    @rule(data=st.data())
    def redeliver(self, data: st.DataObject) -> None:
        if not self.sent:
            return
        task_id, args, kwargs = data.draw(st.sampled_from(self.sent))
        self._run(task_id, args, kwargs)

    @invariant()
    def redelivery_changes_nothing(self) -> None:
        if self.sent:
            now = self.observe()
            assert now == self.expected, (
                f"redelivering a message changed the outcome: expected {self.expected!r}, "
                f"got {now!r}")
