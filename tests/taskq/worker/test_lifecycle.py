"""The delivery-guarantee table, walked row by row through ``taskq.worker.lifecycle``.

Plain facts in, decisions out: no broker, no processes, no clock. The end-to-end tests
(test_e2e_*.py) check that the worker carries these decisions out on real brokers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from taskq import states
from taskq.worker import lifecycle as lc
from taskq.worker.lifecycle import (
    POLICIES,
    Ack,
    AckNow,
    Cause,
    Confirm,
    Drop,
    Emit,
    Facts,
    HandOn,
    Phase,
    Reject,
    Release,
    Republish,
    Rerun,
    RunHere,
    Store,
    Terminate,
    Warn,
    Withdraw,
    facts_for,
)

EARLY, LATE, LATE_REJECT = POLICIES
LOST = "child died (signal 9 (SIGKILL))"


def kinds(decision: lc.Decision) -> list[type]:
    return [type(a) for a in decision.actions]


# -- row: reserved, not started (any fault) -> redelivered ------------------------------------

@pytest.mark.parametrize("policy", [LATE, LATE_REJECT])
@pytest.mark.parametrize("phase", [Phase.HELD, Phase.RESERVED])
def test_reserved_request_of_a_lost_connection_goes_back_to_the_broker(
        policy: str, phase: Phase) -> None:
    decision = lc.connection_lost(facts_for(policy, connection_current=False), phase)
    assert decision.actions == (Release(),) and decision.rerun is Rerun.WILL


# -- row: reserved; its early ack went out as the connection was lost, unanswered ---------------

def test_a_reserved_request_whose_early_ack_got_no_answer_waits_for_the_next_connection(
        ) -> None:
    """The ack may have arrived: giving the message back would lose it (an acked lease is
    gone), running it might run it twice. Neither until the next connection tells."""
    facts = facts_for(EARLY, acknowledged=False, ack_in_doubt=True, connection_current=False)
    decision = lc.connection_lost(facts, Phase.RESERVED)
    assert decision.actions == (Confirm(),) and decision.phase is Phase.RESERVED


def test_an_early_ack_found_arrived_runs_here_and_one_found_expired_is_dropped() -> None:
    facts = facts_for(EARLY, acknowledged=False, ack_in_doubt=True, connection_current=False)
    arrived = lc.ack_confirmed(facts, acked=True)
    assert arrived.actions == (RunHere(),) and arrived.rerun is Rerun.NEVER
    expired = lc.ack_confirmed(facts, acked=False)
    assert expired.actions == (Drop(),) and expired.rerun is Rerun.WILL


def test_a_worker_stopping_before_it_could_confirm_an_early_ack_says_so() -> None:
    facts = facts_for(EARLY, acknowledged=False, ack_in_doubt=True, connection_current=False)
    decision = lc.shutdown(facts, Phase.RESERVED, warm=True)
    assert kinds(decision) == [Warn] and decision.rerun is Rerun.MAY


@pytest.mark.parametrize("policy", POLICIES)
def test_dispatched_unacked_request_is_withdrawn_when_its_connection_is_lost(
        policy: str) -> None:
    facts = facts_for(policy, connection_current=False, acknowledged=False)
    decision = lc.connection_lost(facts, Phase.DISPATCHED)
    assert decision.actions == (Withdraw(),) and decision.phase is Phase.WITHDRAWN
    # ... and when the pool gives it back unstarted, it goes back through the new connection
    back = lc.unstarted(facts)
    assert back.actions == (Release(),) and back.rerun is Rerun.WILL


@pytest.mark.parametrize("phase", [Phase.HELD, Phase.RESERVED])
def test_reserved_request_whose_lease_was_lost_is_dropped_not_run(phase: Phase) -> None:
    decision = lc.lease_lost(facts_for(LATE), phase)
    assert decision.actions == (Drop(),) and decision.phase is Phase.DROPPED


def test_dispatched_request_whose_lease_was_lost_is_withdrawn_then_dropped() -> None:
    assert lc.lease_lost(facts_for(LATE), Phase.DISPATCHED).actions == (Withdraw(),)
    assert lc.unstarted(facts_for(LATE, lease_lost=True)).actions == (Drop(),)


@pytest.mark.parametrize("policy", [LATE, LATE_REJECT])
@pytest.mark.parametrize("phase", [Phase.HELD, Phase.RESERVED])
def test_warm_shutdown_gives_reserved_requests_back(policy: str, phase: Phase) -> None:
    decision = lc.shutdown(facts_for(policy), phase, warm=True)
    assert decision.actions == (Reject(requeue=True),) and decision.rerun is Rerun.WILL


def test_an_early_acked_request_still_reserved_at_shutdown_is_handed_on_not_lost() -> None:
    # It was acked with its batch, but the pool took fewer: the broker will not deliver it
    # again, so a copy is published (a plain requeue of an acked message is a no-op: lost).
    decision = lc.shutdown(facts_for(EARLY), Phase.RESERVED, warm=True)
    assert decision.actions == (HandOn(),) and decision.rerun is Rerun.WILL


def test_an_early_acked_job_the_stopping_pool_gives_back_is_handed_on() -> None:
    decision = lc.unstarted(facts_for(EARLY, stopping=True))
    assert decision.actions == (HandOn(),)


def test_a_job_given_back_while_running_normally_runs_here_again() -> None:
    assert lc.unstarted(facts_for(LATE)).actions == (RunHere(),)
    assert lc.unstarted(facts_for(LATE, stopping=True)).actions == (Reject(requeue=True),)


# -- row: running; its child dies ----------------------------------------------------------------

def test_child_dies_early_ack_failure_not_rerun() -> None:
    decision = lc.child_died(facts_for(EARLY, started=True), Cause.CHILD_DIED, LOST)
    assert decision.phase is Phase.LOST and decision.rerun is Rerun.NEVER
    assert Store(states.FAILURE, LOST) in decision.actions
    assert kinds(decision) == [Emit, Store, Ack]


def test_child_dies_acks_late_failure_acked_not_rerun() -> None:
    decision = lc.child_died(facts_for(LATE, started=True), Cause.CHILD_DIED, LOST)
    assert kinds(decision) == [Emit, Store, Ack] and decision.rerun is Rerun.NEVER


def test_child_dies_acks_late_reject_on_worker_lost_requeues_with_a_count() -> None:
    decision = lc.child_died(facts_for(LATE_REJECT, started=True, redeliveries=1),
                             Cause.CHILD_DIED, LOST)
    assert decision.actions == (Republish(2),) and decision.phase is Phase.REDELIVERED
    assert decision.rerun is Rerun.WILL


def test_a_lost_child_is_not_republished_when_the_broker_already_requeued_it() -> None:
    # AMQP, connection cut while the task ran, then its child died: RabbitMQ put the original
    # back when the channel closed and the original's ack can no longer be sent, so a counted
    # copy would make two (mixed seed 2: both ran). A lease transport acks the original through
    # the next connection, so there the copy is right.
    amqp = facts_for(LATE_REJECT, started=True, connection_current=False,
                     requeued_on_close=True)
    decision = lc.child_died(amqp, Cause.CHILD_DIED, LOST)
    assert kinds(decision) == [Warn] and decision.phase is Phase.GIVEN_BACK
    assert decision.rerun is Rerun.WILL
    leases = facts_for(LATE_REJECT, started=True, connection_current=False)
    assert lc.child_died(leases, Cause.CHILD_DIED, LOST).actions == (Republish(1),)


def test_a_poison_message_stops_after_max_redeliveries() -> None:
    decision = lc.child_died(
        facts_for(LATE_REJECT, started=True, redeliveries=3, max_redeliveries=3),
        Cause.CHILD_DIED, LOST)
    [store] = [a for a in decision.actions if isinstance(a, Store)]
    assert store.state == states.FAILURE and "given up after 3 redeliveries" in store.reason
    assert decision.rerun is Rerun.NEVER


def test_children_dying_on_a_job_before_it_starts_make_it_a_failure() -> None:
    # The pool counted the deaths (start_failures); past the bound it reports it lost.
    decision = lc.child_died(facts_for(LATE_REJECT, start_failures=3), Cause.CHILD_DIED, LOST)
    assert decision.phase is Phase.LOST and kinds(decision) == [Emit, Store, Ack]


def test_a_job_lost_before_it_started_runs_again_here() -> None:
    decision = lc.child_died(facts_for(LATE), Cause.CHILD_DIED, LOST)
    assert decision.actions == (RunHere(),)


def test_acks_late_child_dies_while_the_connection_is_down_may_run_again() -> None:
    # The question the issue asks the module to answer: FAILURE stored, ack attempted; the
    # ack cannot reach the broker through the lost connection, so it may be redelivered.
    facts = facts_for(LATE, started=True, connection_current=False)
    decision = lc.child_died(facts, Cause.CHILD_DIED, LOST)
    assert kinds(decision) == [Emit, Store, Ack] and decision.rerun is Rerun.MAY
    # ... unless the reconnect took its lease over (Redis, SQLite): then the ack lands.
    adopted = facts_for(LATE, started=True, connection_current=True)
    assert lc.child_died(adopted, Cause.CHILD_DIED, LOST).rerun is Rerun.NEVER


def test_terminated_by_revoke_is_revoked_not_lost() -> None:
    decision = lc.child_died(facts_for(LATE_REJECT, started=True, terminated=15),
                             Cause.CHILD_DIED, LOST)
    assert Store(states.REVOKED, "terminated") in decision.actions
    assert not any(isinstance(a, Republish) for a in decision.actions)
    assert decision.phase is Phase.DONE


# -- row: running; hard time limit ---------------------------------------------------------------

@pytest.mark.parametrize("policy", POLICIES)
def test_hard_time_limit_is_a_failure_whatever_the_policy(policy: str) -> None:
    error = "TimeLimitExceeded(10.0)"
    decision = lc.child_died(facts_for(policy, started=True), Cause.TIME_LIMIT, error)
    assert Store(states.FAILURE, error) in decision.actions
    assert decision.rerun is Rerun.NEVER


# -- row: running; main process dies -------------------------------------------------------------

def test_main_process_dies_early_ack_is_lost_acks_late_redelivered() -> None:
    assert lc.main_process_died(facts_for(EARLY, started=True),
                                Phase.STARTED).rerun is Rerun.NEVER
    for policy in (LATE, LATE_REJECT):
        assert lc.main_process_died(facts_for(policy, started=True),
                                    Phase.STARTED).rerun is Rerun.WILL


def test_early_ack_is_sent_before_the_job_reaches_the_pool() -> None:
    assert lc.dispatch(facts_for(EARLY, acknowledged=False)).actions == (AckNow(),)
    assert lc.dispatch(facts_for(LATE)).actions == ()


# -- row: running; broker connection lost --------------------------------------------------------

def test_connection_lost_while_running_it_finishes() -> None:
    early = lc.connection_lost(facts_for(EARLY, started=True, connection_current=False),
                               Phase.STARTED)
    assert early.actions == () and early.rerun is Rerun.NEVER
    late = lc.connection_lost(facts_for(LATE, started=True, connection_current=False),
                              Phase.STARTED)
    assert late.actions == () and late.rerun is Rerun.MAY


@pytest.mark.parametrize("policy", [LATE, LATE_REJECT])
def test_acks_late_finishing_after_a_cut_may_run_twice_unless_the_lease_was_taken_over(
        policy: str) -> None:
    cut = lc.done(facts_for(policy, started=True, connection_current=False), states.SUCCESS)
    assert cut.actions == (Ack(),) and cut.rerun is Rerun.MAY
    kept = lc.reconnected(facts_for(policy, started=True), lease_kept=True)
    assert kept.actions == () and kept.rerun is Rerun.NEVER
    gone = lc.reconnected(facts_for(policy, started=True), lease_kept=False)
    assert kinds(gone) == [Warn] and gone.rerun is Rerun.MAY


def test_a_running_request_that_lost_its_lease_may_run_twice() -> None:
    decision = lc.lease_lost(facts_for(LATE, started=True), Phase.STARTED)
    assert kinds(decision) == [Warn] and decision.rerun is Rerun.MAY
    assert lc.lease_lost(facts_for(EARLY, started=True), Phase.STARTED).actions == ()


# -- row: finished and acked ---------------------------------------------------------------------

@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("state", [states.SUCCESS, states.FAILURE, states.RETRY])
def test_finished_is_acked_and_never_rerun(policy: str, state: str) -> None:
    decision = lc.done(facts_for(policy, started=True), state)
    assert decision.actions == (Ack(),) and decision.rerun is Rerun.NEVER


def test_acks_on_failure_or_timeout_false_rejects_a_late_failure_without_requeue() -> None:
    """As Celery: an acks_late task's message is dead-lettered (rejected, not requeued)
    instead of acked when it fails, hits its hard limit or its process dies; never rerun.
    Early acks and successes are unchanged."""
    late = Facts(acks_late=True, started=True, ack_failures=False)
    assert lc.done(late, states.FAILURE).actions == (Reject(requeue=False),)
    assert lc.done(late, states.FAILURE).rerun is Rerun.NEVER
    assert lc.done(late, states.SUCCESS).actions == (Ack(),)
    early = Facts(started=True, acknowledged=True, ack_failures=False)
    assert lc.done(early, states.FAILURE).actions == (Ack(),)
    for cause in (Cause.TIME_LIMIT, Cause.CHILD_DIED):
        decision = lc.child_died(late, cause, LOST)
        assert kinds(decision) == [Emit, Store, Reject] and decision.rerun is Rerun.NEVER
        assert decision.actions[-1] == Reject(requeue=False)
        assert decision.actions[1] == Store(states.FAILURE, LOST)


def test_a_rejected_task_goes_back_only_when_it_asked_to() -> None:
    assert lc.done(Facts(), states.REJECTED, requeue=True).rerun is Rerun.WILL
    assert lc.done(Facts(), states.REJECTED).actions == (Reject(requeue=False),)


# -- revoke, expiry, cold shutdown ---------------------------------------------------------------

@pytest.mark.parametrize("phase", [Phase.HELD, Phase.RESERVED])
def test_revoked_while_reserved_is_discarded_as_revoked(phase: Phase) -> None:
    decision = lc.revoked(Facts(), phase, terminate=False, signum=15, can_terminate=True)
    assert kinds(decision) == [Emit, Reject, Store]
    assert Store(states.REVOKED, "revoked") in decision.actions


def test_revoke_terminate_signals_a_started_job_and_waits_for_an_unstarted_one() -> None:
    started = lc.revoked(Facts(started=True), Phase.STARTED, terminate=True, signum=9,
                         can_terminate=True)
    assert started.actions == (Terminate(9),)
    assert lc.revoked(Facts(), Phase.DISPATCHED, terminate=True, signum=9,
                      can_terminate=True).actions == ()
    assert lc.revoked(Facts(), Phase.STARTED, terminate=False, signum=9,
                      can_terminate=True).actions == ()
    cannot = lc.revoked(Facts(), Phase.STARTED, terminate=True, signum=9, can_terminate=False)
    assert kinds(cannot) == [Warn]


def test_expired_while_waiting_is_revoked_expired() -> None:
    decision = lc.discarded(Facts(), "expired")
    assert Store(states.REVOKED, "expired") in decision.actions
    assert Emit("task-revoked", (("terminated", False), ("expired", True))) in decision.actions


def test_cold_shutdown_requeues_acks_late_and_loses_early_acked_running_tasks() -> None:
    late = lc.shutdown(facts_for(LATE, started=True), Phase.STARTED, warm=False)
    assert late.actions == (Reject(requeue=True),)
    early = lc.shutdown(facts_for(EARLY, started=True), Phase.STARTED, warm=False)
    assert early.actions == () and early.phase is Phase.LOST
    assert lc.shutdown(facts_for(LATE, started=True), Phase.STARTED, warm=True).actions == ()


# -- rows the docs add: given to the pool, not started -----------------------------------------

@pytest.mark.parametrize("policy", POLICIES)
def test_unstarted_job_whose_child_dies_runs_on_another_child(policy: str) -> None:
    decision = lc.child_died(facts_for(policy), Cause.CHILD_DIED, LOST)
    assert decision.actions == (RunHere(),) and decision.phase is Phase.RESERVED


def test_unstarted_job_given_back_at_a_stop_is_published_again_or_given_back() -> None:
    assert lc.unstarted(facts_for(EARLY, stopping=True)).actions == (HandOn(),)
    for policy in (LATE, LATE_REJECT):
        assert lc.unstarted(facts_for(policy, stopping=True)).actions == (Reject(requeue=True),)
    # warm: the pool lets a child run what it holds; nothing is decided for it at the stop
    assert lc.shutdown(facts_for(EARLY), Phase.DISPATCHED, warm=True).actions == ()


def test_the_docs_show_this_table() -> None:
    text = lc.table_markdown()
    assert text.count("\n") == len(lc.TABLE) + 1
    for row, cells in lc.TABLE:
        assert len(cells) == len(POLICIES) and row in text
    docs = Path(__file__).parents[3] / "docs" / "guarantees.md"
    assert text in docs.read_text(), "docs/guarantees.md's table differs from lifecycle.TABLE"
