"""Rate limits on a real worker: the ``rate_limit`` remote command (Celery's, as Flower's
button sends it) and the token bucket holding starts back without holding other tasks."""

from __future__ import annotations

import time

from e2e_support import Broker, StartWorker


def test_rate_limit_command_spaces_out_starts_and_other_tasks_keep_running(
        redis_broker: Broker, worker: StartWorker) -> None:
    w = worker(redis_broker, pool="threads", concurrency=4)
    client = redis_broker.app()
    replies = client.control.rate_limit("appmod.stamp", "30/m", destination=[w.hostname],
                                        reply=True, timeout=5)
    assert replies == [{w.hostname: {"ok": "new rate limit set successfully"}}]
    unknown = client.control.rate_limit("appmod.nope", "1/s", destination=[w.hostname],
                                        reply=True, timeout=5)
    assert unknown == [{w.hostname: {"error": "unknown task 'appmod.nope'"}}]

    sent_at = time.time()
    stamps = [client.send_task("appmod.stamp") for _ in range(3)]
    # other tasks are not held behind the limited ones
    assert client.send_task("appmod.add", (2, 2)).get(timeout=30) == 4
    starts = [r.get(timeout=60) for r in stamps]
    # one start every 2 s: the third no earlier than 4 s after they were sent (a slow
    # machine only makes it later); 0.2 s for clocks of two processes
    assert max(starts) - sent_at >= 4.0 - 0.2, starts

    replies = client.control.rate_limit("appmod.stamp", None, destination=[w.hostname],
                                        reply=True, timeout=5)
    assert replies == [{w.hostname: {"ok": "rate limit disabled successfully"}}]
