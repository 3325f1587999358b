"""Framing for the pipes between the parent and each child: 4-byte big-endian length + pickle.

The parent never blocks: ``PendingWrites`` keeps the frames a non-blocking write could not
take (each tagged with its job, so the parent knows which jobs a child cannot have read) and
is flushed again when the pipe is writable; ``FrameReader`` reads until EAGAIN and hands out
whole frames only. The child reads its jobs through ``JobInbox`` and writes with the blocking
``write_frames``.

Pickle is safe here: both ends are the same program, the pipes are private to one parent and
the child it forked, and what crosses them was already decoded from an accepted content type.
"""

from __future__ import annotations

import collections
import errno
import os
import pickle
import select
import struct
from typing import Any

HEADER = struct.Struct(">I")
READ_CHUNK = 1 << 16
_PROTOCOL = pickle.HIGHEST_PROTOCOL


class FrameError(Exception):
    """The byte stream is not a sequence of frames (a bug, or a child writing garbage)."""


def encode(obj: Any) -> bytes:
    payload = pickle.dumps(obj, protocol=_PROTOCOL)
    if len(payload) > 0xFFFFFFFF:
        raise FrameError(f"a frame of {len(payload)} bytes does not fit a 4-byte length")
    return HEADER.pack(len(payload)) + payload


class PendingWrites:
    """Frames not yet wholly written to one non-blocking fd, oldest first, with their tags.

    Only the oldest can be partly written. Whatever is still here when the pipe is closed
    was never read whole by the other side.
    """

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: collections.deque[list[Any]] = collections.deque()  # [tag, memoryview]

    def __bool__(self) -> bool:
        return bool(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def append(self, tag: Any, frame: bytes) -> None:
        self._items.append([tag, memoryview(frame)])

    def write(self, fd: int) -> bool:
        """Write what the pipe takes now; True when nothing is left. ``OSError`` (EPIPE:
        the reader is gone) propagates."""
        items = self._items
        while items:
            item = items[0]
            view: memoryview = item[1]
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                return False
            except InterruptedError:
                continue
            if written < len(view):
                item[1] = view[written:]
                return False
            items.popleft()
        return True

    def take(self) -> list[Any]:
        """Remove every frame not wholly written; their tags, oldest first."""
        tags = [item[0] for item in self._items]
        self._items.clear()
        return tags


class FrameReader:
    """Non-blocking reads from one fd, split into whole frames."""

    __slots__ = ("_buf", "_pos", "eof", "fd")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buf = bytearray()
        self._pos = 0
        self.eof = False

    def read_available(self) -> None:
        """Read until the pipe is empty (EAGAIN) or closed; never waits."""
        if self._pos:  # drop what was consumed before appending (one move per batch)
            del self._buf[:self._pos]
            self._pos = 0
        while not self.eof:
            try:
                chunk = os.read(self.fd, READ_CHUNK)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno in (errno.EBADF, errno.EIO):
                    self.eof = True
                    return
                raise
            if not chunk:
                self.eof = True
                return
            self._buf += chunk

    def next(self) -> tuple[bool, Any]:
        """``(True, obj)`` for the next whole frame, ``(False, None)`` when none is buffered.

        One frame at a time, so that a callback run for one frame may read the pipe again
        (re-entrantly) without a frame being handled twice or skipped.
        """
        buf, pos = self._buf, self._pos
        if len(buf) - pos < HEADER.size:
            return False, None
        (size,) = HEADER.unpack_from(buf, pos)
        end = pos + HEADER.size + size
        if len(buf) < end:
            return False, None
        obj = pickle.loads(memoryview(buf)[pos + HEADER.size:end])  # no copy; freed at once
        if end == len(buf):
            buf.clear()
            self._pos = 0
        else:
            self._pos = end
        return True, obj

    def pending_bytes(self) -> int:
        return len(self._buf) - self._pos


# -- the child's side: blocking -----------------------------------------------------------------

class JobInbox:
    """The child's end of its job pipe: job frames in the order written, and the ``cancel``
    frames that may follow them (jobs the parent takes back after a lost broker connection).

    Before each job the child reads whatever else has arrived (without waiting), so a cancel
    written after a job it has not started yet is seen in time.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buf = bytearray()
        self._jobs: collections.deque[Any] = collections.deque()
        self._cancelled: set[int] = set()
        self._eof = False
        # poll, not select: select() fails for fd numbers >= 1024, and a child inherits the
        # numbering of a parent that may hold that many sockets (issue 13 #4).
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)

    def _parse(self) -> None:
        buf = self._buf
        while len(buf) >= HEADER.size:
            (size,) = HEADER.unpack_from(buf)
            end = HEADER.size + size
            if len(buf) < end:
                return
            frame = pickle.loads(memoryview(buf)[HEADER.size:end])
            del buf[:end]
            if frame[0] == "cancel":
                self._cancelled.update(frame[1])
            else:
                self._jobs.append(frame)

    def _read(self, wait: bool) -> None:
        if self._eof:
            return
        if not wait and not self._readable():
            return
        while True:
            try:
                chunk = os.read(self.fd, READ_CHUNK)
            except InterruptedError:
                continue
            break
        if not chunk:
            self._eof = True  # a frame cut short by EOF was never this child's to run
            return
        self._buf += chunk
        self._parse()

    def _readable(self) -> bool:
        return bool(self._poll.poll(0))  # EINTR is retried by Python (PEP 475)

    def next(self) -> Any | None:
        """The next job frame (waiting for one), or None at EOF."""
        while not self._jobs:
            if self._eof:
                return None
            self._read(wait=True)
        return self._jobs.popleft()

    def cancelled(self, seq: int) -> bool:
        """Whether the parent took job ``seq`` back (it must not run)."""
        self._read(wait=False)
        if seq in self._cancelled:
            self._cancelled.discard(seq)
            return True
        return False


def write_frames(fd: int, *objs: Any) -> None:
    """Write whole frames with as few writes as the pipe allows (blocking is fine in a child)."""
    data = memoryview(b"".join(encode(obj) for obj in objs))
    while data:
        try:
            written = os.write(fd, data)
        except InterruptedError:
            continue
        data = data[written:]
