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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from taskq import states
from taskq.app import run_hooks
from taskq.errors import ConfigurationError, TimeLimitExceeded, WorkerLostError
from taskq.pool import Job, JobResult, Pool, pool_for
from taskq.ratelimit import RateLimits
from taskq.worker.cluster import Events, Gossip, GossipStep, HeartbeatStep, MingleStep
from taskq.worker.consumer import MAX_BLOCKING, BrokerConsumer, queues_for
from taskq.worker.control import ControlNode
from taskq.worker.loop import Loop
from taskq.worker.offload import Offload, Outcome
from taskq.worker.request import Rejection, Request
from taskq.worker.state import RevokedSet, StateDB
from taskq.worker.steps import Step, order

if TYPE_CHECKING:
    from kombu import Connection, Message

    from taskq.app import TaskQ
    from taskq.protocol import TaskMessage

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


# -- steps ------------------------------------------------------------------------------------

class StateStep(Step):
    name = "state"

    def start(self, worker: Worker) -> None:
        if worker.statedb is not None:
            worker.statedb.load()

    def stop(self, worker: Worker) -> None:
        if worker.statedb is not None:
            worker.statedb.save()


class PoolStep(Step):
    name = "pool"
    requires = ("hub",)

    def start(self, worker: Worker) -> None:
        # Load the result backend's modules here, once: forked children inherit them instead
        # of each importing them on its first result (SQLAlchemy alone takes ~0.3 s, which
        # made every recycled or replaced child stall).
        # Here a store waits at most MAX_BLOCKING for a locked SQLite result database: a
        # fork waits for a store in progress (see taskq.backends.database).
        worker.app.backend.limit_blocking(MAX_BLOCKING)
        worker.pool.start(worker.loop)

    def stop(self, worker: Worker) -> None:
        worker.pool.terminate()


class HubStep(Step):
    name = "hub"

    def start(self, worker: Worker) -> None:
        worker.install_signals()

    def stop(self, worker: Worker) -> None:
        worker.loop.close()


class ConsumerStep(Step):
    name = "consumer"
    requires = ("hub", "pool", "state", "mingle")

    def start(self, worker: Worker) -> None:
        worker.consumer.start()

    def stop(self, worker: Worker) -> None:
        worker.consumer.close()


class ControlStep(Step):
    name = "control"
    requires = ("consumer",)
    # The control node attaches on every (re)connect through Worker.on_connected.


class OffloadStep(Step):
    """The lanes that run the loop's blocking calls (offload.py). Stops before the consumer,
    so the acks that follow the last stored states still reach the broker; the state file is
    written from here every ``StateDB.SAVE_INTERVAL`` seconds when it changed."""

    name = "offload"
    requires = ("consumer",)
    SHUTDOWN_WAIT = 5.0  # seconds for the calls still queued when the worker stops

    def start(self, worker: Worker) -> None:
        if worker.statedb is not None:
            self._timer = worker.loop.hub.call_repeatedly(
                worker.statedb.SAVE_INTERVAL, worker.save_state_soon)

    def stop(self, worker: Worker) -> None:
        timer = getattr(self, "_timer", None)
        if timer is not None:
            timer.cancel()
        deadline = time.monotonic() + self.SHUTDOWN_WAIT
        for lane in (worker.offload_results, worker.offload_io):
            lane.close(max(0.1, deadline - time.monotonic()))


