"""What the hand-made ``--worker-cmd`` workers (broken_worker.py, leaky_worker.py) share: the
cell's queue and settings from its ``TASKQ_*`` variables, running one of the stress
workload's tasks with its ledger lines, and consuming until they are stopped."""

from __future__ import annotations

import faulthandler
import json
import os
import signal
from collections.abc import Callable
from typing import Any

from kombu import Connection, Exchange, Queue

from stress import ledger
from stress.workload import BODIES


class CellWorker:
    def __init__(self) -> None:
        faulthandler.register(signal.SIGUSR2, all_threads=True)  # the deadlock oracle's dump
        name = os.environ["TASKQ_TASK_DEFAULT_QUEUE"]
        self.url = os.environ["TASKQ_BROKER_URL"]
        self.options = json.loads(os.environ.get("TASKQ_BROKER_TRANSPORT_OPTIONS") or "{}")
        self.queue = Queue(name, Exchange(name, "direct"), routing_key=name, durable=True)
        write = ledger.writer("task")
        assert write is not None
        self._write = write

    def run(self, body: object, message: Any) -> None:
        """Run the message's task to the end, with its started and finished ledger lines."""
        task_id, kind = message.headers["id"], message.headers["task"].split(".", 1)[1]
        args = body[0] if isinstance(body, list) else []
        self._write.write("started", task_id, kind=kind)
        BODIES[kind](*args)
        self._write.write("finished", task_id, kind=kind, outcome="ok")

    def consume(self, conn: Connection, on_message: Callable[[int, object, Any], None],
                prefetch_count: int) -> None:
        """Hand every message to ``on_message(seen, body, message)``, ``seen`` counting
        from 1, until the process is stopped."""
        seen = 0

        def counted(body: object, message: Any) -> None:
            nonlocal seen
            seen += 1
            on_message(seen, body, message)

        with conn, conn.Consumer(self.queue, callbacks=[counted],
                                 prefetch_count=prefetch_count):
            while True:
                try:
                    conn.drain_events(timeout=1)
                except TimeoutError:
                    continue
