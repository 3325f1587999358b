"""Worker steps start in dependency order, and bad graphs are reported clearly."""

from __future__ import annotations

import pytest

from taskq.errors import ConfigurationError
from taskq.worker.bootsteps import default_steps
from taskq.worker.steps import Step, order, to_dot


def make(name: str, *requires: str) -> Step:
    step = Step()
    step.name = name
    step.requires = requires
    return step


def test_dependencies_come_first_and_ties_keep_their_order():
    steps = [make("consumer", "pool", "hub"), make("hub"), make("pool", "hub"), make("extra")]
    assert [s.name for s in order(steps)] == ["hub", "pool", "consumer", "extra"]


def test_default_steps_start_hub_before_pool_before_consumer():
    names = [s.name for s in order(default_steps())]
    assert names.index("hub") < names.index("pool") < names.index("consumer")
    assert names.index("mingle") < names.index("consumer") < names.index("heartbeat")


def test_a_cycle_is_named():
    with pytest.raises(ConfigurationError, match="cycle: a -> b -> a"):
        order([make("a", "b"), make("b", "a")])


def test_a_missing_dependency_is_named():
    with pytest.raises(ConfigurationError, match="'x' requires 'nope'"):
        order([make("x", "nope")])


def test_duplicate_names_are_rejected():
    with pytest.raises(ConfigurationError, match="two worker steps are named 'x'"):
        order([make("x"), make("x")])


def test_dot_has_every_step_and_edge():
    dot = to_dot(default_steps())
    assert dot.startswith('digraph "worker" {')
    assert '"consumer" -> "pool";' in dot
    assert '"heartbeat" -> "consumer";' in dot
    assert dot.rstrip().endswith("}")
