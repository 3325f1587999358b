"""Worker steps: the worker's parts, started in dependency order and stopped in reverse.

A step has a ``name``, the names it ``requires`` and ``start``/``stop`` methods taking the
worker. Users add their own with ``Worker(..., steps=[MyStep()])`` or ``app.steps.append``.
``taskq graph bootsteps`` prints the graph as Graphviz dot.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from taskq.errors import ConfigurationError

if TYPE_CHECKING:
    from taskq.worker.worker import Worker


class Step:
    """One part of the worker. Subclass and override ``start``/``stop``."""

    name: str = "step"
    requires: tuple[str, ...] = ()

    def start(self, worker: Worker) -> None:
        """Bring the part up; raise to abort the worker's start."""

    def stop(self, worker: Worker) -> None:
        """Take it down; called in reverse order, also after a failed start."""

    def __repr__(self) -> str:
        return f"<Step {self.name}>"


def order(steps: Iterable[Step]) -> list[Step]:
    """Steps in dependency order; ties keep the order given. Errors name the problem."""
    steps = list(steps)
    by_name: dict[str, Step] = {}
    for step in steps:
        if step.name in by_name:
            raise ConfigurationError(f"two worker steps are named {step.name!r}")
        by_name[step.name] = step
    for step in steps:
        for dep in step.requires:
            if dep not in by_name:
                raise ConfigurationError(
                    f"worker step {step.name!r} requires {dep!r}, which is not a step "
                    f"(steps: {', '.join(by_name)})"
                )
    done: list[Step] = []
    placed: set[str] = set()
    visiting: list[str] = []

    def visit(step: Step) -> None:
        if step.name in placed:
            return
        if step.name in visiting:
            cycle = " -> ".join([*visiting[visiting.index(step.name):], step.name])
            raise ConfigurationError(f"worker steps depend on each other in a cycle: {cycle}")
        visiting.append(step.name)
        for dep in step.requires:
            visit(by_name[dep])
        visiting.pop()
        placed.add(step.name)
        done.append(step)

    for step in steps:
        visit(step)
    return done


def to_dot(steps: Sequence[Step], name: str = "worker") -> str:
    """The step graph in Graphviz dot: an edge from each step to what it requires."""
    lines = [f'digraph "{name}" {{', "  rankdir=BT;", '  node [shape=box, fontname="sans"];']
    for step in order(steps):
        lines.append(f'  "{step.name}";')
    for step in steps:
        for dep in step.requires:
            lines.append(f'  "{step.name}" -> "{dep}";')
    lines.append("}")
    return "\n".join(lines) + "\n"


def describe(steps: Sequence[Step]) -> list[dict[str, Any]]:
    return [{"name": s.name, "requires": list(s.requires)} for s in order(steps)]
