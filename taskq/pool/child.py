"""The pool child: read a job, say ``started``, run it, say ``done``; exit when told or when
recycled (max tasks / max memory).

It starts as a fork of the worker's main process and cleans up what it inherited: it dies
with its parent (PR_SET_PDEATHSIG, then a ``getppid()`` check), ignores SIGINT, closes every
inherited fd but its own pipe pair, stdio and log files, keeps the parent's client objects
referenced (so no finalizer touches a socket that is not its own), and leaves with
``os._exit``.
"""

from __future__ import annotations

import ctypes
import faulthandler
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from taskq.errors import SoftTimeLimitExceeded
from taskq.pool.base import Job, JobResult, run_job
from taskq.pool.ipc import read_frame_blocking, write_frame_blocking

if TYPE_CHECKING:
    from taskq.app import TaskQ

logger = logging.getLogger("taskq.pool.child")

PR_SET_PDEATHSIG = 1
_KEEPALIVE: list[Any] = []  # the parent's clients: referenced forever, never finalized here


class _State:
    running = False


def _die_with_parent(parent_pid: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _on_soft_limit(signum: int, frame: object) -> None:
    if _State.running:
        raise SoftTimeLimitExceeded()


def _kept_fds(extra: set[int]) -> set[int]:
    keep = {0, 1, 2, *extra}
    for handler in logging.getLogger().handlers:
        stream = getattr(handler, "stream", None)
        if stream is not None and hasattr(stream, "fileno"):
            try:
                keep.add(stream.fileno())
            except (OSError, ValueError):
                pass
    return keep


def _close_inherited_fds(keep: set[int]) -> None:
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 1024))
    for fd in fds:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _rss_kib() -> int:
    try:
        with open("/proc/self/statm", "rb") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        return 0


def child_main(app: TaskQ, parent_pid: int, job_fd: int, event_fd: int, *,
               hostname: str | None, max_tasks: int | None, max_memory_kib: int | None) -> None:
    """Runs in the forked child; never returns."""
    code = 0
    try:
        _die_with_parent(parent_pid)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGUSR1, _on_soft_limit)
        _KEEPALIVE.extend([app._backend, app._publisher])
        _close_inherited_fds(_kept_fds({job_fd, event_fd}))
        faulthandler.register(signal.SIGUSR2, all_threads=True, chain=False)
        for hook in app.hooks.worker_process_init:
            hook()
        write_frame_blocking(event_fd, ("ready", os.getpid()))
        done = 0
        while True:
            frame = read_frame_blocking(job_fd)
            if frame is None:
                break  # the parent closed our job pipe: a clean exit
            _kind, job_id, msg, delivery_info = frame
            write_frame_blocking(event_fd, ("started", job_id))
            job = Job(msg=msg, delivery_info=delivery_info)
            _State.running = True
            try:
                result = run_job(app, job, hostname)
            except BaseException as exc:  # report it; never die silently
                result = JobResult("FAILURE", summary=f"{type(exc).__name__}: {exc}"[:200])
            finally:
                _State.running = False
            write_frame_blocking(event_fd, ("done", job_id, result))
            done += 1
            if max_tasks and done >= max_tasks:
                write_frame_blocking(event_fd, ("exiting", "max_tasks_per_child"))
                break
            if max_memory_kib and _rss_kib() > max_memory_kib:
                write_frame_blocking(event_fd, ("exiting", "max_memory_per_child"))
                break
        for hook in app.hooks.worker_process_shutdown:
            hook()
    except BaseException:
        try:
            logger.exception("pool child %d failed", os.getpid())
        except Exception:
            pass
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        os._exit(code)
