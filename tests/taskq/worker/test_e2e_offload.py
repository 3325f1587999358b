"""The main loop never waits on a stalled result backend (DESIGN.md: every blocking call in
the main process is bounded; hard time limits, heartbeats and lease renewal run on the loop).

The worker stores FAILURE for a task whose child it killed at the hard time limit, or whose
child died. With the result backend black-holed (chaos' fault proxy accepts and never
forwards) that write blocked the loop for the Redis socket timeout and its retry (10 s and
more per task); now it runs on an offload lane and the ack follows once it is stored.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from e2e_support import Broker, Ledger, StartWorker, WorkerProcess, wait_until

from taskq import states
from taskq.errors import TimeLimitExceeded, WorkerLostError

STALL = 6.0  # s the black hole lasts after the last lost task: stores wait that long
LAG_BOUND = 1.0  # s: far below the >= 10 s a blocking backend write causes; a loaded
#                  2-core machine shows a few hundred ms at worst


@pytest.fixture
def backend_proxy() -> Iterator[Any]:
    from chaos.proxy import FaultProxy

    with FaultProxy("127.0.0.1:6379") as proxy:
        yield proxy


def _loop_lag(client: Any, w: WorkerProcess) -> dict[str, float]:
    def answer() -> dict[str, float] | None:
        replies = client.control.broadcast("stats", destination=[w.hostname], reply=True,
                                           timeout=2.0) or []
        for reply in replies:
            if w.hostname in reply:
                return dict(reply[w.hostname]["loop_lag"])
        return None

    return wait_until(answer, 30, f"stats from {w.hostname}")


@pytest.mark.parametrize("broker", ["amqp"], indirect=True)
def test_stalled_result_backend_does_not_stall_the_loop(
        broker: Broker, worker: StartWorker, ledger: Ledger, backend_proxy: Any) -> None:
    # The broker is reached directly; only the worker's result backend goes through the proxy.
    w = worker(broker, pool="prefork", concurrency=2, env={
        "TASKQ_RESULT_BACKEND": backend_proxy.url("redis", "/0")})
    client = broker.app()  # reads results from Redis directly
    assert client.send_task("appmod.add", (1, 2)).get(timeout=30) == 3
    before = _loop_lag(client, w)
    offset = len(w.log())
    hole = backend_proxy.blackhole()

    limited = [client.send_task("appmod.sleeper", (60, str(ledger)), time_limit=1)
               for _ in range(3)]
    killed = [client.send_task("appmod.sleeper", (60, str(ledger))) for _ in range(2)]
    for result in killed:
        [(pid, _)] = ledger.wait_started(result.id, timeout=60)
        os.kill(pid, signal.SIGKILL)
    for result in limited + killed:
        w.wait_log(rf"\[{result.id}\] lost: ", 120, after=offset)
    # The backend stays a black hole for STALL seconds more (the stores wait on it), while
    # the test asks the worker's loop how far behind its timers it has been.
    window_end = time.monotonic() + STALL
    during = _loop_lag(client, w)
    while time.monotonic() < window_end:
        during = _loop_lag(client, w)
    lagged = re.findall(r"event loop lagged ([0-9.]+) s", w.log()[offset:])
    print(f"loop lag while the result backend was black-holed: max {during['max']:.3f} s "
          f"(before: {before['max']:.3f} s); lag warnings: {lagged}")
    assert during["max"] < LAG_BOUND, during
    assert not lagged

    # Once the backend answers again, every end state is stored (then acked).
    backend_proxy.remove(hole)
    backend_proxy.cut()  # connections opened during the hole never got an answer
    for result in limited:
        wait_until(lambda r=result: r.state == states.FAILURE, 120, f"FAILURE of {result.id}")
        assert isinstance(result.result, TimeLimitExceeded)
    for result in killed:
        wait_until(lambda r=result: r.state == states.FAILURE, 120, f"FAILURE of {result.id}")
        assert isinstance(result.result, WorkerLostError)
    # The stall was real: a store waited on the black hole, off the loop.
    stalled = w.wait_log(r"storing FAILURE of .* took ([0-9.]+) s \(off the loop", 30,
                         after=offset)
    print(f"a store waited {stalled.group(1)} s on the black hole, off the loop")
    assert client.send_task("appmod.add", (2, 2)).get(timeout=60) == 4
    assert all(len(ledger.starts(r.id)) == 1 for r in limited + killed)
