"""Injectors that drive a :class:`~chaos.proxy.FaultProxy` from a schedule.

::

    Runner(every(10), CutConnections(proxy))                       # Celery's stress classic
    Runner(every(30), TimedFault(proxy, Blackhole(), duration=5))  # 5 s of silence per 30 s
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from chaos.errors import ProxyError
from chaos.faults import ConnectionInfo, Fault, Select, Toxic
from chaos.injector import Injector, Outcome
from chaos.journal import Journal
from chaos.proxy import FaultProxy

__all__ = ["CutConnections", "TimedFault"]


def _target(proxy: FaultProxy) -> str:
    return f"proxy {proxy.address}->{proxy.upstream[0]}:{proxy.upstream[1]}"


class CutConnections(Injector):
    """Close (or with ``reset``, RST) the selected open connections of a proxy."""

    kind = "proxy-cut"

    def __init__(
        self,
        proxy: FaultProxy,
        *,
        reset: bool = False,
        connections: Iterable[int] | None = None,
        label: str | None = None,
        where: Callable[[ConnectionInfo], bool] | None = None,
        journal: Journal | None = None,
    ) -> None:
        super().__init__(journal=journal, kind="proxy-reset" if reset else None)
        self.proxy = proxy
        self.reset = reset
        self.select = Select.of(connections, label, where)

    def describe(self) -> str:
        return _target(self.proxy)

    def apply(self) -> Outcome:
        action = self.proxy.reset if self.reset else self.proxy.cut
        closed = action(
            connections=self.select.connections,
            label=self.select.label,
            where=self.select.where,
            record=False,  # this injector journals the cut itself
        )
        return Outcome(
            "ok" if closed else "no-target",
            self.describe(),
            params=self.select.to_json(),
            detail={"closed": closed},
        )


class TimedFault(Injector):
    """Switch ``fault`` on for ``duration`` seconds at each injection.

    An injection while the previous one is still on extends nothing: it is journaled as
    ``no-target`` (the fault is already on). :meth:`close` switches it off at once.
    """

    kind = "proxy-fault"

    def __init__(
        self,
        proxy: FaultProxy,
        fault: Fault,
        *,
        duration: float,
        journal: Journal | None = None,
        **options: Any,
    ) -> None:
        super().__init__(journal=journal, kind=f"proxy-{fault.type}")
        if not duration > 0:
            raise ProxyError(f"duration must be > 0 seconds, got {duration!r}")
        self.proxy = proxy
        self.fault = fault
        self.duration = float(duration)
        self.options = options
        self._lock = threading.Lock()
        self._on: Toxic | None = None
        self._timer: threading.Timer | None = None

    def describe(self) -> str:
        return _target(self.proxy)

    def apply(self) -> Outcome:
        params = {"duration": self.duration, **self.fault.attributes()}
        with self._lock:
            if self._on is not None:
                return Outcome("no-target", self.describe(), params, {"reason": "already on"})
            toxic = self.proxy.add(self.fault, record=False, **self.options)
            self._on = toxic
            self._timer = threading.Timer(self.duration, self._switch_off, args=(toxic,))
            self._timer.daemon = True
            self._timer.start()
        return Outcome(
            "ok", self.describe(), params, {"name": toxic.name, "direction": toxic.direction}
        )

    def _switch_off(self, toxic: Toxic) -> None:
        with self._lock:
            if self._on is not toxic:
                return
            self._on = None
        try:
            self.proxy.remove(toxic, record=False)
        except ProxyError:
            return  # the proxy was stopped or the fault removed by hand
        self.journal.record(f"{self.name}-off", self.describe(), "ok", detail={"name": toxic.name})

    def close(self) -> None:
        with self._lock:
            timer, toxic = self._timer, self._on
        if timer is not None:
            timer.cancel()
        if toxic is not None:
            self._switch_off(toxic)
