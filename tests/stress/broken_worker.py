"""Deliberately broken workers, to prove the oracles can fail (``--worker-cmd``).

``python broken_worker.py drop N``: runs the stress workload's tasks one at a time from the
cell's queue (settings from the cell's ``TASKQ_*`` variables) and silently drops every N-th
message: acked, never run.

``python broken_worker.py stall N``: runs N tasks, then keeps holding the messages it has
and never makes progress again.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from cell_worker import CellWorker
from kombu import Connection


def main(mode: str, every: int) -> None:
    cell = CellWorker()
    options = {k: v for k, v in cell.options.items()
               if k in ("global_keyprefix", "visibility_timeout")}

    def on_message(seen: int, body: object, message: Any) -> None:
        if mode == "stall" and seen > every:
            threading.Event().wait()  # hold this message (and the prefetched ones) forever
        if mode == "drop" and seen % every == 0:
            message.ack()
            return
        cell.run(body, message)
        message.ack()

    cell.consume(Connection(cell.url, transport_options=options), on_message, prefetch_count=4)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
