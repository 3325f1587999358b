"""The worker among its neighbours: events, heartbeats, mingle and gossip.

- Events: worker-online/offline/heartbeat always (heartbeats every 2 s); task events when
  ``worker_send_task_events`` (``-E``) or ``enable_events`` says so.
- Mingle: at start, ask the other workers for their revoked ids and clock. The worker
  consumes meanwhile but starts no task until the answers are in (``Worker.mingling``);
  on Redis it knows how many answers to wait for, elsewhere it waits 1 s for them.
- Gossip: follow the neighbours' heartbeats; log when one goes missing; sync the clock.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from kombu import Consumer, Queue

from taskq import __version__
from taskq.compat import broadcast_until, fanout_subscribers
from taskq.events.dispatcher import SW_IDENT, EventDispatcher, event_exchange
from taskq.events.state import State
from taskq.worker.consumer import connect_once
from taskq.worker.steps import Step

if TYPE_CHECKING:
    from kombu import Connection, Message

    from taskq.worker.state import RevokedSet
    from taskq.worker.worker import Worker

logger = logging.getLogger("taskq.worker.cluster")

HEARTBEAT_FREQ = 2.0


def worker_fields() -> dict[str, Any]:
    return {"freq": HEARTBEAT_FREQ, "sw_ident": SW_IDENT, "sw_ver": __version__,
            "sw_sys": platform.system()}


class Events:
    """The worker's event dispatcher, rebuilt on every broker connection."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.dispatcher: EventDispatcher | None = None
        self.online_sent = False

    def attach(self, conn: Connection) -> None:
        self.dispatcher = EventDispatcher(conn, self.worker.hostname, self.worker.app.clock,
                                          on_error=self._send_failed)
        if not self.online_sent:
            self.online_sent = bool(self.send("worker-online", **worker_fields()))

    def _send_failed(self, exc: BaseException) -> None:
        """An event could not go out on the worker's broker connection: if that is a
        connection error, the connection is dead. Send no more events on it (each attempt
        would wait for its write or channel timeout on the loop) and have the consumer
        reconnect, from the next loop iteration, unless it reconnected meanwhile."""
        consumer = self.worker.consumer
        if not consumer.is_connection_error(exc):
            return
        self.dispatcher = None
        generation = consumer.generation

        def lost() -> None:
            if consumer.generation == generation:
                consumer.on_connection_error(exc)

        self.worker.loop.call_soon(lost)

    def detach(self) -> None:
        self.dispatcher = None

    def send(self, type_: str, **fields: Any) -> dict[str, Any] | None:
        if self.dispatcher is None:
            return None
        return self.dispatcher.send(type_, **fields)

    def task(self, type_: str, task_name: str, **fields: Any) -> None:
        """A task event, unless task events are off or the task says ``send_events=False``."""
        if not self.worker.task_events:
            return
        task = self.worker.app.tasks.get(task_name)
        if task is None or task.send_events:
            self.send(type_, **fields)

    def heartbeat(self) -> None:
        self.send("worker-heartbeat", active=len(self.worker.dispatched),
                  processed=sum(self.worker.completed_by_name.values()),
                  loadavg=list(os.getloadavg()), **worker_fields())


class HeartbeatStep(Step):
    name = "heartbeat"
    requires = ("consumer",)

    def start(self, worker: Worker) -> None:
        self._entry = worker.loop.hub.call_repeatedly(HEARTBEAT_FREQ, worker.send_heartbeat)

    def stop(self, worker: Worker) -> None:
        self._entry.cancel()
        worker.events.send("worker-offline", **worker_fields())


def merge_revoked(revoked: RevokedSet, received: Any) -> int:
    """Add ids revoked on another worker; returns how many were read.

    Celery 5.7 workers send a list of ids, older ones (and taskq) a mapping of id to stamp:
    both are read. Stamps are dropped and the ids are stamped with the local clock, as Celery
    does: another host's clock is not comparable with ours. Anything else is ignored with a
    log line (a neighbour's odd reply must not stop this worker from starting)."""
    if not received:
        return 0
    if isinstance(received, dict):
        ids: list[Any] = list(received)
    elif isinstance(received, list | tuple):
        ids = list(received)
    else:
        logger.warning("mingle: ignored revoked ids in an unknown shape (%s)",
                       type(received).__name__)
        return 0
    ids = [str(task_id) for task_id in ids if isinstance(task_id, str | bytes)]
    revoked.update(ids)
    return len(ids)


def pidbox_listeners(conn: Connection, exchange: str) -> int | None:
    """How many connections receive broadcasts on the fanout ``exchange`` now, where the
    broker can say (Redis: ``compat.fanout_subscribers``). None where it cannot (AMQP,
    SQLite, Sentinel's two topics): mingle then waits its full timeout."""
    return fanout_subscribers(conn.default_channel, exchange)


def ask_hello(mailbox: Any, hostname: str, arguments: dict[str, Any], expected: int | None,
              timeout: float) -> list[dict[str, Any]]:
    """Broadcast mingle's ``hello``; the replies, collected until ``expected`` other nodes
    answered (a reply from this node itself does not count), or until no reply came for
    ``timeout`` seconds."""
    others: set[str] = set()

    def enough(body: Any) -> bool:
        if not isinstance(body, dict):
            return False
        others.update(node for node in body if node != hostname)
        return expected is not None and len(others) >= expected

    replies = broadcast_until(mailbox, "hello", enough, arguments=arguments, timeout=timeout)
    return [body for body in replies if isinstance(body, dict)]


