"""The worker's own steps, in the order their dependencies give (``taskq graph bootsteps``
prints the graph): the hub, the state file, the pool, mingle, the consumer, remote control,
heartbeats, gossip and the offload lanes. ``steps.py`` defines what a step is."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from taskq.worker.cluster import GossipStep, HeartbeatStep, MingleStep
from taskq.worker.consumer import MAX_BLOCKING
from taskq.worker.steps import Step

if TYPE_CHECKING:
    from taskq.worker.worker import Worker


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
