"""A ``BrokerConsumer`` on its own loop, driven by a test until it connects (no worker)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from taskq import TaskQ
from taskq.worker.consumer import BrokerConsumer, queues_for
from taskq.worker.loop import Loop


@dataclass
class LoneConsumer:
    app: TaskQ
    loop: Loop = field(default_factory=Loop)
    connected: list[Any] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    consumer: BrokerConsumer = field(init=False)

    def __post_init__(self) -> None:
        self.consumer = BrokerConsumer(
            self.app, self.loop, queues=queues_for(self.app, None, None), prefetch=1,
            on_message=lambda message: None, on_connected=self.connected.append,
            on_lost=self.lost.append, on_fatal=lambda reason: pytest.fail(reason))

    def connect(self, timeout: float = 30) -> BrokerConsumer:
        """Start consuming and run the loop until the consumer is connected."""
        self.consumer.start()
        iterations = self.loop.iterate_handling(lambda exc: False)
        deadline = time.monotonic() + timeout
        while not self.connected:
            assert time.monotonic() < deadline, "the consumer never connected"
            next(iterations)
        return self.consumer

    def close(self) -> None:
        self.consumer.close()
        self.loop.close()
        self.app.close()
