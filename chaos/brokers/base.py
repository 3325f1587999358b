"""What every controllable broker offers, and the local-process machinery they share.

A broker is a context manager with the verbs ``start``, ``stop``, ``restart``, ``crash``
(SIGKILL, no clean shutdown), ``pause`` (SIGSTOP / freezer) and ``resume``. ``start`` and
``resume`` return only once a readiness check (PING, an AMQP handshake) passes, polled
against a deadline; no verb sleeps for a fixed time. Leaving the ``with`` block removes
every process, container and temporary directory the broker made.

:class:`BrokerFault` turns a verb into an injector for a :class:`~chaos.runner.Runner`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from chaos.errors import BrokerError, BrokerNotReady, WaitTimeout
from chaos.injector import Injector, Outcome
from chaos.journal import Journal
from chaos.waiting import wait_until

__all__ = ["Broker", "BrokerFault", "LocalProcessBroker"]


class Broker(ABC):
    """A broker chaos can start, stop, crash, pause and resume."""

    kind: ClassVar[str] = "broker"
    host: str = "127.0.0.1"
    port: int

    def __init__(self, *, journal: Journal | None = None, ready_timeout: float = 30.0) -> None:
        self.journal = journal
        self.ready_timeout = ready_timeout
        self.running = False
        self.paused = False

    @property
    @abstractmethod
    def url(self) -> str:
        """The URL a client connects to (stable across restarts)."""

    @abstractmethod
    def is_ready(self) -> bool:
        """One quick readiness probe (no waiting)."""

    @abstractmethod
    def _start(self) -> None: ...

    @abstractmethod
    def _stop(self, timeout: float) -> None: ...

    @abstractmethod
    def _crash(self) -> None: ...

    @abstractmethod
    def _pause(self) -> None: ...

    @abstractmethod
    def _resume(self) -> None: ...

    @abstractmethod
    def close(self) -> None:
        """Remove everything this broker made (processes, containers, temp dirs)."""

    def _failure(self) -> str | None:
        """Why the broker cannot become ready (it exited, ...), or None to keep waiting."""
        return None

    def wait_ready(self, timeout: float | None = None) -> None:
        """Poll :meth:`is_ready` until it passes or ``timeout`` (default ``ready_timeout``)."""
        limit = self.ready_timeout if timeout is None else timeout

        def ready() -> bool:
            failure = self._failure()
            if failure is not None:
                raise BrokerError(f"{self!r} failed to start: {failure}")
            return self.is_ready()

        try:
            wait_until(ready, limit, max_interval=0.1, what=f"{self!r} to be ready")
        except WaitTimeout as exc:
            raise BrokerNotReady(f"{exc}{self._diagnostics()}") from None

    def _diagnostics(self) -> str:
        return ""

    def _record(self, verb: str, **detail: object) -> None:
        if self.journal is not None:
            self.journal.record(f"broker-{verb}", f"{self.kind} {self.url}", "ok", detail=detail)

    def start(self) -> None:
        """Start (or start again) and wait until ready."""
        if self.running:
            return
        self._start()
        self.running, self.paused = True, False
        self.wait_ready()
        self._record("start")

    def stop(self, timeout: float = 15.0) -> None:
        """Shut down cleanly (a paused broker is resumed first so it can)."""
        if not self.running:
            return
        if self.paused:
            self._resume()
            self.paused = False
        self._stop(timeout)
        self.running = False
        self._record("stop")

    def restart(self) -> None:
        """Stop cleanly, then start on the same port with the same data."""
        self.stop()
        self.start()
        self._record("restart")

    def crash(self) -> None:
        """Kill without a clean shutdown (SIGKILL); :meth:`start` brings it back."""
        if not self.running:
            raise BrokerError(f"cannot crash {self!r}: it is not running")
        self._crash()
        self.running, self.paused = False, False
        self._record("crash")

    def pause(self) -> None:
        """Freeze the broker: connections stay open, nothing answers."""
        if not self.running:
            raise BrokerError(f"cannot pause {self!r}: it is not running")
        if not self.paused:
            self._pause()
            self.paused = True
            self._record("pause")

    def resume(self) -> None:
        """Thaw a paused broker and wait until it answers."""
        if self.paused:
            self._resume()
            self.paused = False
            self.wait_ready()
            self._record("resume")

    def __enter__(self) -> Broker:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url})"


class LocalProcessBroker(Broker):
    """A broker run as a local child process in its own process group and temp dir.

    The process group holds the server and anything it spawns, so crash/pause/resume
    signal all of it; the temp dir (unless one was given) is removed on :meth:`close`.
    """

    def __init__(
        self,
        *,
        directory: str | os.PathLike[str] | None = None,
        journal: Journal | None = None,
        ready_timeout: float = 30.0,
    ) -> None:
        super().__init__(journal=journal, ready_timeout=ready_timeout)
        self._owns_dir = directory is None
        # absolute: the server runs in it (cwd), so a relative path would point inside it
        self.directory = Path(
            directory or tempfile.mkdtemp(prefix=f"taskq-chaos-{self.kind}-")).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log_path = self.directory / f"{self.kind}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @abstractmethod
    def command(self) -> list[str]:
        """The argv that runs the server in the foreground."""

    def environment(self) -> dict[str, str]:
        """The server's environment (default: ours)."""
        return dict(os.environ)

    @property
    def pid(self) -> int | None:
        """The server process's pid while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    def _start(self) -> None:
        with open(self.log_path, "ab") as log:
            try:
                self._proc = subprocess.Popen(
                    self.command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.directory,
                    env=self.environment(),
                    start_new_session=True,
                )
            except OSError as exc:
                raise BrokerError(f"cannot run {self.command()[0]}: {exc}") from exc

    def _failure(self) -> str | None:
        if self._proc is not None and self._proc.poll() is not None:
            return f"exited with status {self._proc.returncode}{self._diagnostics()}"
        return None

    def _diagnostics(self) -> str:
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-15:]
        except OSError:
            return ""
        return "\n--- last lines of " + str(self.log_path) + " ---\n" + "\n".join(tail)

    def _signal_group(self, sig: int) -> None:
        # The leader is our unreaped child, so its pid (and the group id) cannot be reused
        # under us while returncode is None.
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, sig)

    def _stop(self, timeout: float) -> None:
        if self._proc is None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self._proc.wait()
            raise BrokerError(
                f"{self!r} did not stop within {timeout} s of SIGTERM; killed it"
            ) from None
        finally:
            self._reap_group()

    def _reap_group(self) -> None:
        """Kill stragglers in the server's process group (helpers that outlive it)."""
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)

    def _crash(self) -> None:
        self._signal_group(signal.SIGKILL)
        if self._proc is not None:
            self._proc.wait()
        self._reap_group()

    def _pause(self) -> None:
        self._signal_group(signal.SIGSTOP)

    def _resume(self) -> None:
        self._signal_group(signal.SIGCONT)

    def close(self) -> None:
        try:
            if self.running:
                self._signal_group(signal.SIGCONT)
                self.paused = False
                # A BrokerError here means it had to be killed: nothing is left either way.
                with contextlib.suppress(BrokerError):
                    self._stop(timeout=10.0)
                self.running = False
        finally:
            if self._owns_dir:
                shutil.rmtree(self.directory, ignore_errors=True)


