"""Deliberately broken workers, to prove the oracles can fail (``--worker-cmd``).

``python broken_worker.py drop N``: runs the stress workload's tasks one at a time from the
cell's queue (settings from the cell's ``TASKQ_*`` variables) and silently drops every N-th
message: acked, never run.

``python broken_worker.py stall N``: runs N tasks, then keeps holding the messages it has
and never makes progress again.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import threading

from kombu import Connection, Exchange, Queue

from stress import ledger
from stress.workload import BODIES


def main(mode: str, every: int) -> None:
    faulthandler.register(signal.SIGUSR2, all_threads=True)  # the deadlock oracle's stack dump
    name = os.environ["TASKQ_TASK_DEFAULT_QUEUE"]
    options = json.loads(os.environ.get("TASKQ_BROKER_TRANSPORT_OPTIONS") or "{}")
    options = {k: v for k, v in options.items()
               if k in ("global_keyprefix", "visibility_timeout")}
    queue = Queue(name, Exchange(name, "direct"), routing_key=name, durable=True)
    write = ledger.writer("task")
    assert write is not None
    seen = 0

    def on_message(body: object, message: object) -> None:
        nonlocal seen
        seen += 1
        headers = message.headers  # type: ignore[attr-defined]
        task_id, kind = headers["id"], headers["task"].split(".", 1)[1]
        if mode == "stall" and seen > every:
            threading.Event().wait()  # hold this message (and the prefetched ones) forever
        if mode == "drop" and seen % every == 0:
            message.ack()  # type: ignore[attr-defined]
            return
        args = body[0] if isinstance(body, list) else []  # type: ignore[index]
        write.write("started", task_id, kind=kind)
        BODIES[kind](*args)
        write.write("finished", task_id, kind=kind, outcome="ok")
        message.ack()  # type: ignore[attr-defined]

    conn = Connection(os.environ["TASKQ_BROKER_URL"], transport_options=options)
    with conn, conn.Consumer(queue, callbacks=[on_message], prefetch_count=4):
        while True:
            try:
                conn.drain_events(timeout=1)
            except TimeoutError:
                continue


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
