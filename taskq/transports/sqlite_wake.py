"""Wake-ups for taskq's SQLite transport: Unix datagram sockets in ``<database>.wake/``.

SQLite cannot tell a waiting consumer that a row arrived, and polling it (kombu's virtual
transports sleep a second between tries) adds up to a second to every task on an idle
worker. Instead every consuming connection binds a non-blocking datagram socket in a
directory next to the database, ``<pid>-<random>.sock``, and waits on it (the event loop
watches its fd; ``drain_events`` polls it). A publisher, after its commit, sends one
byte to every socket there. Sends never block and their errors are ignored: a full socket
already has a wake-up pending, and a socket file nobody is bound to any more (its process
died) answers ECONNREFUSED and is removed. A lost wake-up only costs latency: consumers
still poll now and then.

Socket paths are limited to 107 bytes; a longer directory is reached through
``/proc/self/fd/<fd of the directory>/``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
import uuid

__all__ = ["WakeDirectory"]

_MAX_PATH = 100  # sun_path holds 108 bytes with the terminating NUL; keep a margin
_SUFFIX = ".sock"
_TRUST_LISTING_AFTER = 0.05  # s: directory mtimes are coarse; re-list near a change


class WakeDirectory:
    """One process's view of ``<database>.wake/``: its own socket and the others'."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._pid = 0
        self._dir_fd: int | None = None
        self._sock: socket.socket | None = None
        self._sock_name = ""
        self._sender: socket.socket | None = None
        self._listing: list[str] = []
        self._listing_mtime = -1
        self._listed_at = 0.0

    # -- paths ----------------------------------------------------------------------------
    def _check_pid(self) -> None:
        pid = os.getpid()
        if self._pid != pid:
            # Forked: the parent's socket and fds stay the parent's (never unlinked here).
            self._pid, self._dir_fd, self._sock, self._sender = pid, None, None, None
            self._listing, self._listing_mtime = [], -1

    def _ensure_dir(self) -> None:
        if not os.path.isdir(self.path):
            with contextlib.suppress(FileExistsError):
                os.mkdir(self.path, 0o700)

    def _address(self, name: str) -> str:
        full = os.path.join(self.path, name)
        if len(full.encode()) <= _MAX_PATH:
            return full
        if self._dir_fd is None:
            self._dir_fd = os.open(self.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        return f"/proc/self/fd/{self._dir_fd}/{name}"

    # -- the consumer's side --------------------------------------------------------------
    def socket(self) -> socket.socket:
        """This process's bound socket (made on first use)."""
        self._check_pid()
        if self._sock is None:
            self._ensure_dir()
            sock = socket.socket(socket.AF_UNIX,
                                 socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}{_SUFFIX}"
            try:
                sock.bind(self._address(name))
            except BaseException:
                sock.close()
                raise
            self._sock, self._sock_name = sock, name
        return self._sock

    @property
    def bound(self) -> bool:
        return self._sock is not None and self._pid == os.getpid()

    def drain(self) -> int:
        """Read every pending wake-up; returns how many there were."""
        sock = self._sock
        if sock is None or self._pid != os.getpid():
            return 0
        count = 0
        with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
            while count < 100_000:
                sock.recv(64)
                count += 1
        return count

    def close(self) -> None:
        if self._pid != os.getpid():
            return
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.path, self._sock_name))
            sock.close()
        for closing in (self._sender,):
            if closing is not None:
                closing.close()
        self._sender = None
        if self._dir_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._dir_fd)
            self._dir_fd = None

    def poke(self) -> None:
        """Wake this process's own socket (the event loop has more to fetch)."""
        sock = self._sock
        if sock is None or self._pid != os.getpid():
            return
        with contextlib.suppress(OSError):
            sock.sendto(b"\0", sock.getsockname())

    # -- the publisher's side -------------------------------------------------------------
    def _names(self) -> list[str]:
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            return []
        now = time.time()
        if (mtime != self._listing_mtime
                or self._listed_at - mtime / 1e9 < _TRUST_LISTING_AFTER):
            try:
                self._listing = [n for n in os.listdir(self.path) if n.endswith(_SUFFIX)]
            except FileNotFoundError:
                self._listing = []
            self._listing_mtime, self._listed_at = mtime, now
        return self._listing

    def wake_all(self) -> None:
        """Send one byte to every consumer's socket (never blocks, never raises)."""
        try:
            self._check_pid()
            names = self._names()
            if not names:
                return
            sender = self._sender
            if sender is None:
                sender = self._sender = socket.socket(
                    socket.AF_UNIX,
                    socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            for name in names:
                try:
                    sender.sendto(b"\0", self._address(name))
                except (BlockingIOError, InterruptedError):
                    continue  # its buffer is full: it has wake-ups to read already
                except OSError as exc:
                    if exc.errno == errno.ECONNREFUSED:  # nobody bound: its process died
                        with contextlib.suppress(OSError):
                            os.unlink(os.path.join(self.path, name))
                    self._listing_mtime = -1
        except OSError:
            return