class BrokerFault(Injector):
    """A broker verb as an injector: ``"restart"``, ``"crash"`` (then start again after
    ``duration``), ``"stop"`` (then start after ``duration``) or ``"pause"`` (resume after
    ``duration``). The way back runs on a timer thread and is journaled too."""

    kind = "broker"
    ACTIONS = ("restart", "crash", "stop", "pause")

    def __init__(
        self, broker: Broker, action: str, *, duration: float = 1.0, journal: Journal | None = None
    ) -> None:
        if action not in self.ACTIONS:
            raise BrokerError(f"unknown broker action {action!r}; use one of {self.ACTIONS}")
        super().__init__(journal=journal, kind=f"broker-{action}")
        self.broker = broker
        self.action = action
        self.duration = duration
        self._lock = threading.Lock()
        self._pending = False  # the broker is down or paused and the way back is due
        self._timer: threading.Timer | None = None

    def describe(self) -> str:
        return f"{self.broker.kind} {self.broker.url}"

    def apply(self) -> Outcome:
        with self._lock:
            if self._pending:
                return Outcome("no-target", self.describe(), detail={"reason": "still recovering"})
            if self.action == "restart":
                self.broker.restart()
            else:
                getattr(self.broker, self.action)()
                self._pending = True
                self._timer = threading.Timer(self.duration, self._undo)
                self._timer.daemon = True
                self._timer.start()
        return Outcome("ok", self.describe(), params={"duration": self.duration})

    def _undo(self) -> None:
        """Bring the broker back: resume after a pause, start after a stop or crash."""
        with self._lock:
            if not self._pending:
                return  # already brought back (by close() or the timer)
            self._pending = False
        try:
            if self.action == "pause":
                self.broker.resume()
            else:
                self.broker.start()
        except Exception as exc:  # recorded, a timer thread has no caller
            self.journal.record(
                f"{self.name}-undo", self.describe(), "error", detail={"error": repr(exc)}
            )
        else:
            self.journal.record(f"{self.name}-undo", self.describe(), "ok")

    def close(self) -> None:
        """Bring the broker back now if it is still down or paused."""
        timer = self._timer
        if timer is not None:
            timer.cancel()
            if timer is not threading.current_thread():
                timer.join()  # an undo already under way finishes first
        self._undo()
