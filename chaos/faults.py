"""Network faults the proxy applies, and which connections they apply to.

A fault is a frozen value (``Latency(100, jitter=10)``). Switched on in a proxy it becomes
a :class:`Toxic`: the fault plus a name, a direction (``"upstream"`` is client → broker,
``"downstream"`` is broker → client, or ``"both"``) and a :class:`Select` (connection
indices, a label, or a predicate over :class:`ConnectionInfo`). Faults round-trip through
JSON in Toxiproxy's shape: ``{"type": "latency", "stream": "downstream",
"attributes": {"ms": 100, "jitter": 10}}``.

Each fault's default direction follows Toxiproxy (downstream), except ``blackhole``,
which swallows both directions unless told otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from chaos.errors import ProxyError

__all__ = [
    "DIRECTIONS",
    "Bandwidth",
    "Blackhole",
    "ConnectionInfo",
    "Fault",
    "Latency",
    "LimitData",
    "Select",
    "Slicer",
    "SlowClose",
    "Toxic",
    "fault_from_json",
]

DIRECTIONS = ("upstream", "downstream", "both")


def _check(name: str, value: float, *, positive: bool = False) -> None:
    ok = isinstance(value, int | float) and math.isfinite(value)
    ok = ok and (value > 0 if positive else value >= 0)
    if not ok:
        raise ProxyError(f"{name} must be {'> 0' if positive else '>= 0'}, got {value!r}")


@dataclass(frozen=True)
class Fault:
    """Base of all network faults; ``type`` is the JSON name."""

    type: ClassVar[str] = "fault"
    default_direction: ClassVar[str] = "downstream"

    def attributes(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Latency(Fault):
    """Delay every chunk by ``ms`` ± ``jitter`` milliseconds (order is kept)."""

    type: ClassVar[str] = "latency"
    ms: float
    jitter: float = 0.0

    def __post_init__(self) -> None:
        _check("latency ms", self.ms)
        _check("latency jitter", self.jitter)


@dataclass(frozen=True)
class Bandwidth(Fault):
    """Limit throughput to ``kbps`` kilobits per second (1 kbps = 125 bytes/s)."""

    type: ClassVar[str] = "bandwidth"
    kbps: float

    def __post_init__(self) -> None:
        _check("bandwidth kbps", self.kbps, positive=True)

    @property
    def bytes_per_second(self) -> float:
        return self.kbps * 125.0


@dataclass(frozen=True)
class Blackhole(Fault):
    """Swallow all data: connections stay open, nothing is forwarded (half-open peer)."""

    type: ClassVar[str] = "blackhole"
    default_direction: ClassVar[str] = "both"


@dataclass(frozen=True)
class SlowClose(Fault):
    """When one side closes, wait ``ms`` milliseconds before closing the other."""

    type: ClassVar[str] = "slow_close"
    ms: float

    def __post_init__(self) -> None:
        _check("slow_close ms", self.ms)


@dataclass(frozen=True)
class Slicer(Fault):
    """Forward data in pieces of ``average`` ± ``variation`` bytes, ``delay_us`` apart."""

    type: ClassVar[str] = "slicer"
    average: int
    variation: int = 0
    delay_us: int = 0

    def __post_init__(self) -> None:
        _check("slicer average", self.average, positive=True)
        _check("slicer variation", self.variation)
        _check("slicer delay_us", self.delay_us)
        if self.variation >= self.average:
            raise ProxyError("slicer variation must be smaller than its average size")


@dataclass(frozen=True)
class LimitData(Fault):
    """Close the connection once ``bytes`` bytes have passed in this direction."""

    type: ClassVar[str] = "limit_data"
    bytes: int

    def __post_init__(self) -> None:
        _check("limit_data bytes", self.bytes)


FAULT_TYPES: dict[str, type[Fault]] = {
    cls.type: cls for cls in (Latency, Bandwidth, Blackhole, SlowClose, Slicer, LimitData)
}


def fault_from_json(type_name: str, attributes: Mapping[str, Any] | None = None) -> Fault:
    """Build a fault from its JSON type and attributes, naming what is wrong if invalid."""
    cls = FAULT_TYPES.get(type_name)
    if cls is None:
        raise ProxyError(f"unknown fault type {type_name!r}; use one of {', '.join(FAULT_TYPES)}")
    allowed = {f.name for f in fields(cls)}
    unknown = set(attributes or {}) - allowed
    if unknown:
        raise ProxyError(
            f"{type_name} has no attribute(s) {', '.join(sorted(unknown))}; "
            f"it takes {', '.join(sorted(allowed)) or 'none'}"
        )
    try:
        return cls(**dict(attributes or {}))
    except TypeError as exc:
        raise ProxyError(f"bad attributes for {type_name}: {exc}") from None


@dataclass(frozen=True)
class ConnectionInfo:
    """A proxied connection as selectors see it. ``index`` counts accepts from 0."""

    index: int
    client: tuple[str, int]
    label: str | None = None

    @property
    def client_port(self) -> int:
        """The client's local port: match it with ``sock.getsockname()[1]`` in the client."""
        return self.client[1]


@dataclass(frozen=True)
class Select:
    """Which connections a fault or action applies to; every given criterion must match."""

    connections: frozenset[int] | None = None
    label: str | None = None
    where: Callable[[ConnectionInfo], bool] | None = None

    @classmethod
    def of(
        cls,
        connections: Iterable[int] | None = None,
        label: str | None = None,
        where: Callable[[ConnectionInfo], bool] | None = None,
    ) -> Select:
        return cls(None if connections is None else frozenset(connections), label, where)

    def matches(self, info: ConnectionInfo) -> bool:
        if self.connections is not None and info.index not in self.connections:
            return False
        if self.label is not None and info.label != self.label:
            return False
        return self.where is None or bool(self.where(info))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.connections is not None:
            out["connections"] = sorted(self.connections)
        if self.label is not None:
            out["label"] = self.label
        if self.where is not None:
            out["where"] = getattr(self.where, "__qualname__", "a predicate")
        return out


ALL = Select()


@dataclass(frozen=True)
class Toxic:
    """A fault switched on in a proxy."""

    name: str
    fault: Fault
    direction: str
    select: Select = ALL

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ProxyError(
                f"direction must be one of {', '.join(DIRECTIONS)}, got {self.direction!r}"
            )

    def applies(self, direction: str, info: ConnectionInfo) -> bool:
        return self.direction in (direction, "both") and self.select.matches(info)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.fault.type,
            "stream": self.direction,
            "attributes": self.fault.attributes(),
            **self.select.to_json(),
        }
