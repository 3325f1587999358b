"""One proxied connection and the pumps that apply faults to its bytes.

A :class:`Link` owns a client socket, an upstream socket and four asyncio tasks: for
each direction a reader and a writer joined by a bounded queue. It asks the proxy which
toxics apply (``toxics(direction, info)``) for every chunk, so a fault switched on or off
takes effect at the next chunk on every connection.

The reader applies ``blackhole`` (drop), ``limit_data`` (truncate, then close) and
``latency`` (stamp a due time, never earlier than the previous chunk's, so order holds
under jitter). The writer waits for the due time and applies ``slicer`` and ``bandwidth``
at write time. An EOF is passed on as a half-close after ``slow_close``'s delay; the link
ends when both directions have, or at the first socket error. Runs on the proxy's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from chaos.faults import (
    Bandwidth,
    Blackhole,
    ConnectionInfo,
    Latency,
    LimitData,
    Slicer,
    SlowClose,
    Toxic,
)

__all__ = ["Link"]

_CHUNK = 65536
_QUEUE_DEPTH = 64

ToxicsFor = Callable[[str, ConnectionInfo], list[Toxic]]


@dataclass
class _Chunk:
    due: float
    data: bytes
    last: bool = False  # limit_data reached: close the connection after this chunk


class Link:
    """A proxied connection; every method runs on the proxy's event loop."""

    def __init__(
        self,
        index: int,
        client: tuple[str, int],
        cwriter: asyncio.StreamWriter,
        *,
        toxics: ToxicsFor,
        rng: random.Random,
        on_closed: Callable[[Link], None],
    ) -> None:
        self.index = index
        self.label: str | None = None
        self.client = client
        self.closed = False
        self._cwriter = cwriter
        self._uwriter: asyncio.StreamWriter | None = None
        self._toxics_for = toxics
        self._rng = rng
        self._on_closed = on_closed
        self._tasks: list[asyncio.Task[None]] = []
        self._passed: dict[tuple[str, str], int] = {}
        self._last_due = {"upstream": 0.0, "downstream": 0.0}
        self._open_directions = 2

    @property
    def info(self) -> ConnectionInfo:
        return ConnectionInfo(self.index, self.client, self.label)

    def start(
        self,
        creader: asyncio.StreamReader,
        ureader: asyncio.StreamReader,
        uwriter: asyncio.StreamWriter,
    ) -> None:
        """Begin forwarding in both directions."""
        self._uwriter = uwriter
        up: asyncio.Queue[_Chunk | None] = asyncio.Queue(maxsize=_QUEUE_DEPTH)
        down: asyncio.Queue[_Chunk | None] = asyncio.Queue(maxsize=_QUEUE_DEPTH)
        self._tasks = [
            asyncio.create_task(self._read_side("upstream", creader, up)),
            asyncio.create_task(self._write_side("upstream", uwriter, up)),
            asyncio.create_task(self._read_side("downstream", ureader, down)),
            asyncio.create_task(self._write_side("downstream", self._cwriter, down)),
        ]

    def _writers(self) -> Iterator[asyncio.StreamWriter]:
        yield self._cwriter
        if self._uwriter is not None:
            yield self._uwriter

    def abort(self, *, reset: bool = False) -> None:
        """Close both sockets now; with ``reset`` the peers get an RST (SO_LINGER 0)."""
        if self.closed:
            return
        self.closed = True
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        for writer in self._writers():
            if reset:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        linger = struct.pack("ii", 1, 0)
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            writer.transport.abort()
        self._on_closed(self)

    def _active(self, direction: str) -> list[Toxic]:
        return self._toxics_for(direction, self.info)

    async def _read_side(
        self, direction: str, reader: asyncio.StreamReader, queue: asyncio.Queue[_Chunk | None]
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    break
                toxics = self._active(direction)
                if any(isinstance(t.fault, Blackhole) for t in toxics):
                    continue
                data, last = self._limit(direction, toxics, data)
                due = max(loop.time() + self._delay(toxics), self._last_due[direction])
                self._last_due[direction] = due
                await queue.put(_Chunk(due, data, last))
                if last:
                    return
        except (ConnectionError, OSError):
            self.abort()
            return
        await queue.put(None)  # EOF: the writer passes it on as a half-close

    def _limit(self, direction: str, toxics: list[Toxic], data: bytes) -> tuple[bytes, bool]:
        last = False
        for t in toxics:
            if isinstance(t.fault, LimitData):
                key = (t.name, direction)
                room = t.fault.bytes - self._passed.get(key, 0)
                if len(data) >= room:
                    data, last = data[: max(room, 0)], True
                self._passed[key] = self._passed.get(key, 0) + len(data)
        return data, last

    def _delay(self, toxics: list[Toxic]) -> float:
        total = 0.0
        for t in toxics:
            if isinstance(t.fault, Latency):
                jitter = self._rng.uniform(-t.fault.jitter, t.fault.jitter) if t.fault.jitter else 0
                total += max(0.0, t.fault.ms + jitter) / 1000.0
        return total

    async def _write_side(
        self, direction: str, writer: asyncio.StreamWriter, queue: asyncio.Queue[_Chunk | None]
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                chunk = await queue.get()
                if chunk is None:
                    await self._slow_close(direction)
                    if writer.can_write_eof():
                        writer.write_eof()
                    break
                wait = chunk.due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._write(direction, writer, chunk.data)
                if chunk.last:
                    await self._slow_close(direction)
                    self.abort()
                    return
        except (ConnectionError, OSError):
            self.abort()
            return
        self._open_directions -= 1
        if self._open_directions == 0:
            self.abort()

    async def _slow_close(self, direction: str) -> None:
        delays = [t.fault.ms for t in self._active(direction) if isinstance(t.fault, SlowClose)]
        if delays:
            await asyncio.sleep(max(delays) / 1000.0)

    async def _write(self, direction: str, writer: asyncio.StreamWriter, data: bytes) -> None:
        toxics = self._active(direction)
        slicer = next((t.fault for t in toxics if isinstance(t.fault, Slicer)), None)
        rates = [t.fault.bytes_per_second for t in toxics if isinstance(t.fault, Bandwidth)]
        if slicer is None and not rates:
            writer.write(data)
            await writer.drain()
            return
        pieces = self._slices(data, slicer) if slicer else [data]
        rate = min(rates) if rates else None
        for piece in pieces:
            # Under a bandwidth limit, write at most 1/20 s worth at a time, then pause.
            step = max(1, int(rate / 20)) if rate else len(piece)
            for start in range(0, len(piece), step):
                part = piece[start : start + step]
                writer.write(part)
                await writer.drain()
                if rate:
                    await asyncio.sleep(len(part) / rate)
            if slicer is not None and slicer.delay_us:
                await asyncio.sleep(slicer.delay_us / 1e6)

    def _slices(self, data: bytes, slicer: Slicer) -> list[bytes]:
        out: list[bytes] = []
        pos = 0
        while pos < len(data):
            size = max(1, slicer.average + self._rng.randint(-slicer.variation, slicer.variation))
            out.append(data[pos : pos + size])
            pos += size
        return out
