"""The worker under test: started from its real command line, restarted, stopped, inspected.

By default the worker is ``taskq worker -A stress.harness ...`` configured with the same flags
and ``TASKQ_*`` variables users use; ``--worker-cmd`` replaces the command (a Celery worker, or
the deliberately broken workers the oracle tests use). Each worker runs in its own session
with its output in ``worker-N.log`` in the cell's directory; stopping one never leaves a
process behind (SIGTERM, then SIGKILL to its whole session).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

__all__ = ["Health", "WorkerProc", "taskq_command"]

STOP_GRACE = 15.0


def taskq_command() -> list[str]:
    script = Path(sys.executable).parent / "taskq"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "taskq"]


@dataclass(frozen=True)
class Health:
    """A snapshot of the worker's process tree."""

    pid: int
    children: int
    zombies: int
    fds: int
    rss_kib: int

    @classmethod
    def of(cls, pid: int) -> Health | None:
        try:
            proc = psutil.Process(pid)
            kids = proc.children()
            zombies = 0
            for kid in kids:
                with contextlib.suppress(psutil.Error):
                    zombies += kid.status() == psutil.STATUS_ZOMBIE
            return cls(pid, len(kids) - zombies, zombies, proc.num_fds(),
                       proc.memory_info().rss // 1024)
        except psutil.Error:
            return None


class WorkerProc:
    """One cell's worker; ``restart`` starts the next one (``worker-2.log``, ...)."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], directory: Path,
                 name: str = "worker", node: str = "") -> None:
        self.argv = list(argv)
        self.env = dict(env)
        self.directory = directory
        self.name = name  # its logs: <name>-1.log, <name>-2.log, ...
        self.node = node  # its node name (remote control), "" when not known
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0
        self.exits: list[int] = []

    @property
    def command(self) -> str:
        return shlex.join(self.argv)

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.name}-{self.started}.log"

    def start(self) -> WorkerProc:
        self.started += 1
        with open(self.log_path, "ab") as log:
            log.write(f"$ {self.command}\n".encode())
            log.flush()
            try:
                self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             start_new_session=True, cwd=os.getcwd())
            except OSError as exc:
                from stress.errors import RunnerError

                raise RunnerError(f"cannot start the worker ({self.command}): {exc}") from None
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def alive(self) -> bool:
        return self.pid is not None

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def reap(self) -> None:
        """Note a worker that exited (killed by a fault) and clear its session."""
        if self.proc is not None and self.proc.poll() is not None:
            self.exits.append(self.proc.returncode)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # its orphaned children
            self.proc = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def health(self) -> Health | None:
        pid = self.pid
        return Health.of(pid) if pid else None

    def dump_stacks(self, into: Path) -> None:
        """Every worker process's Python stacks, into ``into`` (py-spy when installed, and
        faulthandler on SIGUSR2, which taskq's processes register, into the worker log)."""
        pid = self.pid
        if pid is None:
            into.write_text("the worker is not running\n")
            return
        pids = [pid]
        with contextlib.suppress(psutil.Error):
            pids += [c.pid for c in psutil.Process(pid).children(recursive=True)]
        out: list[str] = []
        beside = Path(sys.executable).parent / "py-spy"
        spy = str(beside) if beside.exists() else shutil.which("py-spy")
        for p in pids:
            if spy:
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    done = subprocess.run([spy, "dump", "--pid", str(p)], capture_output=True,
                                          timeout=20, text=True)
                    out.append(f"== py-spy dump {p}\n{done.stdout}{done.stderr}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGUSR2)
        time.sleep(1.0)  # faulthandler writes from a signal handler: give it a moment
        out.append(f"== faulthandler (SIGUSR2) output at the end of the worker log\n"
                   f"{self.log_tail(400)}")
        into.write_text("\n".join(out))

    def stop(self, grace: float = STOP_GRACE) -> int | None:
        """Warm shutdown (SIGTERM), SIGKILL after ``grace``; the whole session goes."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        self.exits.append(proc.returncode)
        self.proc = None
        return proc.returncode
