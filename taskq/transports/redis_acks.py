"""Early acks on Redis, answered on the event loop.

An early ack must be applied before its job reaches the pool (a main process that dies after
the job started must not leave the message to be delivered again), so the worker cannot hand
the job on until Redis has answered. It need not stand still meanwhile: ``AckPipe`` writes
the SETTLE scripts to a connection of its own, without waiting, and the loop reads their
answers as they come, in order, then tells the worker (``on_answered``), which hands those
jobs on. Before, every early ack was a round trip the loop waited for, half of a busy worker's
time on Redis (docs/performance.md).

What is sent and not answered yet stays the worker's to account for: on a lost connection
(a connection error while writing or reading, or no answer within ``timeout``) those acks
go back to the transport's deferred acks, which the consumer carries to the next connection
and asks about there (``confirm_acks``): the script may or may not have run.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Sequence
from typing import Any

import redis
from kombu.utils.encoding import bytes_to_str

from taskq import compat

__all__ = ["AckPipe"]

logger = logging.getLogger("taskq.transports.redis")

Ack = tuple[str, str]  # (delivery tag, lease id)


def _bulk(arg: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(arg), arg)


class AckPipe:
    """SETTLE "ack" scripts on a connection of their own, their answers read on the loop."""

    def __init__(self, pool: redis.ConnectionPool, hub: Any, script: Any, keys: Sequence[str],
                 *, chunk: int, timeout: float, clock: Callable[[], float],
                 give_back: Callable[[list[Ack]], None],
                 on_answer: Callable[[list[Ack], list[Any]], object],
                 on_answered: Callable[[], None]) -> None:
        self._pool = pool
        self._hub = hub
        self._script = script  # redis-py Script: its sha, and its body to load
        self._keys = list(keys)
        self._chunk = chunk
        self._timeout = timeout
        self._clock = clock
        self._give_back = give_back      # unanswered acks, back to the transport's deferred
        self._on_answer = on_answer      # (acks, flags) of one script, as answered
        self._on_answered = on_answered  # after a read that answered some
        self._conn: Any = None
        self._fd = -1
        self._sent: collections.deque[tuple[list[Ack], float]] = collections.deque()
        self._unanswered: set[str] = set()  # lease ids
        self._head: tuple[str, bytes] = ("", b"")  # (sha, the command's packed arguments)

    def unanswered(self) -> set[str]:
        return self._unanswered

    def send(self, acks: list[Ack]) -> None:
        """Write the scripts that ack ``acks``; their answers come to ``on_answer``. A
        connection error propagates, with every unanswered ack given back."""
        if not acks:
            return
        # Counted as sent before they are written: a write that fails half-way may still
        # have reached Redis whole, so its acks are asked about later, never assumed lost.
        now = self._clock()
        chunks = [acks[start:start + self._chunk] for start in range(0, len(acks), self._chunk)]
        for chunk in chunks:
            self._sent.append((chunk, now))
            self._unanswered.update(lease for _, lease in chunk)
        try:
            conn = self._connection()
            for chunk in chunks:
                # No health check: its PING would read the answer of a script still due.
                conn.send_packed_command([self._pack(chunk)], check_health=False)
        except BaseException:
            self._fail()
            raise

    def on_readable(self) -> None:
        """Read every answer that is here (never waits for one that is not)."""
        if not self._sent:
            # Nothing asked, so nothing to answer: the server closed the idle connection
            # (its ``timeout``, a proxy's). Drop it rather than poll a readable EOF forever;
            # the next send connects again.
            self._fail()
            return
        self._read(wait=False)

    def wait(self) -> None:
        """Read the answers to everything sent (each read bounded by the socket timeout)."""
        self._read(wait=True)

    def check(self) -> None:
        """Called on the loop's timer: an answer overdue means the connection is gone."""
        if not self._sent:
            return
        self._read(wait=False)
        if self._sent and self._clock() - self._sent[0][1] > self._timeout:
            count = len(self._unanswered)
            self._fail()
            raise redis.TimeoutError(f"Redis did not answer {count} early acks within "
                                     f"{self._timeout:g} s")

    def take(self) -> None:
        """Give back what is unanswered and drop the connection (a lost connection's)."""
        self._fail()

    def close(self) -> None:
        """Read the answers still due, then give the connection back to its pool."""
        try:
            if self._sent:
                self.wait()
        except Exception as exc:  # given back by _fail: the consumer carries them
            logger.warning("reading the answers to early acks failed as the channel closed "
                           "(%r)", exc)
        finally:
            conn, self._conn = self._conn, None
            self._unwatch()
            if conn is not None:
                if self._sent:
                    conn.disconnect()
                self._pool.release(conn)

    # -- internals ---------------------------------------------------------------------------
    def _pack(self, chunk: list[Ack]) -> bytes:
        """``EVALSHA sha numkeys keys... ack leases...`` in the Redis protocol. Packed here:
        redis-py's packer checks and encodes every argument one by one, which was a third
        of the cost of sending an ack."""
        sha = self._script.sha
        if self._head[0] != sha:
            fixed = ["EVALSHA", sha, str(len(self._keys)), *self._keys, "ack"]
            self._head = (sha, b"".join(_bulk(arg.encode()) for arg in fixed))
        leases = b"".join(_bulk(lease.encode()) for _, lease in chunk)
        return b"*%d\r\n%s%s" % (len(self._keys) + 4 + len(chunk), self._head[1], leases)

    def _connection(self) -> Any:
        conn = self._conn
        if conn is None:
            try:
                conn = self._pool.get_connection()
            except TypeError:  # redis-py < 5.3 wants a command name (unused)
                conn = self._pool.get_connection("_")
            self._conn = conn
        if compat.connection_socket(conn) is None:
            conn.connect()
        sock = compat.connection_socket(conn)
        if self._fd < 0 or sock.fileno() != self._fd:
            self._unwatch()
            # Loaded on this connection before the first EVALSHA: a Redis that lost its
            # script cache (restarted) answers NOSCRIPT otherwise.
            conn.send_command("SCRIPT", "LOAD", self._script.script)
            self._script.sha = bytes_to_str(conn.read_response())
            self._fd = sock.fileno()
            self._hub.add_reader(self._fd, self.on_readable)
        return conn

    def _read(self, *, wait: bool) -> None:
        conn = self._conn
        answered = False
        try:
            while self._sent and conn is not None and (wait or conn.can_read(timeout=0)):
                chunk = self._sent[0][0]
                try:
                    flags = self._read_answer(conn)
                except redis.ResponseError as exc:
                    # The script did not run (NOSCRIPT, READONLY after a failover, MISCONF,
                    # BUSY) or stopped half-way: what was applied is not known, as when an
                    # answer is lost with its connection, and is found out the same way.
                    raise redis.ConnectionError(
                        f"an early ack script failed ({exc}); its acks are asked about on "
                        "the next connection") from exc
                self._sent.popleft()
                self._unanswered.difference_update(lease for _, lease in chunk)
                self._on_answer(chunk, flags)
                answered = True
        except BaseException:
            self._fail()
            raise
        finally:
            if answered:
                self._on_answered()

    def _read_answer(self, conn: Any) -> Any:
        return conn.read_response()

    def _fail(self) -> None:
        given: list[Ack] = [ack for chunk, _ in self._sent for ack in chunk]
        self._sent.clear()
        self._unanswered.clear()
        self._unwatch()
        conn = self._conn
        if conn is not None:
            conn.disconnect()
        if given:
            self._give_back(given)

    def _unwatch(self) -> None:
        if self._fd >= 0:
            try:
                self._hub.remove(self._fd)
            except (KeyError, ValueError, OSError):
                pass
            self._fd = -1