def default_steps() -> list[Step]:
    return [HubStep(), StateStep(), PoolStep(), MingleStep(), ConsumerStep(), ControlStep(),
            HeartbeatStep(), GossipStep(), OffloadStep()]


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
        self._check_security()
        # The solo pool blocks the loop while a task runs, by design: no lag warnings there.
        self.loop = Loop(clock=clock,
                         lag_warning=float("inf") if self.pool_kind == "solo" else 0.5)
        self.revoked = RevokedSet()
        self.rate_limits = RateLimits(app.conf, clock)
        self.statedb = StateDB(statedb, self.revoked, app.clock) if statedb else None
        # Blocking calls the loop must not make (result-backend writes; republishing and the
        # state file), each lane on its own thread, completions posted back to the loop.
        self.offload_results = Offload(self.loop, "result backend")
        self.offload_io = Offload(self.loop, "broker and disk")
        self.mingle = mingle
        self.task_events = conf.worker_send_task_events if task_events is None else task_events
        self.events = Events(self)
        self.gossip: Gossip | None = Gossip(self) if gossip else None
        self.completed_by_name: collections.Counter[str] = collections.Counter()
        self.started_at = clock()
        self.ready: collections.deque[Request] = collections.deque()
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
            prefetch=self.concurrency * multiplier,
            on_message=self.on_message, on_connected=self.on_connected,
            on_lost=self.on_connection_lost, on_fatal=self.on_fatal,
        )
        self.consumer.on_leases_lost = self.on_leases_lost
        # Requests of lost connections whose leases the next connection gives back at once.
        self._orphans: list[Request] = []
        if getattr(self.pool, "blocks_loop", False):
            # The solo pool runs tasks on the loop's thread: acks cannot wait for the loop's
            # next tick, and the leases are renewed from its thread while a task runs.
            self.consumer.settle_at_once = True
            self.pool.keepalive = self.consumer.keep_leases  # type: ignore[attr-defined]
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
            scale = getattr(self.pool, "autoscale", None)
            if scale is None:
                raise ConfigurationError(f"--autoscale needs the prefork pool, not "
                                         f"{self.pool_kind}")
            scale(*self.autoscale)
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
            for request in list(self.dispatched.values()):
                if request.acks_late and not request.acknowledged:
                    self.consumer.reject(request, requeue=True)
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
            self.consumer.reject(request, requeue=True)
        self.held.clear()
        while self.ready:
            self.consumer.reject(self.ready.popleft(), requeue=True)
        self._release_orphans()

    def _tick(self) -> None:
        self.feed_pool()
        autoscale_tick = getattr(self.pool, "autoscale_tick", None)
        if autoscale_tick is not None:
            autoscale_tick(len(self.ready))

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
        lost = self.consumer.adopt(held)
        for request in lost:
            if request.acks_late:
                logger.warning("task %s[%s] still runs, but its lease ran out while the broker "
                               "was away: the broker may deliver it again (it may run twice)",
                               request.name, request.id)
        self._release_orphans()

    def _gave_back_orphan(self, request: Request) -> bool:
        """True (and the request given back) when its connection is gone and it was not
        acked: the new connection releases its message at once."""
        if request.generation == self.consumer.generation or request.acknowledged:
            return False
        self._orphans.append(request)
        self._release_orphans()
        return True

    def _release_orphans(self) -> None:
        if self._orphans and self.consumer.connected:
            orphans, self._orphans = self._orphans, []
            self.consumer.release_orphans(orphans)

    def on_leases_lost(self, tags: list[str]) -> None:
        """The broker took these deliveries back (their lease ran out; another worker may
        hold them now): reserved requests for them must not start here (DESIGN.md's table)."""
        generation, gone = self.consumer.generation, set(tags)

        def lost(request: Request) -> bool:
            return request.generation == generation and request.message.delivery_tag in gone

        dropped = [r for r in self.ready if lost(r)]
        if dropped:
            self.ready = collections.deque(r for r in self.ready if not lost(r))
        for request, entry in list(self.held.items()):
            if lost(request):
                entry.cancel()
                del self.held[request]
                self.consumer.decrement_prefetch()
                dropped.append(request)
        given = []
        for job, request in self.dispatched.items():
            if not lost(request):
                continue
            if job.started_at is None:
                given.append(job)
                request.settled_reason = "lease lost"  # on_job_unstarted drops it
            elif not request.acknowledged:
                logger.warning("task %s[%s] lost its lease while running: the broker may "
                               "deliver it again (it may run twice)", request.name, request.id)
        for request in dropped:
            request.settled_reason = "lease lost"
            self.consumer.drop(request)
        if given:
            self.pool.withdraw(given)
        if dropped or given:
            logger.warning("dropped %d reserved tasks and took %d back from the pool: their "
                           "lease was lost, the broker delivers them again (%s)",
                           len(dropped), len(given),
                           ", ".join(r.id for r in dropped[:10]))

    def on_connection_lost(self, old_generation: int) -> None:
        """Reserved requests of the lost connection are not started here: AMQP redelivers
        them; lease transports get them back at once from the next connection."""
        self.events.detach()
        for request, entry in list(self.held.items()):
            if request.generation == old_generation:
                entry.cancel()
                del self.held[request]
                self._orphans.append(request)
        # Early acks already sent (feed_pool) stay: the broker will not deliver those again.
        kept = [r for r in self.ready if r.generation != old_generation or r.acknowledged]
        dropped = len(self.ready) - len(kept)
        self._orphans.extend(r for r in self.ready
                             if r.generation == old_generation and not r.acknowledged)
        self.ready = collections.deque(kept)
        # Given to the pool but not started (queued in a child with -O fast, or written to
        # one that has not begun) and not acked: the broker redelivers them too, so they must
        # not run here.
        given = [job for job, r in self.dispatched.items()
                 if r.generation == old_generation and job.started_at is None
                 and not r.acknowledged]
        if given:
            self.pool.withdraw(given)
        if dropped or given:
            logger.info("dropped %d reserved tasks of the lost connection and took %d back "
                        "from the pool; the broker redelivers them", dropped, len(given))

    def on_message(self, message: Message) -> None:
        conf = self.app.conf
        try:
            request = Request.build(
                message, self.app, generation=self.consumer.generation, revoked=self.revoked,
                accept=list(conf.accept_content), now=dt.datetime.now(dt.UTC),
                received_at=self.clock(),
            )
        except Rejection as rejection:
            self._reject_invalid(message, rejection)
            return
        self.totals["received"] += 1
        logger.debug("received %s[%s]", request.name, request.id)
        msg = request.msg
        if self.task_events:
            self.events.task("task-received", uuid=msg.id, name=msg.task, args=msg.argsrepr,
                             kwargs=msg.kwargsrepr, root_id=msg.root_id,
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
            if rejection.store == states.REVOKED:
                backend.mark_as_revoked(rejection.task_id, rejection.revoked_reason,
                                        request=rejection.msg)
            elif rejection.exc is not None:
                backend.mark_as_failure(rejection.task_id, rejection.exc, request=rejection.msg)

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
        main process died was redelivered and ran twice.
        """
        while self.ready and not self.stopping and self.pool.can_accept():
            batch = self._next_batch()
            early = [r for r in batch if not r.acks_late and not r.acknowledged]
            if early:
                self.consumer.ack_now(early)
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

    def _next_batch(self) -> list[Request]:
        """The next ready requests, about as many as the pool takes now (at least one)."""
        room = max(1, self.pool_size() - len(self.dispatched))
        batch: list[Request] = []
        while self.ready and len(batch) < room:
            request = self.ready.popleft()
            if self._gave_back_orphan(request):
                continue
            if request.id in self.revoked or request.expired():
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
            reject_on_worker_lost=request.task.reject_on_worker_lost,
        )
        self.dispatched[job] = request
        self.pool.apply(job)

    def _discard_revoked(self, request: Request) -> None:
        """Revoked, or its ``expires`` passed while it waited: REVOKED, as Celery's worker
        stores it ("revoked"/"expired"), with the request so rpc:// replies reach the client;
        stored off the loop, the line logged once it is stored."""
        expired = request.expired()
        reason = "expired" if expired else "revoked"
        self.events.task("task-revoked", uuid=request.id, terminated=False, expired=expired)
        self.consumer.reject(request, requeue=False)

        def logged(outcome: Outcome | None = None) -> None:
            if outcome is not None and not outcome.ok:
                logger.debug("could not store REVOKED of %s: %r", request.id, outcome.error)
            logger.info("discarded %s task %s[%s]", reason, request.name, request.id)

        if not self.offload_results.submit(
                f"storing REVOKED of {request.name}[{request.id}]",
                lambda: self.app.backend.mark_as_revoked(request.id, reason,
                                                         request=request.msg), logged):
            logged()
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
        self.events.task("task-started", uuid=job.id, pid=pid)
        # Early acks were sent before the job reached the pool (feed_pool).

    def on_job_done(self, job: Job, result: JobResult) -> None:
        request = self.dispatched.pop(job, None)
        if request is None:
            return
        self.totals[result.state] += 1
        self.completed_by_name[job.name] += 1
        self._task_done_event(job, result)
        if result.state == states.FAILURE:  # as Celery: ERROR, with the task's traceback
            logger.error("task %s[%s] %s in %.3fs%s%s", job.name, job.id, result.state,
                         result.runtime, f": {result.summary}" if result.summary else "",
                         f"\n{result.traceback.rstrip()}" if result.traceback else "")
        else:
            level = logging.INFO if result.state == states.SUCCESS else logging.WARNING
            logger.log(level, "task %s[%s] %s in %.3fs%s", job.name, job.id, result.state,
                       result.runtime, f": {result.summary}" if result.summary else "")
        if result.state == states.REJECTED:
            self.consumer.reject(request, requeue=result.requeue)
        else:
            self.consumer.ack(request)
        self.feed_pool()

    def _task_done_event(self, job: Job, result: JobResult) -> None:
        if not self.task_events:
            return
        if result.state == states.SUCCESS:
            self.events.task("task-succeeded", uuid=job.id, result=result.summary,
                             runtime=result.runtime)
        elif result.state == states.FAILURE:
            self.events.task("task-failed", uuid=job.id, exception=result.summary,
                             traceback=result.traceback or None)
        elif result.state == states.RETRY:
            self.events.task("task-retried", uuid=job.id, exception=result.summary)
        elif result.state == states.REJECTED:
            self.events.task("task-rejected", uuid=job.id, requeue=result.requeue)

    def on_job_lost(self, job: Job, exc: BaseException) -> None:
        request = self.dispatched.pop(job, None)
        if request is None:
            return
        self.totals["lost"] += 1
        started = job.started_at is not None
        if not started and not job.start_failures:
            self.on_job_unstarted(job, request)
            return
        if request.terminated is not None:
            self._terminated(job, request)
            return
        logger.error("task %s[%s] lost: %r", job.name, job.id, exc)
        # DESIGN.md's table: a hard time limit is a FAILURE whatever the ack policy; a lost
        # child requeues only with acks_late + reject_on_worker_lost, and only
        # task_max_redeliveries times, so a poison message cannot loop forever.
        # Never started (children kept dying reading it: job.start_failures) is a poison
        # message already retried by the pool: a FAILURE too.
        requeue = (started and request.acks_late and request.task.reject_on_worker_lost
                   and not isinstance(exc, TimeLimitExceeded))
        if requeue:
            count = int(request.msg.headers.get("redelivered_count") or 0)
            limit = self.app.conf.task_max_redeliveries
            if count < limit:
                run_hooks(self.app.hooks.task_lost, request.id, request.name, exc, True)
                self._redeliver(request, count + 1)
                self.feed_pool()
                return
            exc = WorkerLostError(f"{exc}; given up after {count} redeliveries "
                                  f"(task_max_redeliveries={limit})")
        run_hooks(self.app.hooks.task_lost, request.id, request.name, exc, False)
        self.events.task("task-failed", uuid=job.id, exception=repr(exc), traceback=None)
        lost = exc
        self._store_then_ack(request, states.FAILURE, lambda: self.app.backend.mark_as_failure(
            job.id, lost, request=request.msg))
        self.feed_pool()

    def _terminated(self, job: Job, request: Request) -> None:
        """The child we signalled for revoke(terminate=True) died: REVOKED ``terminated``
        and acked, never requeued, as Celery's worker does (acks_late or not)."""
        logger.info("task %s[%s] terminated by revoke (signal %d)", job.name, job.id,
                    request.terminated)
        self.events.task("task-revoked", uuid=job.id, terminated=True,
                         signum=request.terminated, expired=False)
        run_hooks(self.app.hooks.task_revoked, request)
        self._store_then_ack(request, states.REVOKED, lambda: self.app.backend.mark_as_revoked(
            job.id, "terminated", request=request.msg))
        self.feed_pool()

    def _store_then_ack(self, request: Request, state: str, store: Callable[[], Any]) -> None:
        """Store ``state`` off the loop, then ack on the loop: the broker forgets the message
        only once its end state is stored (DESIGN.md's table). A full lane (the backend has
        been stalled for a long while) acks without the state: the table forbids a rerun
        more than a missing state; the log says so."""

        def then(outcome: Outcome) -> None:
            if not outcome.ok:
                logger.warning("could not store %s of %s[%s]: %r", state, request.name,
                               request.id, outcome.error)
            self.consumer.ack(request)

        if not self.offload_results.submit(f"storing {state} of {request.name}[{request.id}]",
                                           store, then):
            logger.error("task %s[%s] ends %s without a stored state: the result backend is "
                         "not keeping up", request.name, request.id, state)
            self.consumer.ack(request)

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

        if not self._publish_copy(request, msg, f"republishing lost task {request.id}", then):
            self.consumer.reject(request, requeue=True)

    def _publish_copy(self, request: Request, msg: TaskMessage, what: str,
                      then: Callable[[Outcome], None]) -> bool:
        """Publish ``msg`` where ``request`` came from, off the loop; False if refused."""
        info = request.message.delivery_info or {}

        def publish() -> None:
            self.app.publish_message(
                msg, queue=info.get("routing_key") or None,
                exchange=info.get("exchange"), routing_key=info.get("routing_key"),
                retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2},
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
        if request.settled_reason is not None:  # its lease was lost (on_leases_lost)
            self.consumer.drop(request)
            return
        if self._gave_back_orphan(request):
            return
        if self.stopping and request.acknowledged:
            self._hand_on_acked(request)
        elif self.stopping:
            self.consumer.reject(request, requeue=True)
        else:
            self.ready.appendleft(request)
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
        if terminate:
            terminate_job = getattr(self.pool, "terminate_job", None)
            for job in list(self.dispatched):
                if job.id in wanted:
                    if terminate_job is None:
                        logger.warning("revoke(terminate=True) of %s: the %s pool cannot "
                                       "terminate a running task", job.id, self.pool_kind)
                    elif job.started_at is not None:
                        # Its child's death is then REVOKED "terminated" (on_job_lost); one
                        # not started yet is discarded as revoked when it comes back.
                        self.dispatched[job].terminated = int(signum)
                        terminate_job(job, signum)
        if self.statedb is not None:
            self.statedb.changed()  # written within StateDB.SAVE_INTERVAL, off the loop

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
        size = getattr(self.pool, "size", None)
        return int(size() if callable(size) else self.pool.concurrency)

    def send_heartbeat(self) -> None:
        self.events.heartbeat()

