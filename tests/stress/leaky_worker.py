"""A worker that leaks leases, to prove ``leases-released`` can fail (``--worker-cmd``).

``python leaky_worker.py N``: consumes the cell's queue on taskq's Redis lease transport, runs
the stress workload's tasks one at a time (no prefetch limit: the unacked ones hold no slot),
and never acks every N-th message although its task ran to the end: its lease stays in Redis
after the worker is stopped (issue 13 #5's symptom).
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys

from kombu import Connection, Exchange, Queue

from stress import ledger
from stress.workload import BODIES
from taskq.transports.redis import TRANSPORT_ALIAS


def main(every: int) -> None:
    faulthandler.register(signal.SIGUSR2, all_threads=True)  # the deadlock oracle's stack dump
    name = os.environ["TASKQ_TASK_DEFAULT_QUEUE"]
    options = json.loads(os.environ.get("TASKQ_BROKER_TRANSPORT_OPTIONS") or "{}")
    queue = Queue(name, Exchange(name, "direct"), routing_key=name, durable=True)
    write = ledger.writer("task")
    assert write is not None
    seen = 0

    def on_message(body: object, message: object) -> None:
        nonlocal seen
        seen += 1
        headers = message.headers  # type: ignore[attr-defined]
        task_id, kind = headers["id"], headers["task"].split(".", 1)[1]
        args = body[0] if isinstance(body, list) else []  # type: ignore[index]
        write.write("started", task_id, kind=kind)
        BODIES[kind](*args)
        write.write("finished", task_id, kind=kind, outcome="ok")
        if seen % every:
            message.ack()  # type: ignore[attr-defined]

    conn = Connection(os.environ["TASKQ_BROKER_URL"], transport=TRANSPORT_ALIAS,
                      transport_options=options)
    with conn, conn.Consumer(queue, callbacks=[on_message], prefetch_count=0):
        while True:
            try:
                conn.drain_events(timeout=1)
            except TimeoutError:
                continue


if __name__ == "__main__":
    main(int(sys.argv[1]))