class MingleStep(Step):
    """Ask the neighbours for revoked ids and the clock, without holding up consuming.

    A task revoked on another worker before this one started must never run here, so no
    task starts until the answers are in (``worker.mingling`` holds ``feed_pool``; the
    revoked ids are checked when a request leaves the ready queue). Consuming, the pool
    and the other steps go ahead meanwhile. On Redis the broker says how many workers
    listen (``pidbox_listeners``): none, and nothing is asked; some, and the wait ends with
    the last of their answers. Elsewhere the wait ends when no answer came for ``TIMEOUT``
    seconds, as before."""

    name = "mingle"
    requires = ("state",)
    TIMEOUT = 1.0

    def start(self, worker: Worker) -> None:
        if not worker.mingle:
            return
        # Counted now, before this worker's own control node listens (it attaches when the
        # consumer connects), so the count is of the neighbours alone.
        conn = worker.app.connection()
        try:
            conn.connect_timeout = 2  # seconds
            connect_once(conn)
            mailbox = worker.control.mailbox(conn)
            expected = pidbox_listeners(conn, mailbox.exchange.name)
        except Exception as exc:
            conn.release()
            logger.warning("mingle skipped: %r", exc)
            return
        if expected == 0:
            conn.release()
            logger.info("mingle: no other workers answered (none listening)")
            return
        worker.mingling = True
        arguments = {"from_node": worker.hostname, "revoked": worker.revoked.as_dict()}
        threading.Thread(target=self._ask, args=(worker, conn, mailbox, arguments, expected),
                         name="taskq-mingle", daemon=True).start()

    def _ask(self, worker: Worker, conn: Connection, mailbox: Any, arguments: dict[str, Any],
             expected: int | None) -> None:
        """On the mingle thread: ask, then hand the answers to the loop."""
        replies: list[dict[str, Any]] = []
        error: BaseException | None = None
        try:
            replies = ask_hello(mailbox, worker.hostname, arguments, expected, self.TIMEOUT)
        except Exception as exc:
            error = exc
        finally:
            try:
                conn.release()
            except Exception:
                logger.debug("closing mingle's connection failed", exc_info=True)
        worker.loop.post(self._answered, worker, replies, error)

    def _answered(self, worker: Worker, replies: list[dict[str, Any]],
                  error: BaseException | None) -> None:
        """On the loop: take the neighbours' revoked ids and clock, then let tasks start."""
        try:
            if error is not None:
                logger.warning("mingle skipped: %r", error)
            else:
                merge_answers(worker, replies)
        finally:
            worker.mingling = False
            worker.feed_pool()


def merge_answers(worker: Worker, replies: list[dict[str, Any]]) -> None:
    neighbours = []
    for reply in replies:
        for node, answer in reply.items():
            if node == worker.hostname or not isinstance(answer, dict):
                continue
            neighbours.append(node)
            merge_revoked(worker.revoked, answer.get("revoked"))
            if isinstance(answer.get("clock"), int):
                worker.app.clock.adjust(answer["clock"])
    if neighbours:
        logger.info("mingle: synced with %s", ", ".join(sorted(neighbours)))
    else:
        logger.info("mingle: no other workers answered")


class Gossip:
    """Follow the neighbours' worker events on the worker's own connection."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.state = State()
        self.gone: set[str] = set()
        self.queue_name = f"taskq.gossip.{uuid.uuid4()}"

    def attach(self, conn: Connection) -> None:
        queue = Queue(self.queue_name, exchange=event_exchange(conn), routing_key="worker.#",
                      auto_delete=True, durable=False, expires=60.0, message_ttl=10.0)
        consumer = Consumer(conn.channel(), queues=[queue], callbacks=[self._on_event],
                            no_ack=True, accept=["json"])
        consumer.consume()

    def _on_event(self, body: Any, message: Message) -> None:
        if not isinstance(body, dict) or body.get("hostname") == self.worker.hostname:
            return
        if not str(body.get("type", "")).startswith("worker-"):
            return  # on Redis the events exchange is fanout: task events arrive here too
        body = dict(body)
        body["local_received"] = time.time()
        if isinstance(body.get("clock"), int):
            self.worker.app.clock.adjust(body["clock"])
        hostname = str(body.get("hostname"))
        if hostname in self.gone and body.get("type") != "worker-offline":
            logger.info("neighbour %s is back", hostname)
            self.gone.discard(hostname)
        self.state.event(body)

    def check(self) -> None:
        now = time.time()
        for info in self.state.workers.values():
            if info.hostname in self.gone or info.alive(now):
                continue
            self.gone.add(info.hostname)
            if info.offline:
                logger.info("neighbour %s went offline", info.hostname)
            else:
                logger.warning("neighbour %s missed its heartbeats: considered gone",
                               info.hostname)

    def neighbours(self) -> list[str]:
        return sorted(w.hostname for w in self.state.workers.values() if w.alive(time.time()))


class GossipStep(Step):
    name = "gossip"
    requires = ("consumer",)

    def start(self, worker: Worker) -> None:
        self._entry = (worker.loop.hub.call_repeatedly(HEARTBEAT_FREQ / 2, worker.gossip.check)
                       if worker.gossip is not None else None)

    def stop(self, worker: Worker) -> None:
        if self._entry is not None:
            self._entry.cancel()
