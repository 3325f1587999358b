"""Signatures: a task name with its arguments and call options, serializable as Celery's.

Only what ``link``/``link_error`` and an embedded ``chain`` need: ``task.s(...)``,
``task.si(...)``. Groups and chords come with the canvas work (see DESIGN.md: Scope).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Signature(dict[str, Any]):
    """A task call waiting to be made; a dict in Celery's signature layout."""

    def __init__(
        self,
        task: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        immutable: bool = False,
    ) -> None:
        super().__init__(
            task=task,
            args=list(args),
            kwargs=dict(kwargs or {}),
            options=dict(options or {}),
            subtask_type=None,
            immutable=immutable,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Signature:
        return cls(
            data["task"],
            data.get("args") or (),
            data.get("kwargs") or {},
            data.get("options") or {},
            bool(data.get("immutable", False)),
        )

    @property
    def name(self) -> str:
        return str(self["task"])

    def with_parent_result(self, result: Any) -> tuple[list[Any], dict[str, Any]]:
        """Arguments for calling this signature as a callback of a task that returned ``result``."""
        args = list(self.get("args") or [])
        if not self.get("immutable"):
            args = [result, *args]
        return args, dict(self.get("kwargs") or {})


def as_signatures(value: Any) -> tuple[Signature, ...]:
    """``link=`` and ``link_error=`` accept one signature or a list of them."""
    if value is None:
        return ()
    items = value if isinstance(value, list | tuple) else [value]
    sigs = []
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get("task"), str):
            raise TypeError(
                f"link/link_error expects signatures such as task.s(...), got {item!r}"
            )
        sigs.append(item if isinstance(item, Signature) else Signature.from_dict(item))
    return tuple(sigs)
