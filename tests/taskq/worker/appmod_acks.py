"""``appmod`` plus what the early-ack test of issue 13 #7 needs (``taskq worker -A
appmod_acks``), switched on by APPMOD_* variables of the worker:

- ``APPMOD_KILL_MAIN_READING=<task name>``: a pool child that reads a job of that task
  SIGKILLs the worker's main process (its parent) before it starts the job, outlives it,
  and notes in ``APPMOD_LEDGER`` whether the broker still holds the job's message (a Redis
  lease in ``APPMOD_LEASES_KEY``) now that nobody can ack it: ``held <task id> <count>``;
- ``APPMOD_LOSE_ACK_REPLY=1``: the worker's first ack script on Redis runs, and then its
  reply is lost with the connection (raised as the ConnectionError redis-py raises for it),
  as when a cut lands between the script and its answer; whether the worker waited for it
  (``Channel._settle``) or read it on the loop (``AckPipe``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from typing import Any

from appmod import _note, app

__all__ = ["app"]

_PR_SET_PDEATHSIG = 1

_kill_reading = os.environ.get("APPMOD_KILL_MAIN_READING")
if _kill_reading:
    def _kill_main_reading() -> None:
        from taskq.pool import ipc

        next_frame = ipc.JobInbox.next

        def next(self: ipc.JobInbox) -> Any:
            frame = next_frame(self)
            if frame is not None and frame[2].task == _kill_reading:
                _kill_parent_and_look(frame[2].id)
            return frame

        ipc.JobInbox.next = next  # type: ignore[method-assign]

    app.hooks.worker_process_init.append(_kill_main_reading)


if os.environ.get("APPMOD_LOSE_ACK_REPLY"):
    def _lose_first_ack_reply() -> None:
        import redis

        from taskq.transports import redis as transport

        settle = transport.Channel._settle
        lost: list[str] = []

        def _settle(self: transport.Channel, mode: str, held: Any) -> int:
            done = settle(self, mode, held)
            if mode == "ack" and not lost:
                lost.append(mode)
                raise redis.ConnectionError("the ack's reply was lost (APPMOD_LOSE_ACK_REPLY)")
            return done

        transport.Channel._settle = _settle  # type: ignore[method-assign]

        from taskq.transports import redis_acks

        read_answer = redis_acks.AckPipe._read_answer

        def _read_answer(self: redis_acks.AckPipe, conn: Any) -> Any:
            flags = read_answer(self, conn)  # the script ran and answered: now lose that
            if not lost:
                lost.append("ack")
                raise redis.ConnectionError("the ack's reply was lost (APPMOD_LOSE_ACK_REPLY)")
            return flags

        redis_acks.AckPipe._read_answer = _read_answer  # type: ignore[method-assign]

    _lose_first_ack_reply()  # in the main process: it sends the acks


def _kill_parent_and_look(task_id: str) -> None:
    import redis

    # Outlive the parent (the pool's children die with it) just long enough to look.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, 0, 0, 0, 0)
    parent = os.getppid()
    os.kill(parent, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.01)
    client = redis.Redis.from_url(os.environ["APPMOD_REDIS_URL"], socket_timeout=5)
    try:
        held = int(client.zcard(os.environ["APPMOD_LEASES_KEY"]))
    finally:
        client.close()
    _note(os.environ["APPMOD_LEDGER"], f"held {task_id} {held}")


@app.task(name="appmod_acks.early", bind=True)
def early(self: Any, ledger: str) -> str:
    _note(ledger, f"start {self.request.id} {os.getpid()} {time.time():.6f}")
    return "ran"
