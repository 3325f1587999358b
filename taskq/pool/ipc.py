"""Framing for the pipes between the parent and each child: 4-byte length + pickle.

The parent never blocks: ``FrameWriter`` keeps what a non-blocking write could not take and
is flushed again when the pipe is writable; ``FrameReader`` reads until EAGAIN and yields only
whole frames. Pickle is safe here: both ends are the same program, and the pipes are private
to one parent and the child it forked.
"""

from __future__ import annotations

import errno
import os
import pickle
import struct
from collections.abc import Iterator
from typing import Any

HEADER = struct.Struct(">I")
READ_CHUNK = 1 << 16


def encode(obj: Any) -> bytes:
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(payload)) + payload


class FrameWriter:
    """Buffered non-blocking writes of frames to one fd."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()

    def queue(self, frame: bytes) -> None:
        self.buffer += frame

    def flush(self) -> bool:
        """Write what the pipe takes now; True when the buffer is empty."""
        while self.buffer:
            try:
                written = os.write(self.fd, self.buffer)
            except BlockingIOError:
                return False
            except InterruptedError:
                continue
            del self.buffer[:written]
        return True


class FrameReader:
    """Non-blocking reads from one fd, split into whole frames."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()
        self.eof = False

    def read_available(self) -> None:
        """Read until the pipe is empty (EAGAIN) or closed; never waits."""
        while True:
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
            self.buffer += chunk

    def frames(self) -> Iterator[Any]:
        while len(self.buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(self.buffer)
            end = HEADER.size + size
            if len(self.buffer) < end:
                return
            payload = bytes(self.buffer[HEADER.size:end])
            del self.buffer[:end]
            yield pickle.loads(payload)


def read_frame_blocking(fd: int) -> Any | None:
    """For the child: one whole frame, or None at EOF (the parent closed the pipe)."""
    header = _read_exact(fd, HEADER.size)
    if header is None:
        return None
    (size,) = HEADER.unpack(header)
    payload = _read_exact(fd, size)
    if payload is None:
        return None
    return pickle.loads(payload)


def _read_exact(fd: int, size: int) -> bytes | None:
    parts = bytearray()
    while len(parts) < size:
        try:
            chunk = os.read(fd, size - len(parts))
        except InterruptedError:
            continue
        if not chunk:
            return None
        parts += chunk
    return bytes(parts)


def write_frame_blocking(fd: int, obj: Any) -> None:
    """For the child: write one whole frame (blocking is fine in a child)."""
    data = memoryview(encode(obj))
    while data:
        try:
            written = os.write(fd, data)
        except InterruptedError:
            continue
        data = data[written:]
