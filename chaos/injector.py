"""The injector contract: a small object with a ``kind`` and an ``inject()``.

Subclasses implement :meth:`Injector.apply`, which does the fault and says what came of
it as an :class:`Outcome`. :meth:`Injector.inject` wraps it: it turns any unexpected
exception into an ``"error"`` outcome (an injector never raises into the runner or the
test on a vanished target), writes the journal record and returns it.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from chaos.journal import FaultRecord, Journal

__all__ = ["Injector", "Outcome", "make_rng"]


@dataclass(frozen=True)
class Outcome:
    """What one injection did: ``outcome`` is one of :data:`chaos.journal.OUTCOMES`."""

    outcome: str
    target: str
    params: Mapping[str, Any] = field(default_factory=dict)
    detail: Mapping[str, Any] = field(default_factory=dict)


def make_rng(seed: int | random.Random | None) -> random.Random:
    """A private RNG: the same seed gives the same target choices."""
    if isinstance(seed, random.Random):
        return seed
    return random.Random(seed)


class Injector(ABC):
    """Base class of every injector.

    ``journal`` defaults to a memory-only one, so ``inject()`` always returns a record.
    ``kind`` names the fault in the journal; instances may override the class default.
    """

    kind: ClassVar[str] = "fault"

    def __init__(self, *, journal: Journal | None = None, kind: str | None = None) -> None:
        self.journal = journal if journal is not None else Journal()
        self._kind = kind or type(self).kind

    @property
    def name(self) -> str:
        """The kind this instance writes to the journal."""
        return self._kind

    @abstractmethod
    def apply(self) -> Outcome:
        """Do the fault once; report targets that vanished as outcomes, not exceptions."""

    def describe(self) -> str:
        """The target, for the journal's error records."""
        return "?"

    def inject(self, *, offset: float | None = None) -> FaultRecord:
        """Apply the fault once, journal it, and return the record."""
        try:
            result = self.apply()
        except Exception as exc:  # recorded, never raised into the caller
            result = Outcome(
                "error", self.describe(), detail={"error": f"{type(exc).__name__}: {exc}"}
            )
        return self.journal.record(
            self._kind,
            result.target,
            result.outcome,
            params=result.params,
            detail=result.detail,
            offset=offset,
        )

    def close(self) -> None:  # noqa: B027 -- optional hook, most injectors leave nothing on
        """Undo anything still in effect (thaw, switch a fault off). Default: nothing."""

    def __enter__(self) -> Injector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
