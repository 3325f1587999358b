"""Framing for the pipes between the parent and each child: 4-byte big-endian length + pickle.

The parent never blocks: ``PendingWrites`` keeps the frames a non-blocking write could not
take (each tagged with its job, so the parent knows which jobs a child cannot have read) and
is flushed again when the pipe is writable; ``FrameReader`` reads until EAGAIN and hands out
whole frames only. The child uses the blocking ``read_frame`` / ``write_frames``.

Pickle is safe here: both ends are the same program, the pipes are private to one parent and
the child it forked, and what crosses them was already decoded from an accepted content type.
"""

from __future__ import annotations

import collections
import errno
import os
import pickle
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

def read_frame(fd: int) -> Any | None:
    """One whole frame, or None at EOF, also when EOF cuts a frame short (the parent closed
    the pipe in the middle of writing a job: that job was never this child's to run)."""
    header = _read_exact(fd, HEADER.size)
    if header is None:
        return None
    (size,) = HEADER.unpack(header)
    payload = _read_exact(fd, size)
    if payload is None:
        return None
    return pickle.loads(payload)


def _read_exact(fd: int, size: int) -> bytearray | None:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        try:
            n = os.readv(fd, [view[got:]])
        except InterruptedError:
            continue
        if not n:
            return None
        got += n
    return buf


def write_frames(fd: int, *objs: Any) -> None:
    """Write whole frames with as few writes as the pipe allows (blocking is fine in a child)."""
    data = memoryview(b"".join(encode(obj) for obj in objs))
    while data:
        try:
            written = os.write(fd, data)
        except InterruptedError:
            continue
        data = data[written:]
