"""A worker that leaks leases, to prove ``leases-released`` can fail (``--worker-cmd``).

``python leaky_worker.py N``: consumes the cell's queue on taskq's Redis lease transport, runs
the stress workload's tasks one at a time (no prefetch limit: the unacked ones hold no slot),
and never acks every N-th message although its task ran to the end: its lease stays in Redis
after the worker is stopped (issue 13 #5's symptom).
"""

from __future__ import annotations

import sys
from typing import Any

from cell_worker import CellWorker
from kombu import Connection

from taskq.transports.redis import TRANSPORT_ALIAS


def main(every: int) -> None:
    cell = CellWorker()

    def on_message(seen: int, body: object, message: Any) -> None:
        cell.run(body, message)
        if seen % every:
            message.ack()

    cell.consume(Connection(cell.url, transport=TRANSPORT_ALIAS, transport_options=cell.options),
                 on_message, prefetch_count=0)


if __name__ == "__main__":
    main(int(sys.argv[1]))
