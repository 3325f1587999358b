"""Worker state that outlives a connection: revoked ids, persisted with ``--statedb``."""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from kombu.clocks import LamportClock

logger = logging.getLogger("taskq.worker.state")

REVOKES_MAX = 50_000
REVOKE_EXPIRES = 10_800.0  # 3 hours, as Celery


class RevokedSet:
    """Bounded set of revoked task ids that forgets entries after ``expires`` seconds."""

    def __init__(self, maxlen: int = REVOKES_MAX, expires: float = REVOKE_EXPIRES,
                 clock: Callable[[], float] = time.time) -> None:
        self.maxlen = maxlen
        self.expires = expires
        self.clock = clock
        self._items: collections.OrderedDict[str, float] = collections.OrderedDict()

    def add(self, task_id: str, when: float | None = None) -> None:
        self._items[task_id] = self.clock() if when is None else when
        self._items.move_to_end(task_id)
        self._purge()

    def update(self, ids: Iterable[str]) -> None:
        for task_id in ids:
            self.add(task_id)

    def _purge(self) -> None:
        horizon = self.clock() - self.expires
        while self._items:
            oldest_id, stamp = next(iter(self._items.items()))
            if stamp >= horizon and len(self._items) <= self.maxlen:
                break
            del self._items[oldest_id]

    def __contains__(self, task_id: object) -> bool:
        stamp = self._items.get(task_id) if isinstance(task_id, str) else None
        return stamp is not None and stamp >= self.clock() - self.expires

    def __len__(self) -> int:
        return len(self._items)

    def as_dict(self) -> dict[str, float]:
        self._purge()
        return dict(self._items)


def revoked_by_stamps(headers: Mapping[str, Any],
                      revoked_stamps: Mapping[str, Sequence[Any]]) -> bool:
    """A message whose Celery stamps (``stamped_headers`` naming keys of ``stamps``) carry a
    value revoked by ``revoke_by_stamped_headers``, matched as Celery's worker matches them."""
    if not revoked_stamps:
        return False
    names = headers.get("stamped_headers") or ()
    stamps = headers.get("stamps") or {}
    if not isinstance(names, list | tuple) or not isinstance(stamps, Mapping):
        return False
    for name in names:
        revoked = revoked_stamps.get(name)
        value = stamps.get(name)
        if revoked is None or value is None:
            continue
        values = value if isinstance(value, list | tuple) else [value]
        if any(v in revoked for v in values if isinstance(v, str | int | float | bool)):
            return True
    return False


class StateDB:
    """``--statedb FILE``: revoked ids (later also the clock) as JSON, written atomically.

    The worker does not write it on every revoke (an fsync on the main loop): ``changed()``
    marks it dirty, ``snapshot()`` (on the loop) takes what to write when it is, and
    ``write(snapshot)`` (off the loop) writes it; ``save()`` at shutdown writes it at once.
    """

    SAVE_INTERVAL = 2.0  # seconds between writes of a changed state

    def __init__(self, path: str, revoked: RevokedSet, clock: LamportClock | None = None
                 ) -> None:
        self.path = path
        self.revoked = revoked
        self.clock = clock
        self.dirty = False

    def changed(self) -> None:
        self.dirty = True

    def snapshot(self) -> dict[str, object] | None:
        """What to write, when something changed since the last snapshot (loop thread)."""
        if not self.dirty:
            return None
        self.dirty = False
        clock = self.clock.forward() if self.clock is not None else 0
        return {"version": 1, "revoked": self.revoked.as_dict(), "clock": clock}

    def load(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            logger.error("statedb %s cannot be read (%s); starting with an empty state",
                         self.path, exc)
            return
        for task_id, stamp in (data.get("revoked") or {}).items():
            self.revoked.add(str(task_id), float(stamp))
        if self.clock is not None and isinstance(data.get("clock"), int):
            self.clock.adjust(data["clock"])

    def save(self) -> None:
        """Write the state now (shutdown: durable before the worker exits)."""
        self.dirty = True
        snapshot = self.snapshot()
        assert snapshot is not None
        self.write(snapshot)

    def write(self, snapshot: dict[str, object]) -> None:
        """Write ``snapshot`` atomically (any thread; the worker's writes are serialised on
        one offload lane, and the shutdown save runs after that lane has stopped)."""
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".statedb.", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(snapshot, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
