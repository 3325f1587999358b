"""The worker's main process: steps, the request lifecycle, acks, shutdown.

Message life (DESIGN.md): receive → validate (``Request.build``; rejects with a logged
reason) → hold until its eta → the pool → ``started`` (early ack) → ``done`` (late ack) →
results were stored by whoever ran the task.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from taskq import chord, states, trace
from taskq.app import run_hooks
from taskq.errors import (
    ConfigurationError,
    TaskRevokedError,
    TimeLimitExceeded,
    WorkerLostError,
)
from taskq.pool import Job, JobResult, Pool, pool_for, pool_label
from taskq.ratelimit import RateLimits
from taskq.worker import lifecycle
from taskq.worker.bootsteps import default_steps
from taskq.worker.cluster import Events, Gossip
from taskq.worker.consumer import BrokerConsumer, queues_for
from taskq.worker.control import ControlNode
from taskq.worker.loop import Loop
from taskq.worker.offload import Offload, Outcome
from taskq.worker.request import Rejection, Request
from taskq.worker.state import RevokedSet, StateDB, revoked_by_stamps
from taskq.worker.steps import Step, order

if TYPE_CHECKING:
    from kombu import Connection, Message

    from taskq.app import TaskQ
    from taskq.protocol import TaskMessage

# States a revoke may replace with REVOKED: no worker has started the task (as Celery's).
UNCLAIMED_STATES = frozenset({states.PENDING, states.RECEIVED, states.RETRY, states.REJECTED})
# With more calls than this waiting on the result-backend lane, a revoke's reply is not held
# back until its REVOKED states are stored.
REVOKE_REPLY_BACKLOG = 100
# Seconds a worker takes that much less prefetch after it gave back reserved messages it
# could not start (a reconnect): other consumers, idle ones, take them first.
ORPHAN_HOLD_BACK = 1.0

logger = logging.getLogger("taskq.worker")

Clock = Callable[[], float]


def expand_hostname(template: str | None, *, default_name: str = "taskq") -> str:
    """``-n`` templates: ``%h`` host, ``%n`` name part of host, ``%d`` domain, ``%%``."""
    host = socket.gethostname()
    name, _, domain = host.partition(".")
    if not template:
        return f"{default_name}@{host}"
    out, i = [], 0
    while i < len(template):
        ch = template[i]
        if ch == "%" and i + 1 < len(template):
            nxt = template[i + 1]
            out.append({"h": host, "n": name, "d": domain, "%": "%"}.get(nxt, "%" + nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    node = "".join(out)
    return node if "@" in node else f"{node}@{host}"


# -- the worker -------------------------------------------------------------------------------

class Worker:
    """``Worker(app, ...).run()`` runs until stopped by a signal or remote control."""

    def __init__(
        self,
        app: TaskQ,
        *,
        hostname: str | None = None,
        pool: str | None = None,
        concurrency: int | None = None,
        queues: Sequence[str] | None = None,
        exclude_queues: Sequence[str] | None = None,
        statedb: str | None = None,
        steps: Sequence[Step] = (),
        clock: Clock = time.monotonic,
        install_signals: bool = True,
        mingle: bool = True,
        gossip: bool = True,
        task_events: bool | None = None,
    ) -> None:
        conf = app.conf
        self.app = app
        self.hostname = expand_hostname(hostname or conf.worker_hostname)
        self.clock = clock
        self.concurrency = concurrency or conf.worker_concurrency or os.cpu_count() or 1
        self.pool_kind = pool or conf.worker_pool
        if self.pool_kind == "solo":
            self.concurrency = 1
        if conf.worker_threads > 1 and self.pool_kind != "prefork":
            raise ConfigurationError(
                f"worker_threads = {conf.worker_threads} (--threads) runs threads inside "
                f"prefork children; with -P {self.pool_kind} leave it at 1 (for a thread "
                "pool, -P threads -c N)")
        self._check_security()
        # The solo pool blocks the loop while a task runs, by design: no lag warnings there.
        self.loop = Loop(clock=clock,
                         lag_warning=float("inf") if self.pool_kind == "solo" else 0.5)
        self.revoked = RevokedSet()
        # revoke_by_stamped_headers: stamp name -> revoked values (Celery's revoked_stamps)
        self.revoked_stamps: dict[str, list[Any]] = {}
        self.rate_limits = RateLimits(app.conf, clock)
        self.statedb = StateDB(statedb, self.revoked, app.clock) if statedb else None
        # Blocking calls the loop must not make (result-backend writes; republishing and the
        # state file), each lane on its own thread, completions posted back to the loop.
        self.offload_results = Offload(self.loop, "result backend")
        self.offload_io = Offload(self.loop, "broker and disk")
        self.mingle = mingle
        self.mingling = False  # mingle's answers not in yet: no task starts (MingleStep)
        self.task_events = conf.worker_send_task_events if task_events is None else task_events
        self.events = Events(self)
        self.gossip: Gossip | None = Gossip(self) if gossip else None
        self.completed_by_name: collections.Counter[str] = collections.Counter()
        self.started_at = clock()
        self.ready: collections.deque[Request] = collections.deque()
        self._accept = list(app.conf.accept_content)  # read once: every message checks it
        # Requests whose early ack went out and is not answered yet (Redis answers on the
        # loop): they run once it is (on_acks_answered); in order, oldest first.
        self.acking: dict[Request, None] = {}
        self.held: dict[Request, Any] = {}          # eta requests -> timer entry
        self.dispatched: dict[Job, Request] = {}    # given to the pool, not yet done
        self.stopping = False
        self.warm = True
        self.restart_requested = False
        self.autoscale: tuple[int, int] | None = None  # (max, min), set by --autoscale
        self._soft_deadline: float | None = None
        self.exit_code = 0
        self.fatal_reason: str | None = None
        self._install_signals = install_signals
        self.totals: collections.Counter[str] = collections.Counter()
        pool_cls = pool_for(self.pool_kind)
        self.pool: Pool = pool_cls(
            app, concurrency=self.concurrency, hostname=self.hostname,
            on_started=self.on_job_started, on_done=self.on_job_done,
            on_lost=self.on_job_lost, on_unstarted=self.on_job_unstarted,
        )
        self.pool.on_capacity = self.feed_pool  # e.g. a replacement child became ready
        multiplier = conf.worker_prefetch_multiplier
        self.consumer = BrokerConsumer(
            app, self.loop,
            queues=queues_for(app, queues, exclude_queues),
            prefetch=self.pool.size() * multiplier,  # slots: prefork --threads has more
            on_message=self.on_message, on_connected=self.on_connected,
            on_lost=self.on_connection_lost, on_fatal=self.on_fatal,
        )
        self.consumer.on_leases_lost = self.on_leases_lost
        self.consumer.on_acks_answered = self.on_acks_answered
        # Requests of lost connections whose leases the next connection gives back at once.
        self._orphans: list[Request] = []
        # Reserved requests whose early ack got no answer before the connection was lost:
        # the next connection tells whether they run here (lifecycle.ack_confirmed).
        self._unconfirmed: list[Request] = []
        if self.pool.blocks_loop:
            # The solo pool runs tasks on the loop's thread: acks cannot wait for the loop's
            # next tick, and the leases are renewed from its thread while a task runs.
            self.consumer.settle_at_once = True
            self.pool.keepalive = self.consumer.keep_leases
        self.consumer.on_consuming = self._log_ready
        self._steps_started = self._ready_logged = False
        self.control = ControlNode(self)
        self.steps = order([*default_steps(), *app.steps, *steps])
        self._started_steps: list[Step] = []

    def _check_security(self) -> None:
        accept = set(self.app.conf.accept_content)
        unsafe = accept & {"pickle", "application/x-python-serialize"}
        if unsafe and hasattr(os, "geteuid") and os.geteuid() == 0:
            raise ConfigurationError(
                "refusing to run as root with pickle in accept_content: a pickled message "
                "can run any code. Run the worker as an unprivileged user, or remove 'pickle' "
                "from accept_content (and task_serializer)."
            )

    # -- running ------------------------------------------------------------------------------
    def start(self) -> None:
        self.app.import_includes()
        for step in self.steps:
            logger.debug("starting step %s", step.name)
            step.start(self)
            self._started_steps.append(step)
        if self.autoscale is not None:
            if not self.pool.supports_autoscale:
                raise ConfigurationError(f"--autoscale needs the prefork pool without "
                                         f"--threads, not {pool_label(self.pool_kind, self.pool)}")
            self.pool.autoscale(*self.autoscale)
        self.pool.worker_started()  # a prefork pool forks its first children now
        self.loop.hub.call_repeatedly(1.0, self._tick)
        self._steps_started = True
        self._log_ready()

    def _log_ready(self) -> None:
        """"ready" once, when every step has started and the consumer consumes (after the
        first connect when the broker was not there at start; never after a fatal error)."""
        if (self._ready_logged or not self._steps_started or self.stopping
                or not self.consumer.connected):
            return
        self._ready_logged = True
        logger.info("%s ready: pool=%s concurrency=%d queues=%s", self.hostname,
                    self.pool_kind, self.concurrency,
                    ",".join(q.name for q in self.consumer.queues))

    def run(self) -> int:
        """Start, loop until stopped, stop; returns the process exit code."""
        try:
            self.start()
            for _ in self.loop.iterate_handling(self._on_loop_error):
                if self.stopping and self._can_exit():
                    break
        finally:
            self.shutdown()
        return self.exit_code

    def _on_loop_error(self, exc: BaseException) -> bool:
        if self.consumer.is_connection_error(exc):
            self.consumer.on_connection_error(exc)
            return True
        return False

    def _can_exit(self) -> bool:
        if not self.warm:
            return True
        if self._soft_deadline is not None and self.clock() >= self._soft_deadline:
            logger.warning("soft shutdown timeout passed: terminating running tasks")
            self.warm = False
            return True
        return self.pool.is_idle() and not self.dispatched

    def shutdown(self) -> None:
        if not self.warm:
            self.pool.terminate()
            # The tasks cut short were never acked if acks_late: hand them back now rather
            # than after the broker notices (AMQP) or the lease runs out (Redis).
            for job, request in list(self.dispatched.items()):
                phase = lifecycle.Phase.STARTED if job.started_at else lifecycle.Phase.DISPATCHED
                self._carry_out(request, lifecycle.shutdown(self._facts(request, job), phase,
                                                            warm=False), job=job)
            self.dispatched.clear()
        for step in reversed(self._started_steps):
            try:
                step.stop(self)
            except Exception:
                logger.exception("stopping step %s failed", step.name)
        self._started_steps.clear()
        logger.info("%s stopped", self.hostname)

    def install_signals(self) -> None:
        if not self._install_signals:
            return
        self.loop.install_signals({
            signal.SIGTERM: lambda s: self.request_stop(warm=not self.stopping),
            signal.SIGINT: lambda s: self.request_stop(warm=not self.stopping),
            signal.SIGQUIT: lambda s: self.request_stop(warm=False),
            signal.SIGHUP: lambda s: self.request_restart(),
        })

    def request_restart(self) -> None:
        """SIGHUP: warm shutdown, then the command line re-executes itself (same pid)."""
        logger.warning("restart requested: warm shutdown, then exec in place")
        self.restart_requested = True
        self.request_stop(warm=True)

    def request_stop(self, warm: bool = True) -> None:
        """Warm: stop consuming, give back reserved messages, let running tasks finish."""
        if not warm and self.warm:
            soft = self.app.conf.worker_soft_shutdown_timeout
            if soft and self._soft_deadline is None:
                # Celery 5.5's soft shutdown: running tasks get a last bounded chance.
                self._soft_deadline = self.clock() + soft
                logger.warning("cold shutdown requested: running tasks get %.1f s to finish "
                               "(worker_soft_shutdown_timeout)", soft)
            else:
                logger.warning("cold shutdown: terminating running tasks")
                self.warm = False
        if self.stopping:
            return
        self.stopping = True
        if warm:
            logger.warning("warm shutdown: finishing running tasks")
        self.consumer.stop_consuming()
        self._give_back_reserved()
        self.pool.stop()

    def on_fatal(self, reason: str) -> None:
        logger.critical("%s; the worker stops", reason)
        self.fatal_reason = reason
        self.exit_code = 1
        self.request_stop(warm=True)

    def _give_back_reserved(self) -> None:
        for request, entry in list(self.held.items()):
            entry.cancel()
            self._carry_out(request, lifecycle.shutdown(self._facts(request),
                                                        lifecycle.Phase.HELD, warm=True))
        self.held.clear()
        if self.acking:  # acked or not? Ask now: an acked one goes back as a copy
            self.consumer.wait_for_acks()
            self.on_acks_answered()
            self.ready.extendleft(reversed(list(self.acking)))  # unanswered: not acked
            self.acking.clear()
        unconfirmed, self._unconfirmed = self._unconfirmed, []
        self.ready.extend(unconfirmed)  # shutdown() warns for those whose ack is in doubt
        while self.ready:
            request = self.ready.popleft()
            # An early-acked request can wait here (the pool took fewer than the batch that
            # was acked): the broker will not deliver it again, so a copy goes back instead.
            self._carry_out(request, lifecycle.shutdown(self._facts(request),
                                                        lifecycle.Phase.RESERVED, warm=True))
        self._release_orphans()

    def _tick(self) -> None:
        self.on_acks_answered()  # those whose answer failed were sent again the slow way
        self.feed_pool()
        self.pool.autoscale_tick(len(self.ready))

    # -- receiving ----------------------------------------------------------------------------
    def on_connected(self, conn: Connection) -> None:
        self.control.attach(conn)
        self.events.attach(conn)
        if self.gossip is not None:
            self.gossip.attach(conn)
        self._take_over_leases()

    def _take_over_leases(self) -> None:
        """A reconnect is not a new worker (lease transports; AMQP requeued all on close):
        the requests the pool still holds keep their leases, renewed and settled through the
        new connection, and the reserved ones of lost connections go back to the queue now
        rather than after their lease."""
        generation = self.consumer.generation
        held = [r for r in self.dispatched.values()
                if r.generation != generation and not r.acknowledged]
        lost = {id(r) for r in self.consumer.adopt(held)}
        jobs = {id(r): job for job, r in self.dispatched.items()}
        for request in held:
            self._carry_out(request, lifecycle.reconnected(
                self._facts(request, jobs.get(id(request))), lease_kept=id(request) not in lost))
        if self._unconfirmed:
            unconfirmed, self._unconfirmed = self._unconfirmed, []
            try:
                acked = {id(r) for r in self.consumer.confirm_acks(unconfirmed)}
            except BaseException:
                self._unconfirmed[:0] = unconfirmed  # asked again on the next connection
                raise
            for request in reversed(unconfirmed):  # RunHere puts each at the front
                self._carry_out(request, lifecycle.ack_confirmed(
                    self._facts(request), acked=id(request) in acked))
        self._release_orphans()

    def _gave_back_orphan(self, request: Request) -> bool:
        """True (and the request given back, or kept aside until the next connection says
        whether its early ack arrived) when its connection is gone and it was not acked:
        the new connection releases its message at once."""
        if request.generation == self.consumer.generation or request.acknowledged:
            return False  # as _facts says (connection_current, acknowledged), without it
        facts = self._facts(request)
        self._carry_out(request, lifecycle.connection_lost(facts, lifecycle.Phase.RESERVED))
        return True

    def _release_orphans(self) -> None:
        if self._orphans and self.consumer.connected:
            orphans, self._orphans = self._orphans, []
            self.consumer.release_orphans(orphans)
            # What the pool cannot start now would come straight back here (this worker's
            # fetch after the reconnect races every other consumer's): leave it to them.
            free = max(0, self.pool.size() - len(self.dispatched) - len(self.acking)
                       - len(self.ready))
            self.consumer.hold_back(len(orphans) - free, ORPHAN_HOLD_BACK)

    def on_leases_lost(self, tags: list[str]) -> None:
        """The broker took these deliveries back (their lease ran out; another worker may
        hold them now): reserved requests for them must not start here (DESIGN.md's table)."""
        generation, gone = self.consumer.generation, set(tags)

        def lost(request: Request) -> bool:
            return request.generation == generation and request.message.delivery_tag in gone

        Phase = lifecycle.Phase
        stale = [r for r in self.acking if lost(r)] + [r for r in self.ready if lost(r)]
        if stale:
            self.ready = collections.deque(r for r in self.ready if not lost(r))
            for request in stale:
                self.acking.pop(request, None)
        found: list[tuple[Request, Job | None, lifecycle.Phase]] = [
            (r, None, Phase.RESERVED) for r in stale]
        for request, entry in list(self.held.items()):
            if lost(request):
                entry.cancel()
                del self.held[request]
                self.consumer.decrement_prefetch()
                found.append((request, None, Phase.HELD))
        found += [(r, job, Phase.DISPATCHED if job.started_at is None else Phase.STARTED)
                  for job, r in self.dispatched.items() if lost(r)]
        withdrawn: list[Job] = []
        dropped = []
        for request, job, phase in found:
            request.settled_reason = "lease lost"  # an unstarted job given back is dropped
            decision = lifecycle.lease_lost(self._facts(request, job), phase)
            if decision.phase is Phase.DROPPED:
                dropped.append(request)
            self._carry_out(request, decision, job=job, withdrawn=withdrawn)
        if withdrawn:
            self.pool.withdraw(withdrawn)
        if dropped or withdrawn:
            logger.warning("dropped %d reserved tasks and took %d back from the pool: their "
                           "lease was lost, the broker delivers them again (%s)",
                           len(dropped), len(withdrawn), ", ".join(r.id for r in dropped[:10]))

    def on_connection_lost(self, old_generation: int) -> None:
        """Reserved requests of the lost connection are not started here: AMQP redelivers
        them; lease transports get them back at once from the next connection."""
        self.events.detach()
        # Acks sent without an answer: the next connection tells whether they were applied.
        self.ready.extendleft(reversed(list(self.acking)))
        self.acking.clear()
        Phase = lifecycle.Phase
        found: list[tuple[Request, Job | None, lifecycle.Phase]] = [
            (r, None, Phase.HELD) for r in self.held if r.generation == old_generation]
        for request, _, _ in found:
            self.held.pop(request).cancel()
        # Early acks already sent (feed_pool) stay: the broker will not deliver those again.
        kept = [r for r in self.ready if r.generation != old_generation or r.acknowledged]
        found += [(r, None, Phase.RESERVED) for r in self.ready
                  if r.generation == old_generation and not r.acknowledged]
        self.ready = collections.deque(kept)
        # Given to the pool but not started (queued in a child with -O fast, or written to
        # one that has not begun) and not acked: the broker redelivers them too, so they must
        # not run here. Started ones run on (their leases are taken over at the reconnect).
        found += [(r, job, Phase.DISPATCHED) for job, r in self.dispatched.items()
                  if r.generation == old_generation and job.started_at is None]
        withdrawn: list[Job] = []
        for request, job, phase in found:
            self._carry_out(request, lifecycle.connection_lost(self._facts(request, job), phase),
                            job=job, withdrawn=withdrawn)
        if withdrawn:
            self.pool.withdraw(withdrawn)
        given_back = sum(1 for _, job, _ in found if job is None)
        if given_back or withdrawn:
            logger.info("dropped %d reserved tasks of the lost connection and took %d back "
                        "from the pool; the broker redelivers them", given_back, len(withdrawn))

    def on_message(self, message: Message) -> None:
        try:
            request = Request.build(
                message, self.app, generation=self.consumer.generation, revoked=self.revoked,
                accept=self._accept, now=dt.datetime.now(dt.UTC),
                received_at=self.clock(),
            )
        except Rejection as rejection:
            self._reject_invalid(message, rejection)
            return
        self.totals["received"] += 1
        logger.debug("received %s[%s]", request.name, request.id)
        msg = request.msg
        if self.task_events:
            self.events.task("task-received", msg.task, uuid=msg.id, name=msg.task,
                             args=msg.argsrepr, kwargs=msg.kwargsrepr, root_id=msg.root_id,
                             parent_id=msg.parent_id, retries=msg.retries,
                             eta=msg.eta.isoformat() if msg.eta else None,
                             expires=msg.expires.isoformat() if msg.expires else None)
        eta = msg.eta
        if eta is not None:
            delay = (eta - dt.datetime.now(dt.UTC)).total_seconds()
            if delay > 0:
                self.consumer.increment_prefetch()
                self.held[request] = self.loop.hub.call_later(delay, self._eta_due, request)
                return
        self._admit(request)
        self.feed_pool()

    def _admit(self, request: Request) -> None:
        """Ready now, or held (reserved, unacked) until its task's rate limit lets it start."""
        wait = self.rate_limits.reserve(request.task)
        if wait > 0:
            self.consumer.increment_prefetch()  # as for eta: other tasks keep coming
            self.held[request] = self.loop.hub.call_later(wait, self._rate_due, request)
            return
        self.ready.append(request)

    def _rate_due(self, request: Request) -> None:
        if self.held.pop(request, None) is None:
            return
        self.consumer.decrement_prefetch()
        self.ready.append(request)  # its token was reserved when it was held
        self.feed_pool()

    def _reject_invalid(self, message: Message, rejection: Rejection) -> None:
        # The state is stored before the line is logged: whoever reads the log (a person, a
        # test) then finds the REVOKED/FAILURE state already there.
        # The store runs off the loop (offload.py); the line is logged when it is done.
        task_id = rejection.task_id or "?"
        self.totals["rejected"] += 1
        self.consumer.reject_raw(message)
        level = logging.INFO if rejection.store == states.REVOKED else logging.ERROR

        def logged(outcome: Outcome | None = None) -> None:
            if outcome is not None and not outcome.ok:
                logger.debug("could not store the state of rejected %s: %r", task_id,
                             outcome.error)
            logger.log(level, "rejected message %s: %s", task_id, rejection.reason)

        def store() -> None:
            assert rejection.task_id is not None
            backend = self.app.backend
            ended: BaseException | None = rejection.exc
            if rejection.store == states.REVOKED:
                backend.mark_as_revoked(rejection.task_id, rejection.revoked_reason,
                                        request=rejection.msg)
                ended = TaskRevokedError(rejection.revoked_reason)
            elif rejection.exc is not None:
                backend.mark_as_failure(rejection.task_id, rejection.exc, request=rejection.msg)
            if rejection.msg is not None and ended is not None and rejection.store:
                chord.ended_by_worker(self.app, rejection.msg, rejection.store, ended)

        if (rejection.task_id is None or rejection.store is None
                or not self.offload_results.submit(f"storing the state of rejected {task_id}",
                                                   store, logged)):
            logged()

    def _eta_due(self, request: Request) -> None:
        if self.held.pop(request, None) is None:
            return
        self.consumer.decrement_prefetch()
        if request.expired():
            self._discard_revoked(request)  # no need to wait for a free child to say so
            return
        self._admit(request)
        self.feed_pool()

    def feed_pool(self) -> None:
        """Hand ready requests to the pool while it takes them.

        Early acks are sent before the jobs reach the pool, one round trip per batch: a main
        process that dies after that loses those tasks (DESIGN.md's table: for early ack a
        task is "running" once the pool has it), and one that dies before leaves them unacked
        (redelivered). Acked at ``started`` instead, a task a child began in the moment the
        main process died was redelivered and ran twice. On Redis the loop does not wait for
        the answer: the requests wait in ``acking`` and go on when it comes
        (``on_acks_answered``).
        """
        while self.ready and not self.stopping and not self.mingling and self.pool.can_accept():
            if self.acking and len(self.acking) >= self._room():
                return  # the pool's room is taken by those waiting for their acks' answers
            batch = self._next_batch()
            early = [r for r in batch if not r.acks_late and not r.acknowledged]
            if early:
                self.consumer.ack_now(early)
                waiting = self.consumer.awaiting_answer(early)
                if waiting:
                    self.acking.update(dict.fromkeys(waiting))
                    batch = [r for r in batch if r not in self.acking]
            for n, request in enumerate(batch):
                if self._gave_back_orphan(request):
                    continue
                if (not request.acks_late and not request.acknowledged) or \
                        not self.pool.can_accept():
                    # the broker was busy (its acks go out with the loop's tick, this feed
                    # sends them next time), or the pool took fewer than estimated
                    self.ready.extendleft(reversed(batch[n:]))
                    return
                self._dispatch(request)

    def on_acks_answered(self) -> None:
        """Early acks were answered: the requests waiting for theirs go first."""
        if not self.acking:
            return
        answered = self.consumer.ack_now(list(self.acking))
        for request in answered:
            del self.acking[request]
        self.ready.extendleft(reversed(answered))
        self.feed_pool()

    def _room(self) -> int:
        return max(1, self.pool_size() - len(self.dispatched))

    def _next_batch(self) -> list[Request]:
        """The next ready requests, about as many as the pool takes now (at least one)."""
        room = max(1, self._room() - len(self.acking))
        batch: list[Request] = []
        while self.ready and len(batch) < room:
            request = self.ready.popleft()
            if self._gave_back_orphan(request):
                continue
            if (request.id in self.revoked or request.expired()
                    or revoked_by_stamps(request.msg.headers, self.revoked_stamps)):
                self._discard_revoked(request)
                continue
            batch.append(request)
        return batch

    def _dispatch(self, request: Request) -> None:
        job = Job(
            msg=request.msg, delivery_info=request.delivery_info,
            time_limit=request.msg.time_limit or request.task.time_limit,
            soft_time_limit=request.msg.soft_time_limit or request.task.soft_time_limit,
            acks_late=request.acks_late,
            reject_on_worker_lost=request.reject_on_worker_lost,
        )
        self.dispatched[job] = request
        self.pool.apply(job)

    def _discard_revoked(self, request: Request) -> None:
        """Revoked, or its ``expires`` passed while it waited: REVOKED, as Celery's worker
        stores it ("revoked"/"expired"), with the request so rpc:// replies reach the client;
        stored off the loop, the line logged once it is stored."""
        reason = "expired" if request.expired() else "revoked"
        self._carry_out(request, lifecycle.discarded(self._facts(request), reason))
        run_hooks(self.app.hooks.task_revoked, request)

    # -- pool callbacks -----------------------------------------------------------------------
    def on_job_started(self, job: Job, pid: int) -> None:
        request = self.dispatched.get(job)
        if request is None:
            return
        job.started_at = self.clock()
        if request.settled_reason is not None:
            logger.warning("task %s[%s] started although its lease was lost (%s): it may run "
                           "twice", request.name, request.id, request.settled_reason)
        self.events.task("task-started", job.name, uuid=job.id, pid=pid)
        # Early acks were sent before the job reached the pool (feed_pool).
        if request.terminated is not None:  # revoked with terminate before it started
            self.pool.terminate_job(job, request.terminated)

    def on_job_done(self, job: Job, result: JobResult) -> None:
        request = self.dispatched.pop(job, None)
        if request is None:
            return
        self.totals[result.state] += 1
        self.completed_by_name[job.name] += 1
        self._task_done_event(job, result)
        if result.expected:  # one of the task's ``throws``: as Celery, INFO, no traceback
            logger.info("task %s[%s] raised expected: %s", job.name, job.id, result.summary)
        elif result.state == states.FAILURE:  # as Celery: ERROR, with the task's traceback
            logger.error("task %s[%s] %s in %.3fs%s%s", job.name, job.id, result.state,
                         result.runtime, f": {result.summary}" if result.summary else "",
                         f"\n{result.traceback.rstrip()}" if result.traceback else "")
        else:
            level = logging.INFO if result.state == states.SUCCESS else logging.WARNING
            logger.log(level, "task %s[%s] %s in %.3fs%s", job.name, job.id, result.state,
                       result.runtime, f": {result.summary}" if result.summary else "")
        if result.state == states.REJECTED:
            self.consumer.reject(request, requeue=result.requeue)
        elif result.follow_up:
            self._follow_up_then_ack(request, result, job.run_id)
        else:  # acked (a failure of acks_on_failure_or_timeout=False: rejected)
            self._carry_out(request, lifecycle.done(self._facts(request), result.state))
        self.feed_pool()

    def _follow_up_then_ack(self, request: Request, result: JobResult, run_id: str) -> None:
        """The child died after storing the outcome and before it sent what follows it (its
        chord part, the next chain step): send that off the loop (``trace.follow_up``), then
        ack, so that under ``acks_late`` a worker that dies meanwhile leaves the message."""
        app, msg = self.app, request.msg

        def then(_outcome: Outcome) -> None:  # follow_up never raises: it logs
            self.consumer.ack(request)

        if not self.offload_results.submit(
                f"sending what follows {request.name}[{request.id}]",
                lambda: trace.follow_up(app, msg, result.state, result.claim, result.sent,
                                        result.fired, run_id), then):
            logger.error("task %s[%s]: what follows its %s is not sent: the result backend "
                         "is not keeping up", request.name, request.id, result.state)
            self.consumer.ack(request)

    def _task_done_event(self, job: Job, result: JobResult) -> None:
        if not self.task_events:
            return
        if result.state == states.SUCCESS:
            self.events.task("task-succeeded", job.name, uuid=job.id, result=result.summary,
                             runtime=result.runtime)
        elif result.state == states.FAILURE:
            self.events.task("task-failed", job.name, uuid=job.id, exception=result.summary,
                             traceback=result.traceback or None)
        elif result.state == states.RETRY:
            self.events.task("task-retried", job.name, uuid=job.id, exception=result.summary)
        elif result.state == states.REJECTED:
            self.events.task("task-rejected", job.name, uuid=job.id, requeue=result.requeue)

    def on_job_lost(self, job: Job, exc: BaseException) -> None:
        request = self.dispatched.pop(job, None)
        if request is None:
            return
        self.totals["lost"] += 1
        facts = self._facts(request, job)
        if not facts.started and not job.start_failures:
            self._carry_out(request, lifecycle.unstarted(facts), job=job)
            self.feed_pool()
            return
        if request.terminated is not None:
            logger.info("task %s[%s] terminated by revoke (signal %d)", job.name, job.id,
                        request.terminated)
            run_hooks(self.app.hooks.task_revoked, request)
        else:
            logger.error("task %s[%s] lost: %r", job.name, job.id, exc)
        cause = (lifecycle.Cause.TIME_LIMIT if isinstance(exc, TimeLimitExceeded)
                 else lifecycle.Cause.CHILD_DIED)
        decision = lifecycle.child_died(facts, cause, str(exc))
        if decision.phase in (lifecycle.Phase.LOST, lifecycle.Phase.REDELIVERED,
                              lifecycle.Phase.GIVEN_BACK):
            run_hooks(self.app.hooks.task_lost, request.id, request.name, exc,
                      decision.phase is not lifecycle.Phase.LOST, request.msg)
        self._carry_out(request, decision, job=job, exc=exc)
        self.feed_pool()

    def _facts(self, request: Request, job: Job | None = None) -> lifecycle.Facts:
        """What the lifecycle's transitions need to know about ``request`` now."""
        return lifecycle.Facts(
            acks_late=request.acks_late,
            reject_on_worker_lost=request.reject_on_worker_lost,
            acknowledged=request.acknowledged,
            ack_in_doubt=(not request.acknowledged and request.ack_lease is not None
                          and request.generation != self.consumer.generation),
            started=job is not None and job.started_at is not None,
            connection_current=request.generation == self.consumer.generation,
            lease_lost=request.settled_reason is not None,
            redeliveries=int(request.msg.headers.get("redelivered_count") or 0),
            max_redeliveries=self.app.conf.task_max_redeliveries,
            start_failures=job.start_failures if job is not None else 0,
            terminated=request.terminated,
            stopping=self.stopping,
            requeued_on_close=self.consumer.requeues_on_close,
            ack_failures=request.task.acks_on_failure_or_timeout,
        )

    def _carry_out(self, request: Request, decision: lifecycle.Decision, *,
                   job: Job | None = None, exc: BaseException | None = None,
                   withdrawn: list[Job] | None = None) -> None:
        """Do what ``decision`` says, in order (lifecycle.py decides; this only acts).
        ``withdrawn``: collect the jobs to withdraw, for one pool call for them all."""
        store: lifecycle.Store | None = None
        for action in decision.actions:
            match action:
                case lifecycle.Emit(event=event, fields=fields):
                    self.events.task(event, request.name, uuid=request.id, **dict(fields))
                case lifecycle.Store():
                    store = action
                case lifecycle.Ack() if store is not None:
                    self._store_then_ack(request, store.state,
                                         self._storer(request, store, exc))
                    store = None
                case lifecycle.Ack():
                    self.consumer.ack(request)
                case lifecycle.Reject(requeue=False) if store is not None:
                    self._store_then_ack(request, store.state,
                                         self._storer(request, store, exc), reject=True)
                    store = None
                case lifecycle.Reject(requeue=requeue):
                    self.consumer.reject(request, requeue=requeue)
                case lifecycle.Release():
                    self._orphans.append(request)
                    self._release_orphans()
                case lifecycle.Drop():
                    self.consumer.drop(request)
                case lifecycle.Republish(count=count):
                    self._redeliver(request, count)
                case lifecycle.HandOn():
                    self._hand_on_acked(request)
                case lifecycle.RunHere():
                    self.ready.appendleft(request)
                case lifecycle.Confirm():
                    self._unconfirmed.append(request)
                case lifecycle.Withdraw():
                    assert job is not None
                    if withdrawn is None:
                        self.pool.withdraw([job])
                    else:
                        withdrawn.append(job)
                case lifecycle.Terminate(signum=signum):
                    assert job is not None
                    self.pool.terminate_job(job, signum)
                case lifecycle.Warn(message=message):
                    logger.warning("task %s[%s] %s", request.name, request.id, message)
                case _:
                    raise AssertionError(f"no handler for {action!r}")
        if store is not None:  # stored without an ack to follow (a discarded request)
            self._store_only(request, store)

    def _storer(self, request: Request, store: lifecycle.Store,
                exc: BaseException | None) -> Callable[[], Any]:
        app, msg = self.app, request.msg
        if store.state == states.REVOKED:
            def revoked() -> None:
                app.backend.mark_as_revoked(msg.id, store.reason, request=msg)
                chord.ended_by_worker(app, msg, states.REVOKED, TaskRevokedError(store.reason))
            return revoked
        error = exc if exc is not None and str(exc) == store.reason else WorkerLostError(
            store.reason)

        def failed() -> None:
            app.backend.mark_as_failure(msg.id, error, request=msg)
            chord.ended_by_worker(app, msg, states.FAILURE, error)
        return failed

    def _store_only(self, request: Request, store: lifecycle.Store) -> None:
        """Store off the loop and log once stored (whoever reads the log, a person or a
        test, then finds the state there)."""

        def logged(outcome: Outcome | None = None) -> None:
            if outcome is not None and not outcome.ok:
                logger.debug("could not store %s of %s: %r", store.state, request.id,
                             outcome.error)
            logger.info("discarded %s task %s[%s]", store.reason, request.name, request.id)

        if not self.offload_results.submit(f"storing {store.state} of {request.name}"
                                           f"[{request.id}]",
                                           self._storer(request, store, None), logged):
            logged()

    def _store_then_ack(self, request: Request, state: str, store: Callable[[], Any], *,
                        reject: bool = False) -> None:
        """Store ``state`` off the loop, then ack on the loop: the broker forgets the message
        only once its end state is stored (DESIGN.md's table). A full lane (the backend has
        been stalled for a long while) acks without the state: the table forbids a rerun
        more than a missing state; the log says so. ``reject``: reject it without requeue
        instead of acking (``acks_on_failure_or_timeout=False``: dead-lettered)."""

        def settle() -> None:
            if reject:
                self.consumer.reject(request, requeue=False)
            else:
                self.consumer.ack(request)

        def then(outcome: Outcome) -> None:
            if not outcome.ok:
                logger.warning("could not store %s of %s[%s]: %r", state, request.name,
                               request.id, outcome.error)
            settle()

        if not self.offload_results.submit(f"storing {state} of {request.name}[{request.id}]",
                                           store, then):
            logger.error("task %s[%s] ends %s without a stored state: the result backend is "
                         "not keeping up", request.name, request.id, state)
            settle()

    def _redeliver(self, request: Request, count: int) -> None:
        """Requeue a lost task with its redelivery count: publish a copy, then ack."""
        # Published off the loop (the producer pool waits up to 30 s for a connection, and
        # a publish retries); acked back on the loop once the copy is on the broker. A full
        # lane requeues the message as it is, as a failed publish does.
        msg = request.msg.evolve(headers={**request.msg.headers, "redelivered_count": count})

        def then(outcome: Outcome) -> None:
            if not outcome.ok:
                logger.warning("could not republish lost task %s (%r); requeueing it as it is",
                               request.id, outcome.error)
                self.consumer.reject(request, requeue=True)
                return
            logger.warning("task %s[%s] requeued after its worker was lost (redelivery %d of "
                           "%d)", request.name, request.id, count,
                           self.app.conf.task_max_redeliveries)
            self.consumer.ack(request)

        # No retry: a publish whose confirm a connection cut swallowed may have landed, and
        # a retry would add a third copy to the original the broker then redelivers (canvas
        # suite, amqp seed 1: one cut, a lost task ran three more times). A failed publish
        # requeues the original instead, as it is.
        if not self._publish_copy(request, msg, f"republishing lost task {request.id}", then,
                                  retries=0):
            self.consumer.reject(request, requeue=True)

    def _publish_copy(self, request: Request, msg: TaskMessage, what: str,
                      then: Callable[[Outcome], None], retries: int = 1) -> bool:
        """Publish ``msg`` where ``request`` came from, off the loop; False if refused."""
        info = request.message.delivery_info or {}

        def publish() -> None:
            self.app.publish_message(
                msg, queue=info.get("routing_key") or None,
                exchange=info.get("exchange"), routing_key=info.get("routing_key"),
                retry=retries > 0,
                retry_policy={"max_retries": retries, "interval_start": 0,
                              "interval_step": 0.2},
            )

        return self.offload_io.submit(what, publish, then)

    def _hand_on_acked(self, request: Request) -> None:
        """An early-acked job the pool gave back while the worker stops: the broker will not
        deliver it again, so a copy goes back to its queue for another worker to run."""
        def then(outcome: Outcome) -> None:
            if outcome.ok:
                logger.info("task %s[%s] was acked but not started before the worker stopped: "
                            "published again", request.name, request.id)
            else:
                logger.error("task %s[%s] was acked but not started before the worker stopped, "
                             "and publishing it again failed (%r): it is lost", request.name,
                             request.id, outcome.error)

        if not self._publish_copy(request, request.msg, f"handing on acked task {request.id}",
                                  then):
            logger.error("task %s[%s] was acked but not started before the worker stopped, "
                         "and the publishing lane is full: it is lost", request.name, request.id)

    def on_job_unstarted(self, job: Job, request: Request | None = None) -> None:
        """A job the pool took but never started: run it elsewhere, or give it back."""
        request = request or self.dispatched.pop(job, None)
        if request is None:
            return
        self._carry_out(request, lifecycle.unstarted(self._facts(request, job)), job=job)
        self.feed_pool()

    # -- revoke -------------------------------------------------------------------------------
    def revoke(self, ids: Sequence[str], *, terminate: bool = False,
               signum: int = signal.SIGTERM) -> None:
        self.revoked.update(ids)
        wanted = set(ids)
        for request, entry in list(self.held.items()):
            if request.id in wanted:
                entry.cancel()
                del self.held[request]
                self.consumer.decrement_prefetch()
                self._discard_revoked(request)
        for job, request in list(self.dispatched.items()):
            if job.id not in wanted:
                continue
            phase = lifecycle.Phase.STARTED if job.started_at else lifecycle.Phase.DISPATCHED
            if terminate and self.pool.supports_terminate_job:
                # Its child's death is then REVOKED "terminated" (on_job_lost); one not
                # started yet is signalled when it starts (on_job_started).
                request.terminated = int(signum)
            self._carry_out(request, lifecycle.revoked(
                self._facts(request, job), phase, terminate=terminate, signum=int(signum),
                can_terminate=self.pool.supports_terminate_job), job=job)
        if self.statedb is not None:
            self.statedb.changed()  # written within StateDB.SAVE_INTERVAL, off the loop

    def store_revoked_elsewhere(self, ids: Sequence[str], then: Callable[[], None]) -> None:
        """After ``revoke``: store REVOKED for each id not running here whose stored state
        says no worker started it (PENDING, RECEIVED, RETRY, REJECTED), as Celery 5.7's worker
        does, so a client's ``get()`` ends at once; a state another worker set (STARTED, a
        custom one) or a result is left alone. Off the loop; ``then()`` runs on the loop when
        it is done (the revoke's reply waits for it), or at once when there is nothing to
        store or the result backend lane is full."""
        from taskq.backends import DisabledBackend
        from taskq.backends.rpc import RPCBackend

        backend = self.app.backend
        running = {job.id for job in self.dispatched}
        wanted = [i for i in ids if i not in running]
        if not wanted or isinstance(backend, DisabledBackend | RPCBackend):
            then()
            return

        def store() -> None:
            for task_id in wanted:
                try:
                    if backend.get_task_meta(task_id)["status"] in UNCLAIMED_STATES:
                        backend.mark_as_revoked(task_id, reason="revoked")
                except Exception as exc:
                    logger.warning("revoked task %s: storing REVOKED failed: %r", task_id, exc)

        # A client waits about a second for replies: behind a backlog, answer now, store after.
        early = self.offload_results.pending() > REVOKE_REPLY_BACKLOG
        if early:
            then()
        submitted = self.offload_results.submit(
            f"storing REVOKED for {len(wanted)} revoked ids", store,
            lambda _outcome: None if early else then())
        if not submitted and not early:
            then()

    def revoke_stamped(self, headers: Mapping[str, Any], *, terminate: bool = False,
                       signum: int = signal.SIGTERM) -> list[str]:
        """``revoke_by_stamped_headers``: tasks stamped with one of these values never start
        here (checked as each leaves the ready queue), those held for an eta or a rate limit
        are discarded now, and with ``terminate`` running ones are terminated as by
        ``revoke``. Returns the ids of the requests it found here."""
        wanted = {name: list(values) if isinstance(values, list | tuple) else [values]
                  for name, values in headers.items()}
        for name, values in wanted.items():
            self.revoked_stamps[name] = [*self.revoked_stamps.get(name, []), *values]
        found = [request.id for request in (*self.held, *self.dispatched.values())
                 if revoked_by_stamps(request.msg.headers, wanted)]
        if found:
            self.revoke(found, terminate=terminate, signum=signum)
        return found

    def save_state_soon(self) -> None:
        """Hand a changed --statedb to the io lane (timer; the fsync is not the loop's)."""
        assert self.statedb is not None
        snapshot = self.statedb.snapshot()
        if snapshot is None:
            return
        statedb = self.statedb
        if not self.offload_io.submit("writing the state file", lambda: statedb.write(snapshot),
                                      lambda outcome: self._state_written(outcome)):
            statedb.changed()  # try again on the next timer

    def _state_written(self, outcome: Outcome) -> None:
        if not outcome.ok:
            assert self.statedb is not None
            logger.error("writing the state file %s failed: %r", self.statedb.path,
                         outcome.error)
            self.statedb.changed()

    def pool_size(self) -> int:
        return self.pool.size()


    def send_heartbeat(self) -> None:
        self.events.heartbeat()

