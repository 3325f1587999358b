"""The fault proxy against a local echo server: each fault, on and off, per direction."""

from __future__ import annotations

import os
import socket
import statistics
import time
from collections.abc import Iterator

import pytest

from chaos.errors import ProxyError
from chaos.faults import Bandwidth, Blackhole, Latency, Select, fault_from_json
from chaos.journal import Journal
from chaos.proxy import FaultProxy, parse_address
from chaos.proxy_injectors import CutConnections, TimedFault
from chaos.runner import Runner
from chaos.schedule import at
from chaos.waiting import wait_until


@pytest.fixture
def proxy(echo_server: tuple[str, int]) -> Iterator[FaultProxy]:
    with FaultProxy(echo_server, journal=Journal(), seed=1) as fault_proxy:
        yield fault_proxy


def _connect(proxy: FaultProxy, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection((proxy.host, proxy.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _rtt(sock: socket.socket, payload: bytes = b"ping") -> float:
    start = time.monotonic()
    sock.sendall(payload)
    assert _recv_exactly(sock, len(payload)) == payload
    return time.monotonic() - start


def _median_rtt_ms(sock: socket.socket, n: int = 5) -> float:
    return statistics.median(_rtt(sock) for _ in range(n)) * 1000


def test_forwards_both_ways_untouched(proxy: FaultProxy) -> None:
    with _connect(proxy) as sock:
        payload = os.urandom(300_000)
        sock.sendall(payload)
        assert _recv_exactly(sock, len(payload)) == payload


@pytest.mark.parametrize(("direction", "factor"), [("downstream", 1), ("upstream", 1), ("both", 2)])
def test_latency_adds_the_configured_delay_per_direction(
    proxy: FaultProxy, direction: str, factor: int
) -> None:
    with _connect(proxy) as sock:
        base = _median_rtt_ms(sock)
        with proxy.fault(Latency(80), direction=direction):
            delayed = _median_rtt_ms(sock)
        after = _median_rtt_ms(sock)
    # at least the configured delay; at most that plus some scheduling noise
    assert delayed >= 80 * factor
    assert delayed - base < 80 * factor + 50
    assert after < base + 40, "switched off cleanly"


def test_latency_jitter_stays_in_bounds_and_keeps_order(proxy: FaultProxy) -> None:
    proxy.latency(50, jitter=20)
    with _connect(proxy) as sock:
        rtts = [_rtt(sock) * 1000 for _ in range(8)]
        sock.sendall(b"".join(b"%03d" % i for i in range(100)))
        assert _recv_exactly(sock, 300) == b"".join(b"%03d" % i for i in range(100))
    # never below ms - jitter; spread out by the jitter; upper bound loose (shared CPU)
    assert min(rtts) >= 30, rtts
    assert max(rtts) - min(rtts) >= 10, rtts
    assert statistics.median(rtts) < 100, rtts


def test_a_fault_applies_to_connections_already_open_and_new_ones(proxy: FaultProxy) -> None:
    with _connect(proxy) as old:
        _rtt(old)
        proxy.latency(60)
        with _connect(proxy) as new:
            assert _rtt(old) >= 0.06
            assert _rtt(new) >= 0.06


def test_blackhole_swallows_data_but_keeps_the_connection(proxy: FaultProxy) -> None:
    with _connect(proxy, timeout=0.3) as sock:
        _rtt(sock)
        toxic = proxy.blackhole()
        sock.sendall(b"lost")
        with pytest.raises(TimeoutError):
            sock.recv(10)
        assert len(proxy.connections()) == 1, "the connection stays open"
        proxy.remove(toxic)
        sock.settimeout(10)  # generous for a loaded machine: it answers, and only "back"
        _rtt(sock, b"back")


def test_bandwidth_limits_throughput(proxy: FaultProxy) -> None:
    proxy.add(Bandwidth(800))  # 100 kB/s downstream
    with _connect(proxy) as sock:
        payload = os.urandom(30_000)
        start = time.monotonic()
        sock.sendall(payload)
        assert _recv_exactly(sock, len(payload)) == payload
        elapsed = time.monotonic() - start
    # Throttled (30 kB at 100 kB/s), and not by far more than asked (loose: shared CPU)
    assert 0.25 <= elapsed < 3.0, elapsed


def test_slicer_delivers_small_delayed_pieces(proxy: FaultProxy) -> None:
    proxy.slicer(10, variation=2, delay_us=20_000)
    with _connect(proxy) as sock:
        start = time.monotonic()
        sock.sendall(b"x" * 100)
        sizes = []
        while sum(sizes) < 100:
            sizes.append(len(sock.recv(100)))
        elapsed = time.monotonic() - start
    assert len(sizes) >= 5 and max(sizes) <= 40
    assert elapsed >= 0.12


def test_limit_data_closes_after_that_many_bytes(proxy: FaultProxy) -> None:
    proxy.limit_data(1000)
    with _connect(proxy) as sock:
        sock.sendall(b"a" * 600)
        assert _recv_exactly(sock, 600) == b"a" * 600
        sock.sendall(b"b" * 600)
        assert _recv_exactly(sock, 600) == b"b" * 400, "truncated at the limit, then closed"
        assert sock.recv(10) == b""


def test_slow_close_delays_passing_on_the_close(proxy: FaultProxy) -> None:
    proxy.slow_close(300)
    with _connect(proxy) as sock:
        start = time.monotonic()
        sock.sendall(b"CLOSE")  # the echo server closes its side
        assert sock.recv(10) == b""
        assert time.monotonic() - start >= 0.3


def test_cut_closes_every_connection_and_clients_can_reconnect(proxy: FaultProxy) -> None:
    socks = [_connect(proxy) for _ in range(3)]
    for s in socks:
        _rtt(s)
    assert proxy.cut() == 3
    for s in socks:
        try:
            assert s.recv(10) == b""
        except ConnectionResetError:
            pass
        s.close()
    with _connect(proxy) as again:
        _rtt(again)  # a new connection is served
        # Asked while it is open: once closed, the proxy drops it from the list whenever
        # it notices (under load, before or after this line).
        assert [c.index for c in proxy.connections()] == [3]


def test_reset_sends_rst(proxy: FaultProxy) -> None:
    with _connect(proxy) as sock:
        _rtt(sock)
        assert proxy.reset() == 1
        with pytest.raises(ConnectionResetError):
            sock.recv(10)
            sock.sendall(b"more")
            sock.recv(10)


def test_select_by_index_and_label_hits_only_those(proxy: FaultProxy) -> None:
    consumer, results = _connect(proxy), _connect(proxy)
    try:
        _rtt(consumer), _rtt(results)
        port = consumer.getsockname()[1]
        assert proxy.set_label("consumer", where=lambda c: c.client_port == port) == 1
        # A delay far above a loaded machine's noise: an untouched connection is well under.
        with proxy.fault(Latency(1000), label="consumer"):
            assert _rtt(consumer) >= 1.0 and _rtt(results) < 0.5
        with proxy.fault(Latency(1000), connections=[1]):
            assert _rtt(results) >= 1.0 and _rtt(consumer) < 0.5
        assert proxy.cut(label="consumer") == 1
        assert consumer.recv(10) == b""
        assert _rtt(results) < 0.5, "the other connection is untouched"
    finally:
        consumer.close()
        results.close()


def test_down_refuses_then_up_accepts_on_the_same_port(proxy: FaultProxy) -> None:
    port = proxy.port
    with _connect(proxy) as open_one:
        _rtt(open_one)
        proxy.down()
        assert not proxy.enabled
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1)
        _rtt(open_one)  # open connections survive down() without cut: it still answers
        proxy.up()
    assert proxy.port == port
    with _connect(proxy) as sock:
        _rtt(sock)  # served again


def test_upstream_down_closes_the_client(unused_port: int) -> None:
    with FaultProxy(("127.0.0.1", unused_port)) as proxy, _connect(proxy) as sock:
        assert sock.recv(10) == b""


@pytest.fixture
def unused_port() -> int:
    from chaos.net import free_port

    return free_port()


def test_faults_switch_on_and_off_cleanly_under_traffic(proxy: FaultProxy) -> None:
    with _connect(proxy) as sock:
        for i in range(30):
            toxics = [proxy.latency(5), proxy.slicer(300, delay_us=100)] if i % 2 else []
            payload = os.urandom(5000)
            sock.sendall(payload)
            assert _recv_exactly(sock, len(payload)) == payload
            for toxic in toxics:
                proxy.remove(toxic)
    assert proxy.toxics() == []


def test_every_control_is_journaled(proxy: FaultProxy) -> None:
    assert proxy.journal is not None
    toxic = proxy.latency(10)
    proxy.remove(toxic)
    proxy.cut()
    proxy.down()
    proxy.up()
    kinds = [r.kind for r in proxy.journal.records]
    assert kinds == ["proxy-add", "proxy-remove", "proxy-cut", "proxy-down", "proxy-up"]
    assert proxy.journal.records[0].detail["type"] == "latency"


def test_cut_connections_injector_on_a_schedule(proxy: FaultProxy) -> None:
    journal = Journal()
    sock = _connect(proxy)
    _rtt(sock)
    Runner(at([0, 0]), CutConnections(proxy, journal=journal)).run()
    assert [r.outcome for r in journal.records] == ["ok", "no-target"]
    assert journal.records[0].detail == {"closed": 1}
    sock.close()


def test_timed_fault_switches_itself_off(proxy: FaultProxy) -> None:
    journal = Journal()
    injector = TimedFault(proxy, Blackhole(), duration=0.2, journal=journal)
    assert injector.inject().outcome == "ok"
    assert injector.inject().outcome == "no-target", "already on"
    wait_until(lambda: not proxy.toxics(), 5, what="the fault to switch off")
    assert [r.kind for r in journal.records] == [
        "proxy-blackhole",
        "proxy-blackhole",
        "proxy-blackhole-off",
    ]
    injector.inject()
    injector.close()
    assert proxy.toxics() == []


def test_bad_input_is_explained(echo_server: tuple[str, int]) -> None:
    with pytest.raises(ProxyError, match="not loopback"):
        FaultProxy("10.0.0.1:6379")
    with pytest.raises(ProxyError, match=r"127\.0\.0\.1:PORT"):
        parse_address("localhost")
    with pytest.raises(ProxyError, match="latency ms must be >= 0"):
        Latency(-1)
    with pytest.raises(ProxyError, match="unknown fault type 'lag'"):
        fault_from_json("lag", {})
    with pytest.raises(ProxyError, match=r"has no attribute.*latency.*takes jitter, ms"):
        fault_from_json("latency", {"latency": 5})
    with pytest.raises(ProxyError, match="not running"):
        FaultProxy(echo_server).latency(5)
    with FaultProxy(echo_server) as proxy:
        proxy.latency(1, name="x")
        with pytest.raises(ProxyError, match="already on"):
            proxy.latency(1, name="x")
        with pytest.raises(ProxyError, match="no fault named 'y'"):
            proxy.remove("y")
        with pytest.raises(ProxyError, match="direction must be one of"):
            proxy.latency(1, direction="sideways")


def test_select_combines_criteria() -> None:
    from chaos.faults import ConnectionInfo

    info = ConnectionInfo(2, ("127.0.0.1", 5000), "consumer")
    assert Select.of([2], "consumer").matches(info)
    assert not Select.of([1], "consumer").matches(info)
    assert not Select.of(label="results").matches(info)
    assert Select.of(where=lambda c: c.client_port == 5000).matches(info)
