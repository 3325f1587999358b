"""Control a :class:`~chaos.proxy.FaultProxy` over a small local HTTP/JSON API.

The shape follows Toxiproxy's, so its habits carry over::

    GET    /proxy                       status: listen, upstream, enabled, toxics, connections
    GET    /toxics                      the faults that are on
    POST   /toxics                      {"type": "latency", "stream": "downstream",
                                         "attributes": {"ms": 100}, "name": "slow",
                                         "connections": [0], "label": "consumer"}
    DELETE /toxics/NAME                 switch one fault off
    DELETE /toxics                      switch every fault off
    POST   /cut   | /reset              {"connections": [0, 2]} or {"label": ...} or {}
    POST   /down  | /up                 stop / resume accepting ({"cut": true} closes open ones)
    POST   /label                       {"label": "consumer", "connections": [1]}

Errors come back as ``{"error": "..."}`` with status 400 (bad request) or 404.
:class:`ProxyClient` is the matching client (stdlib only). The server listens on loopback.
"""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from chaos.errors import ProxyError
from chaos.faults import fault_from_json
from chaos.proxy import FaultProxy, parse_address

__all__ = ["ProxyAPI", "ProxyClient"]


def _status(proxy: FaultProxy) -> dict[str, Any]:
    return {
        "listen": proxy.address,
        "upstream": f"{proxy.upstream[0]}:{proxy.upstream[1]}",
        "enabled": proxy.enabled,
        "toxics": [t.to_json() for t in proxy.toxics()],
        "connections": [
            {"index": c.index, "client": list(c.client), "label": c.label}
            for c in proxy.connections()
        ],
    }


def _selection(body: dict[str, Any]) -> dict[str, Any]:
    connections = body.get("connections")
    if connections is not None and not (
        isinstance(connections, list) and all(isinstance(i, int) for i in connections)
    ):
        raise ProxyError(f"'connections' must be a list of connection indices, got {connections!r}")
    label = body.get("label")
    if label is not None and not isinstance(label, str):
        raise ProxyError(f"'label' must be a string, got {label!r}")
    return {"connections": connections, "label": label}


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # stdlib name
        return  # quiet: tests and the CLI print the journal instead

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if not length:
            return {}
        try:
            data = json.loads(self.rfile.read(length))
        except json.JSONDecodeError as exc:
            raise ProxyError(f"request body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ProxyError("request body must be a JSON object")
        return data

    def _reply(self, status: int, payload: Any = None) -> None:
        raw = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _dispatch(self, method: str) -> None:
        proxy = self.server.proxy
        path = self.path.rstrip("/") or "/"
        try:
            if method == "GET" and path == "/proxy":
                return self._reply(200, _status(proxy))
            if method == "GET" and path == "/toxics":
                return self._reply(200, [t.to_json() for t in proxy.toxics()])
            if method == "POST" and path == "/toxics":
                body = self._body()
                fault = fault_from_json(str(body.get("type")), body.get("attributes") or {})
                toxic = proxy.add(
                    fault, direction=body.get("stream"), name=body.get("name"), **_selection(body)
                )
                return self._reply(200, toxic.to_json())
            if method == "DELETE" and path == "/toxics":
                proxy.clear()
                return self._reply(204)
            if method == "DELETE" and path.startswith("/toxics/"):
                proxy.remove(path.removeprefix("/toxics/"))
                return self._reply(204)
            if method == "POST" and path in ("/cut", "/reset"):
                action = proxy.cut if path == "/cut" else proxy.reset
                return self._reply(200, {"closed": action(**_selection(self._body()))})
            if method == "POST" and path == "/down":
                proxy.down(cut=bool(self._body().get("cut", False)))
                return self._reply(200, {"enabled": proxy.enabled})
            if method == "POST" and path == "/up":
                proxy.up()
                return self._reply(200, {"enabled": proxy.enabled})
            if method == "POST" and path == "/label":
                body = self._body()
                sel = _selection(body)
                labelled = proxy.set_label(str(body.get("label")), connections=sel["connections"])
                return self._reply(200, {"labelled": labelled})
        except ProxyError as exc:
            status = 404 if "no fault named" in str(exc) else 400
            return self._reply(status, {"error": str(exc)})
        return self._reply(404, {"error": f"no route {method} {self.path}"})

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], proxy: FaultProxy) -> None:
        self.proxy = proxy
        super().__init__(address, _Handler)


class ProxyAPI:
    """Serve a proxy's controls over HTTP on loopback (in a daemon thread)."""

    def __init__(self, proxy: FaultProxy, listen: str | tuple[str, int] = ("127.0.0.1", 0)):
        self.proxy = proxy
        self._address = parse_address(listen, what="API address")
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise ProxyError("the API is not running; call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> ProxyAPI:
        try:
            self._server = _Server(self._address, self.proxy)
        except OSError as exc:
            raise ProxyError(f"cannot listen on {self._address}: {exc}") from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="chaos-proxy-api",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def __enter__(self) -> ProxyAPI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class ProxyClient:
    """A client for :class:`ProxyAPI` (e.g. from another process)."""

    def __init__(self, base_url: str, *, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            with contextlib.suppress(json.JSONDecodeError, AttributeError):
                detail = json.loads(detail).get("error", detail)
            raise ProxyError(f"{method} {path} failed ({exc.code}): {detail}") from None
        except OSError as exc:
            raise ProxyError(f"cannot reach proxy API at {self.base_url}: {exc}") from exc
        return json.loads(raw) if raw else None

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", "/proxy")
        return result

    def toxics(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._request("GET", "/toxics")
        return result

    def add(
        self, type_name: str, stream: str | None = None, name: str | None = None, **attributes: Any
    ) -> dict[str, Any]:
        """Switch a fault on; selection keys ``connections``/``label`` go in ``attributes``."""
        body: dict[str, Any] = {"type": type_name}
        for key in ("connections", "label"):
            if key in attributes:
                body[key] = attributes.pop(key)
        body.update({"attributes": attributes, "stream": stream, "name": name})
        result: dict[str, Any] = self._request("POST", "/toxics", body)
        return result

    def remove(self, name: str) -> None:
        self._request("DELETE", f"/toxics/{name}")

    def clear(self) -> None:
        self._request("DELETE", "/toxics")

    def cut(self, connections: list[int] | None = None, label: str | None = None) -> int:
        result = self._request("POST", "/cut", {"connections": connections, "label": label})
        return int(result["closed"])

    def reset(self, connections: list[int] | None = None, label: str | None = None) -> int:
        result = self._request("POST", "/reset", {"connections": connections, "label": label})
        return int(result["closed"])

    def down(self, cut: bool = False) -> None:
        self._request("POST", "/down", {"cut": cut})

    def up(self) -> None:
        self._request("POST", "/up", {})

    def label(self, label: str, connections: list[int]) -> int:
        result = self._request("POST", "/label", {"label": label, "connections": connections})
        return int(result["labelled"])
