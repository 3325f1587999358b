"""The proxy's HTTP/JSON control API (Toxiproxy-style) and its client."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from chaos.errors import ProxyError
from chaos.proxy import FaultProxy
from chaos.proxy_api import ProxyAPI, ProxyClient


@pytest.fixture
def controlled(echo_server: tuple[str, int]) -> Iterator[tuple[FaultProxy, ProxyClient]]:
    with FaultProxy(echo_server) as proxy, ProxyAPI(proxy) as api:
        yield proxy, ProxyClient(api.url)


def _rtt(sock: socket.socket) -> float:
    start = time.monotonic()
    sock.sendall(b"ping")
    assert sock.recv(10) == b"ping"
    return time.monotonic() - start


def test_add_list_remove_a_fault_over_http(controlled: tuple[FaultProxy, ProxyClient]) -> None:
    proxy, client = controlled
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
        _rtt(sock)
        # A delay far above a loaded machine's noise: removed, it is clearly gone.
        added = client.add("latency", stream="upstream", name="slow", ms=1000)
        assert added == {
            "name": "slow",
            "type": "latency",
            "stream": "upstream",
            "attributes": {"ms": 1000, "jitter": 0.0},
        }
        assert _rtt(sock) >= 1.0
        assert [t["name"] for t in client.toxics()] == ["slow"]
        client.remove("slow")
        assert _rtt(sock) < 0.5
        assert client.toxics() == []


def test_status_lists_connections_and_labels(controlled: tuple[FaultProxy, ProxyClient]) -> None:
    proxy, client = controlled
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
        _rtt(sock)
        assert client.label("consumer", [0]) == 1
        status = client.status()
        assert status["enabled"] is True
        assert status["upstream"].endswith(f":{proxy.upstream[1]}")
        assert status["connections"] == [
            {"index": 0, "client": ["127.0.0.1", sock.getsockname()[1]], "label": "consumer"}
        ]
        client.add("blackhole", label="consumer")
        assert client.status()["toxics"][0]["label"] == "consumer"


def test_cut_reset_down_up_over_http(controlled: tuple[FaultProxy, ProxyClient]) -> None:
    proxy, client = controlled
    socks = [socket.create_connection((proxy.host, proxy.port), timeout=5) for _ in range(2)]
    for s in socks:
        _rtt(s)
    assert client.cut(connections=[0]) == 1
    assert client.reset() == 1
    client.down()
    assert client.status()["enabled"] is False
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((proxy.host, proxy.port), timeout=1)
    client.up()
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as again:
        _rtt(again)  # it answers again
    for s in socks:
        s.close()


def test_errors_come_back_as_json_with_a_status(controlled: tuple[FaultProxy, ProxyClient]) -> None:
    _, client = controlled
    with pytest.raises(ProxyError, match=r"\(400\): unknown fault type 'lag'"):
        client.add("lag")
    with pytest.raises(ProxyError, match=r"\(404\): no fault named 'nope'"):
        client.remove("nope")
    with pytest.raises(ProxyError, match=r"\(400\): 'connections' must be a list"):
        client.cut(connections="all")  # type: ignore[arg-type]
    request = urllib.request.Request(client.base_url + "/nowhere", method="GET")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)
    assert json.loads(info.value.read())["error"] == "no route GET /nowhere"


def test_client_reports_an_unreachable_api() -> None:
    from chaos.net import free_port

    with pytest.raises(ProxyError, match="cannot reach proxy API"):
        ProxyClient(f"http://127.0.0.1:{free_port()}", timeout=1).status()
