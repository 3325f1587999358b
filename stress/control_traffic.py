"""The ``control`` fault: a monitor's remote-control traffic to the cell's workers.

In production a worker is rarely left alone: Flower, dashboards and health checks ping it
and ask for its stats and tasks every few seconds, and those commands arrive whatever the
broker is doing. Each one makes the worker's main process publish a reply from its event
loop, which is where a reply that waits (for a publisher confirm, for a reconnect) stops
everything else the loop does: noticing lost children, renewing leases, sending acks.

Each injection asks the cell's workers, as a monitor would, over a connection of its own
straight to the broker (never through the cell's fault proxy: the monitor is not under
test), for ``ping`` and then ``stats``, waiting up to ``timeout`` for the replies. The
journal records how many answered; the oracles judge the worker (its loop lag, progress,
the delivery table), not the replies: a worker whose link is faulted may rightly miss one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kombu import Connection

from chaos import Injector, Journal, Outcome
from taskq.compat import broadcast
from taskq.control import make_mailbox

__all__ = ["COMMANDS", "ControlTraffic"]

COMMANDS = ("ping", "stats")  # what Flower asks first of every worker it shows


class ControlTraffic(Injector):
    """Broadcast ``COMMANDS`` to ``nodes()`` on the broker at ``url`` and count the replies."""

    kind = "control"

    def __init__(self, url: str, nodes: Callable[[], Sequence[str]], *,
                 transport_options: Mapping[str, Any] | None = None, timeout: float = 1.0,
                 journal: Journal | None = None) -> None:
        super().__init__(journal=journal)
        self.url = url
        self.nodes = nodes
        self.transport_options = dict(transport_options or {})
        self.timeout = timeout

    def describe(self) -> str:
        return ",".join(self.nodes()) or "no worker"

    def apply(self) -> Outcome:
        nodes = list(self.nodes())
        if not nodes:
            return Outcome("no-target", "no worker")
        answered: dict[str, int] = {}
        with Connection(self.url, transport_options=self.transport_options,
                        connect_timeout=self.timeout) as conn:
            mailbox = make_mailbox()(conn)
            for command in COMMANDS:
                replies = broadcast(mailbox, command, reply=True, timeout=self.timeout,
                                    destination=nodes, limit=len(nodes))  # one reply a worker
                answered[command] = len(replies or ())
        return Outcome("ok", ",".join(nodes), params={"commands": list(COMMANDS)},
                       detail={"replies": answered})

