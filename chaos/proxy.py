"""A TCP fault proxy between a client (the worker) and a broker, in pure asyncio.

::

    with FaultProxy("127.0.0.1:6379") as proxy:
        url = proxy.url("redis", "/0")          # point the worker here
        with proxy.fault(Latency(100)):          # every connection, from now on
            ...
        proxy.cut()                              # close every open connection now
        proxy.add(Blackhole(), label="consumer") # only connections labelled so

The proxy runs its own event loop in a daemon thread; every public method is synchronous
and thread-safe. State changes run on the loop thread, so a fault applies atomically: each
chunk read after the change sees it, on existing and new connections alike.

How each fault acts on the bytes of a connection is in :mod:`chaos.proxy_link`.
Everything listens and connects on loopback only (DESIGN.md: chaos).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import random
import socket
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any, TypeVar

from chaos.errors import ProxyError
from chaos.faults import (
    Bandwidth,
    Blackhole,
    ConnectionInfo,
    Fault,
    Latency,
    LimitData,
    Select,
    Slicer,
    SlowClose,
    Toxic,
)
from chaos.journal import Journal
from chaos.proxy_link import Link

__all__ = ["FaultProxy", "parse_address"]

T = TypeVar("T")
_CALL_TIMEOUT = 10.0


def parse_address(value: str | tuple[str, int], *, what: str = "address") -> tuple[str, int]:
    """``"127.0.0.1:6379"`` or ``("127.0.0.1", 6379)`` → a loopback (host, port) pair."""
    if isinstance(value, tuple):
        host, port = value
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or not port_text.isdigit():
            raise ProxyError(f"{what} must look like 127.0.0.1:PORT, got {value!r}")
        port = int(port_text)
    host = host or "127.0.0.1"
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ProxyError(f"{what} {host!r} is not loopback; chaos traffic stays on 127.0.0.0/8")
    if not 0 <= port <= 65535:
        raise ProxyError(f"{what} port {port} is out of range")
    return ("127.0.0.1" if host == "localhost" else host), port


class FaultProxy:
    """Listens on loopback, forwards to ``upstream``, and injects network faults."""

    def __init__(
        self,
        upstream: str | tuple[str, int],
        *,
        listen: str | tuple[str, int] = ("127.0.0.1", 0),
        journal: Journal | None = None,
        seed: int | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        self.upstream = parse_address(upstream, what="upstream")
        self.host, self.port = parse_address(listen, what="listen address")
        self.journal = journal
        self.connect_timeout = connect_timeout
        self._rng = random.Random(seed)
        self._toxics: dict[str, Toxic] = {}
        self._links: dict[int, Link] = {}
        self._counter = itertools.count()
        self._names = itertools.count(1)
        self._server: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Start the loop thread and listen; returns self. ``port`` is known afterwards."""
        if self._thread is not None:
            raise ProxyError("this proxy was already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"chaos-proxy-{self.upstream[1]}", daemon=True
        )
        self._thread.start()
        try:
            self._call(self._listen())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close every connection and the listener, and end the loop thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or loop.is_closed():
            return
        if thread.is_alive():
            with contextlib.suppress(Exception):
                self._call(self._shutdown())
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_CALL_TIMEOUT)
        if not thread.is_alive():
            loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def url(self, scheme: str, path: str = "", userinfo: str = "") -> str:
        """A broker URL through the proxy, e.g. ``url("amqp", "//", "guest:guest")``."""
        auth = f"{userinfo}@" if userinfo else ""
        return f"{scheme}://{auth}{self.host}:{self.port}{path}"

    def __repr__(self) -> str:
        up = f"{self.upstream[0]}:{self.upstream[1]}"
        return f"FaultProxy({self.address} -> {up})"

    # -- public, thread-safe controls ----------------------------------------------------

    @property
    def enabled(self) -> bool:
        """True while the proxy accepts new connections (see :meth:`down`)."""
        return self._server is not None

    def connections(self) -> list[ConnectionInfo]:
        """The open connections, oldest first."""
        return self._call(self._run(lambda: [link.info for link in self._links.values()]))

    def set_label(
        self,
        label: str,
        *,
        connections: Iterable[int] | None = None,
        where: Callable[[ConnectionInfo], bool] | None = None,
    ) -> int:
        """Label open connections (by index or predicate); return how many were labelled."""
        select = Select.of(connections, None, where)

        def label_them() -> int:
            hits = [link for link in self._links.values() if select.matches(link.info)]
            for link in hits:
                link.label = label
            return len(hits)

        return self._call(self._run(label_them))

    def add(
        self,
        fault: Fault,
        *,
        direction: str | None = None,
        name: str | None = None,
        connections: Iterable[int] | None = None,
        label: str | None = None,
        where: Callable[[ConnectionInfo], bool] | None = None,
        record: bool = True,
    ) -> Toxic:
        """Switch ``fault`` on for the selected (default: all) current and future connections.

        ``record=False`` leaves it out of the proxy's journal (for callers that journal it).
        """
        toxic = Toxic(
            name or f"{fault.type}-{next(self._names)}",
            fault,
            direction or fault.default_direction,
            Select.of(connections, label, where),
        )

        def install() -> Toxic:
            if toxic.name in self._toxics:
                raise ProxyError(f"a fault named {toxic.name!r} is already on; remove it first")
            self._toxics[toxic.name] = toxic
            return toxic

        self._call(self._run(install))
        if record:
            self._record("add", toxic.to_json())
        return toxic

    def remove(self, name: str | Toxic, *, record: bool = True) -> None:
        """Switch a fault off (by name or the :class:`Toxic` :meth:`add` returned)."""
        key = name.name if isinstance(name, Toxic) else name

        def uninstall() -> None:
            if self._toxics.pop(key, None) is None:
                raise ProxyError(f"no fault named {key!r} is on; on: {sorted(self._toxics)}")

        self._call(self._run(uninstall))
        if record:
            self._record("remove", {"name": key})

    def clear(self) -> None:
        """Switch every fault off."""
        self._call(self._run(self._toxics.clear))
        self._record("clear", {})

    def toxics(self) -> list[Toxic]:
        """The faults currently on."""
        return self._call(self._run(lambda: list(self._toxics.values())))

    @contextlib.contextmanager
    def fault(self, fault: Fault, **options: Any) -> Iterator[Toxic]:
        """``with proxy.fault(Latency(50)):`` -- on inside the block, off after it."""
        toxic = self.add(fault, **options)
        try:
            yield toxic
        finally:
            self.remove(toxic)

    def latency(self, ms: float, jitter: float = 0.0, **options: Any) -> Toxic:
        return self.add(Latency(ms, jitter), **options)

    def bandwidth(self, kbps: float, **options: Any) -> Toxic:
        return self.add(Bandwidth(kbps), **options)

    def blackhole(self, **options: Any) -> Toxic:
        return self.add(Blackhole(), **options)

    def slow_close(self, ms: float, **options: Any) -> Toxic:
        return self.add(SlowClose(ms), **options)

    def slicer(self, average: int, variation: int = 0, delay_us: int = 0, **options: Any) -> Toxic:
        return self.add(Slicer(average, variation, delay_us), **options)

    def limit_data(self, nbytes: int, **options: Any) -> Toxic:
        return self.add(LimitData(nbytes), **options)

    def cut(
        self,
        *,
        connections: Iterable[int] | None = None,
        label: str | None = None,
        where: Callable[[ConnectionInfo], bool] | None = None,
        record: bool = True,
    ) -> int:
        """Close the selected (default: every) open connection now; return how many."""
        return self._close_links(Select.of(connections, label, where), reset=False, record=record)

    def reset(
        self,
        *,
        connections: Iterable[int] | None = None,
        label: str | None = None,
        where: Callable[[ConnectionInfo], bool] | None = None,
        record: bool = True,
    ) -> int:
        """Like :meth:`cut`, but both peers get a TCP RST (SO_LINGER 0)."""
        return self._close_links(Select.of(connections, label, where), reset=True, record=record)

    def down(self, *, cut: bool = False) -> None:
        """Stop listening: new connections are refused. With ``cut``, close open ones too."""
        self._call(self._unlisten())
        if cut:
            self._close_links(Select(), reset=False, record=False)
        self._record("down", {"cut": cut})

    def up(self) -> None:
        """Listen again on the same port."""
        self._call(self._listen())
        self._record("up", {})

    # -- loop-thread internals -----------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None or not self._thread or not self._thread.is_alive():
            coro.close()
            raise ProxyError("the proxy is not running; call start() or use it as a context")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_CALL_TIMEOUT)

    @staticmethod
    async def _run(fn: Callable[[], T]) -> T:
        return fn()

    def _record(self, action: str, detail: dict[str, Any]) -> None:
        if self.journal is not None:
            up = f"{self.upstream[0]}:{self.upstream[1]}"
            self.journal.record(
                f"proxy-{action}", f"proxy {self.address}->{up}", "ok", detail=detail
            )

    def _close_links(self, select: Select, *, reset: bool, record: bool = True) -> int:
        def close_them() -> list[int]:
            hits = [link for link in self._links.values() if select.matches(link.info)]
            for link in hits:
                link.abort(reset=reset)
            return [link.index for link in hits]

        closed = self._call(self._run(close_them))
        if record:
            self._record("reset" if reset else "cut", {"connections": closed, **select.to_json()})
        return len(closed)

    async def _listen(self) -> None:
        if self._server is not None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise ProxyError(f"cannot listen on {self.host}:{self.port}: {exc}") from exc
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._accept, sock=sock)

    async def _unlisten(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # closes the listening socket at once; open links are untouched

    async def _shutdown(self) -> None:
        await self._unlisten()
        for link in list(self._links.values()):
            link.abort()

    async def _accept(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        peer = cwriter.get_extra_info("peername") or ("?", 0)
        link = Link(
            next(self._counter),
            (peer[0], peer[1]),
            cwriter,
            toxics=self._active,
            rng=self._rng,
            on_closed=self._forget,
        )
        self._links[link.index] = link
        try:
            ureader, uwriter = await asyncio.wait_for(
                asyncio.open_connection(*self.upstream), self.connect_timeout
            )
        except (OSError, TimeoutError):
            # Upstream down: the client sees its connection close, as with a dead broker.
            link.abort()
            return
        if link.closed:  # cut while connecting
            uwriter.transport.abort()
            return
        link.start(creader, ureader, uwriter)

    def _forget(self, link: Link) -> None:
        self._links.pop(link.index, None)

    def _active(self, direction: str, info: ConnectionInfo) -> list[Toxic]:
        return [t for t in self._toxics.values() if t.applies(direction, info)]
