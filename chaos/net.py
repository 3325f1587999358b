"""Loopback port helpers: a free port for a private broker or proxy, and a port probe.

:func:`free_port` picks a random port *below* the kernel's ephemeral range, so a port
chosen for a broker that is later stopped and restarted is not handed meanwhile to some
client socket as its local port, and parallel test workers rarely pick the same one.
"""

from __future__ import annotations

import random
import socket

__all__ = ["free_port", "port_open"]

_LOW = 20000
_FALLBACK_EPHEMERAL_LOW = 32768


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
            return int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return _FALLBACK_EPHEMERAL_LOW


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", *, rng: random.Random | None = None) -> int:
    """A port on ``host`` nobody listens on now, outside the ephemeral range if possible."""
    pick = rng or random.SystemRandom()
    high = _ephemeral_low()
    if high - _LOW > 1000:
        for _ in range(200):
            port = pick.randrange(_LOW, high)
            if _bindable(host, port) and not port_open(host, port, timeout=0.2):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, *, timeout: float = 1.0) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
