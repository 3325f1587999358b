"""``appmod`` (the same app and tasks) plus what the pool-defect tests of issue 13 need
(``taskq worker -A appmod_pool``), each switched on by an APPMOD_* variable of the worker:

- ``APPMOD_OPEN_FDS=N``: the worker holds N more open files from import on, so the pipes and
  sockets it opens later are numbered past 1023 (where ``select()`` fails);
- ``APPMOD_STALL_AFTER_STORE=<path>``: the first link callback a task sends (after its result
  is stored) stalls: the child writes its pid to <path> and sleeps, to be killed there
  (``APPMOD_STALL_AT_SEND=N``: the Nth send stalls, after the ones before it were sent);
- ``APPMOD_STALL_IN_CHORD_DONE=<path>``: the first chord a pool child fires stalls after
  the body was sent, before the chord's counters are dropped (pid to <path>, as above);
- ``APPMOD_STALL_AFTER_CLAIM=<path>``: the first chord part a pool child counts that takes
  the claim to fire the body stalls there, before it tells its parent (pid to <path>);
- ``APPMOD_DIE_READING=<task name>``: a pool child that reads a job of that task exits at
  once, before ``started``: a message that kills every child it is given.
"""

from __future__ import annotations

import os
import resource
import time
from typing import Any

from appmod import _note, app

__all__ = ["app"]

_HELD: list[int] = []

_open = int(os.environ.get("APPMOD_OPEN_FDS") or 0)
if _open:
    _soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if _soft < _open + 512:
        resource.setrlimit(resource.RLIMIT_NOFILE, (_open + 512, _hard))
    _HELD.extend(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC) for _ in range(_open))

def _stall(flag: str) -> None:
    """Write this process's pid to ``flag`` (atomically) and wait there to be killed."""
    with open(f"{flag}.tmp", "w") as fh:
        fh.write(str(os.getpid()))
    os.rename(f"{flag}.tmp", flag)
    time.sleep(120)  # the test SIGKILLs this child as soon as the flag appears


_stall_flag = os.environ.get("APPMOD_STALL_AFTER_STORE")
if _stall_flag:
    _send_task = app.send_task

    _stall_at = int(os.environ.get("APPMOD_STALL_AT_SEND") or 1)
    _sends = [0]

    def _stalling_send_task(*args: Any, **kwargs: Any) -> Any:
        if not os.path.exists(_stall_flag):
            _sends[0] += 1
        if not os.path.exists(_stall_flag) and _sends[0] >= _stall_at:
            _stall(_stall_flag)
        return _send_task(*args, **kwargs)

    app.send_task = _stalling_send_task  # type: ignore[method-assign]

_chord_done_flag = os.environ.get("APPMOD_STALL_IN_CHORD_DONE")
if _chord_done_flag:
    def _stall_in_chord_done() -> None:  # in the pool children only
        backend_type = type(app.backend)
        chord_done = backend_type.chord_done

        def stalling(self: Any, join: Any) -> None:
            if not os.path.exists(_chord_done_flag):
                _stall(_chord_done_flag)
            chord_done(self, join)

        backend_type.chord_done = stalling  # type: ignore[method-assign]

    app.hooks.worker_process_init.append(_stall_in_chord_done)

_claim_flag = os.environ.get("APPMOD_STALL_AFTER_CLAIM")
if _claim_flag:
    def _stall_after_claim() -> None:  # in the pool children only
        backend_type = type(app.backend)
        part_return = backend_type.chord_part_return

        def stalling(self: Any, *args: Any, **kwargs: Any) -> Any:
            join = part_return(self, *args, **kwargs)
            if join is not None and not os.path.exists(_claim_flag):
                _stall(_claim_flag)
            return join

        backend_type.chord_part_return = stalling  # type: ignore[method-assign]

    app.hooks.worker_process_init.append(_stall_after_claim)

_unreadable = os.environ.get("APPMOD_DIE_READING")
if _unreadable:
    def _die_reading() -> None:
        from taskq.pool import ipc

        next_frame = ipc.JobInbox.next

        def next(self: ipc.JobInbox) -> Any:
            frame = next_frame(self)
            if frame is not None and frame[2].task == _unreadable:
                os._exit(3)
            return frame

        ipc.JobInbox.next = next  # type: ignore[method-assign]

    app.hooks.worker_process_init.append(_die_reading)


@app.task(name="appmod_pool.unreadable")
def unreadable() -> str:
    return "ran"


@app.task(name="appmod_pool.tracked_sleeper", bind=True, track_started=True)
def tracked_sleeper(self: Any, seconds: float, ledger: str | None = None) -> str:
    _note(ledger, f"start {self.request.id} {os.getpid()} {time.time():.6f}")
    time.sleep(seconds)
    return "tracked"
