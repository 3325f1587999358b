"""A prefork child's lifecycle as the parent records it: every move of the table, and every
other move refused with an error naming both states. No processes: fds are placeholders."""

from __future__ import annotations

import itertools

import pytest

from taskq.pool.child_state import TRANSITIONS, Child, ChildState, ChildStateError

S = ChildState

# The lifecycle the pool relies on, written out by hand (not derived from TRANSITIONS).
LEGAL = {
    (S.STARTING, S.READY),             # it said ready
    (S.STARTING, S.RETIRING_UNREADY),  # warm stop, shrink or restart before it was ready
    (S.STARTING, S.DEAD),
    (S.READY, S.BROKEN),               # a job write failed (EPIPE)
    (S.READY, S.RETIRING),
    (S.READY, S.DEAD),
    (S.BROKEN, S.RETIRING),
    (S.BROKEN, S.DEAD),
    (S.RETIRING_UNREADY, S.RETIRING),  # its ready arrived after it was told to leave
    (S.RETIRING_UNREADY, S.DEAD),
    (S.RETIRING, S.DEAD),
}


def child_in(state: ChildState) -> Child:
    child = Child(pid=4242, pidfd=-1, job_fd=-1, event_fd=-1, now=0.0)
    child.state = state
    return child


def test_the_table_is_the_documented_lifecycle():
    assert {(a, b) for a, bs in TRANSITIONS.items() for b in bs} == LEGAL
    assert set(TRANSITIONS) == set(S)


@pytest.mark.parametrize(("old", "new"), sorted(LEGAL, key=str))
def test_a_legal_move_happens(old, new):
    child = child_in(old)
    child.move(new)
    assert child.state is new


@pytest.mark.parametrize(("old", "new"), sorted(
    (pair for pair in itertools.product(S, S) if pair not in LEGAL), key=str))
def test_an_illegal_move_is_refused_naming_both_states(old, new):
    child = child_in(old)
    with pytest.raises(ChildStateError) as info:
        child.move(new)
    assert child.state is old
    assert isinstance(info.value, AssertionError)
    assert f"{old.name} -> {new.name}" in str(info.value) and "4242" in str(info.value)
    assert (info.value.old, info.value.new) == (old, new)


def test_a_new_child_is_starting_and_neither_ready_nor_retiring():
    child = Child(pid=1, pidfd=-1, job_fd=-1, event_fd=-1, now=5.0)
    assert child.state is S.STARTING and child.spawned_at == 5.0
    assert not child.ready and not child.retiring and not child.dead and not child.reaped


# Each step: the call, then the state, ready and retiring it leaves.
@pytest.mark.parametrize("steps", [
    pytest.param([("said_ready", S.READY, True, False), ("retire", S.RETIRING, True, True)],
                 id="ready-then-retired"),
    # a child retired before ready is not ready until it says so
    pytest.param([("retire", S.RETIRING_UNREADY, False, True),
                  ("said_ready", S.RETIRING, True, True)], id="retired-before-ready"),
])
def test_ready_and_retire_in_either_order_end_retiring_then_dead(steps):
    child = child_in(S.STARTING)
    for call, state, ready, retiring in steps:
        getattr(child, call)()
        assert (child.state, child.ready, child.retiring) == (state, ready, retiring), call
    child.retire()  # a second retire (warm stop after shrink) changes nothing
    assert child.state is S.RETIRING
    child.move(S.DEAD)
    assert child.dead


def test_a_broken_child_still_counts_as_ready_and_can_be_retired():
    child = child_in(S.READY)
    child.move(S.BROKEN)
    assert child.ready and not child.retiring
    child.retire()
    assert child.state is S.RETIRING


@pytest.mark.parametrize("state", [S.READY, S.BROKEN, S.RETIRING, S.DEAD])
def test_a_second_ready_is_refused(state):
    with pytest.raises(ChildStateError):
        child_in(state).said_ready()


def test_a_dead_child_cannot_be_retired():
    with pytest.raises(ChildStateError, match="DEAD -> RETIRING_UNREADY"):
        child_in(S.DEAD).retire()


def test_repr_shows_the_state_and_a_kill():
    child = child_in(S.RETIRING_UNREADY)
    assert repr(child) == "<Child 4242 retiring before ready load=0>"
    child.killed = True
    assert repr(child) == "<Child 4242 retiring before ready killed load=0>"
