"""Real workers for tests: in a thread (solo, threads pools) or as a subprocess (prefork).

Both start only when the worker answers a ping, and both stop within a bound: a thread worker
stuck in a task fails the test with the task's name and a stack dump and is abandoned (it is a
daemon thread, so the session still ends); a subprocess worker gets SIGTERM, then its whole
process group is killed after ``kill_after`` seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from taskq.errors import TaskqError

if TYPE_CHECKING:
    from taskq.app import TaskQ
    from taskq.worker import Worker


class WorkerStuck(TaskqError):
    """A test worker did not stop in time; the message names what it was running."""


def _wait_ping(app: TaskQ, hostname: str, timeout: float, alive: Any = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise TaskqError(f"test worker {hostname} exited before answering a ping")
        try:
            replies = app.control.ping(destination=[hostname], timeout=0.5)
        except Exception as exc:  # broker still coming up
            last = exc
            time.sleep(0.1)
            continue
        if any(hostname in reply for reply in replies):
            return
    raise TaskqError(f"test worker {hostname} did not answer a ping within {timeout} s"
                     + (f" (last error: {last!r})" if last else ""))


class ThreadWorker:
    """A worker running ``app`` in a daemon thread of this process."""

    def __init__(self, app: TaskQ, *, pool: str = "solo", concurrency: int = 1,
                 hostname: str, queues: Sequence[str] | None = None,
                 ping_timeout: float = 10.0, stop_timeout: float = 10.0) -> None:
        from taskq.worker import Worker

        self.app = app
        self.hostname = hostname
        self.stop_timeout = stop_timeout
        self.ping_timeout = ping_timeout
        self.worker: Worker = Worker(app, pool=pool, concurrency=concurrency,
                                     hostname=hostname, queues=queues, install_signals=False,
                                     mingle=False, gossip=False)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"taskq-test-{hostname}",
                                       daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:
            self.error = exc

    def start(self) -> ThreadWorker:
        self.thread.start()
        deadline = time.monotonic() + self.ping_timeout
        while not self.worker.consumer.connected and time.monotonic() < deadline:
            if not self.thread.is_alive():
                break
            time.sleep(0.01)  # the first ping would only time out before this
        _wait_ping(self.app, self.hostname, self.ping_timeout, alive=self.thread.is_alive)
        return self

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        self.worker.loop.post(self.worker.request_stop, True)
        self.thread.join(self.stop_timeout)
        if self.thread.is_alive():
            running = [f"{job.name}[{job.id}]" for job in self.worker.dispatched]
            frame = sys._current_frames().get(self.thread.ident or 0)
            stack = "".join(traceback.format_stack(frame)) if frame is not None else "?"
            raise WorkerStuck(
                f"test worker {self.hostname} did not stop within {self.stop_timeout} s; "
                f"still running: {', '.join(running) or 'nothing (the loop is blocked)'}\n"
                f"its stack:\n{stack}")

    def pids(self) -> list[int]:
        return [os.getpid()]


class SubprocessWorker:
    """``taskq worker -A spec`` in its own process group, configured through TASKQ_*."""

    def __init__(self, app: TaskQ, app_spec: str, *, pool: str = "prefork",
                 concurrency: int = 2, hostname: str, queues: Sequence[str] | None = None,
                 env: Mapping[str, str] | None = None, extra_args: Sequence[str] = (),
                 ping_timeout: float = 30.0, kill_after: float = 10.0) -> None:
        self.app = app
        self.hostname = hostname
        self.ping_timeout = ping_timeout
        self.kill_after = kill_after
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - kept open for the worker
            prefix="taskq-worker-", suffix=".log",
                                               delete=False)
        self.cmd = [sys.executable, "-c", "from taskq.cli import main; main()", "worker",
                    "-A", app_spec, "-P", pool, "-c", str(concurrency), "-n", hostname,
                    "-l", "info", "--without-mingle", "--without-gossip", *extra_args]
        if queues:
            self.cmd += ["-Q", ",".join(queues)]
        self.env = {**os.environ, **(env or {})}
        # The subprocess must import the app from where the tests run, as pytest does.
        paths = [os.getcwd(), *[p for p in sys.path if p and os.path.isdir(p)]]
        self.env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SubprocessWorker:
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=self.log, stderr=self.log,
                                     start_new_session=True)
        proc = self.proc
        try:
            _wait_ping(self.app, self.hostname, self.ping_timeout,
                       alive=lambda: proc.poll() is None)
        except TaskqError as exc:
            self.stop()
            raise TaskqError(f"{exc}\n--- worker log ---\n{self.read_log()}") from None
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def read_log(self, tail: int | None = None) -> str:
        """The worker's log so far; with ``tail``, about its last ``tail`` bytes."""
        with open(self.log.name, "rb") as fh:
            if tail is not None:
                fh.seek(max(0, fh.seek(0, os.SEEK_END) - tail))
            return fh.read().decode("utf-8", errors="replace")

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            self._killpg()
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(self.kill_after)
        except subprocess.TimeoutExpired:
            self._killpg()
            proc.wait(5)
        self._killpg()  # anything the worker left behind in its group

    def _killpg(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def close(self) -> None:
        self.stop()
        self.log.close()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass
