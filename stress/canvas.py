"""The canvas workload: chains, groups, chords and nested canvases of the stress tasks.

A suite names the shapes it publishes, with weights, in ``[workload.canvas]``; the tasks in
them are drawn from its ``[workload]`` mix of kinds, and ``canvas_size = [2, 4]`` in
``[workload.params]`` bounds the steps of a chain and the members of a group or chord header.

=================  =========================================================================
shape              what is sent
=================  =========================================================================
``task``           one task (no canvas)
``chain``          ``a | b | c``
``group``          ``group(a, b, c)``
``chord``          ``chord([a, b, c], body)``
``group-in-chain`` ``a | group(b, c)``: the group is sent by the worker once ``a`` succeeded
``chord-in-chain`` ``a | chord([b, c], body) | d``
``chain-in-group`` ``group(a | b, c | d | e, f)``
=================  =========================================================================

Every task gets its id here, before anything is sent, and is immutable (``si``): no step takes
the value of the one before it, so any kind can follow any other. Once the broker has the
canvas, the publisher writes one ``canvas`` ledger entry naming each of its tasks
(:meth:`Node.record`) with

- ``after``: the tasks that must all have succeeded before it may start (the step before it
  in a chain; every part of a chord's header for its body);
- ``resent_by``: the tasks whose every successful run sends it again (a chain step's previous
  step; for a chord's body, what sends the chord: a redelivered header part must not);
- ``client``: the publisher sends it itself, so it also gets a ``published`` entry and the
  nothing-lost oracle judges it like any task. The worker sends the others.

:mod:`stress.canvas_oracle` judges them.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stress.workload import EXPECTED, Mix, task_name
from taskq import TaskQ
from taskq.canvas import Signature, chain, chord, group

__all__ = ["SHAPES", "Canvas", "CanvasMix", "Node"]


@dataclass(frozen=True)
class Node:
    """One task of a canvas and what its place in it promises."""

    id: str
    kind: str
    expect: str
    role: str
    after: tuple[str, ...] = ()
    resent_by: tuple[str, ...] = ()
    client: bool = False

    def record(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "expect": self.expect, "role": self.role,
                "after": list(self.after), "resent_by": list(self.resent_by),
                "client": self.client}


@dataclass
class Canvas:
    id: str
    shape: str
    signature: Signature
    nodes: list[Node] = field(default_factory=list)


class _Draft:
    """Draws the tasks of one canvas and notes each as a :class:`Node`."""

    def __init__(self, mix: Mix, app: TaskQ, rng: random.Random, size: tuple[int, int]) -> None:
        self.mix, self.app, self.rng, self.size = mix, app, rng, size
        self.nodes: list[Node] = []

    def count(self) -> int:
        return self.rng.randint(*self.size)

    def task(self, role: str, after: tuple[str, ...] = (), resent_by: tuple[str, ...] = (),
             client: bool = False) -> Signature:
        spec = self.mix.draw()
        node = Node(str(uuid.uuid4()), spec.kind, EXPECTED[spec.kind], role, after, resent_by,
                    client)
        self.nodes.append(node)
        return Signature(task_name(spec.kind), spec.args,
                         options={**(spec.options or {}), "task_id": node.id}, immutable=True,
                         app=self.app)

    def chain(self, steps: int, role: str, after: tuple[str, ...] = (),
              client: bool = True) -> list[Signature]:
        """Chain steps: the first sent by the client (or after ``after``), each next one by
        the step before it."""
        sigs = [self.task(f"{role}step 1/{steps}", after, after, client)]
        for n in range(2, steps + 1):
            before = (sigs[-1].id or "",)
            sigs.append(self.task(f"{role}step {n}/{steps}", before, before))
        return sigs

    def chord(self, role: str, after: tuple[str, ...] = ()) -> chord:
        """A chord whose header the client sends (or, after ``after``, the worker)."""
        parts = self.count()
        header = [self.task(f"{role}header {n}/{parts}", after, after, client=not after)
                  for n in range(1, parts + 1)]
        body = self.task(f"{role}body", tuple(s.id or "" for s in header), after)
        return chord(header, body, app=self.app)


def _task(d: _Draft) -> Signature:
    return d.task("task", client=True)


def _chain(d: _Draft) -> Signature:
    return chain(*d.chain(d.count(), ""), app=d.app)


def _group(d: _Draft) -> Signature:
    parts = d.count()
    return group(*(d.task(f"member {n}/{parts}", client=True) for n in range(1, parts + 1)),
                 app=d.app)


def _chord(d: _Draft) -> Signature:
    return d.chord("")


def _group_in_chain(d: _Draft) -> Signature:
    first = d.task("step 1/2", client=True)
    parts = d.count()
    after = (first.id or "",)
    members = [d.task(f"step 2/2: member {n}/{parts}", after, after)
               for n in range(1, parts + 1)]
    return chain(first, group(*members, app=d.app), app=d.app)


def _chord_in_chain(d: _Draft) -> Signature:
    first = d.task("step 1/3", client=True)
    middle = d.chord("step 2/3: ", (first.id or "",))
    body = middle.body.id or ""
    last = d.task("step 3/3", (body,), (body,))
    return chain(first, middle, last, app=d.app)


def _chain_in_group(d: _Draft) -> Signature:
    members = d.count()
    sigs: list[Signature] = []
    for n in range(1, members + 1):
        steps = d.rng.randint(1, d.size[1])
        if steps == 1:
            sigs.append(d.task(f"member {n}/{members}", client=True))
        else:
            sigs.append(chain(*d.chain(steps, f"member {n}/{members}: "), app=d.app))
    return group(*sigs, app=d.app)


SHAPES: dict[str, Callable[[_Draft], Signature]] = {
    "task": _task, "chain": _chain, "group": _group, "chord": _chord,
    "group-in-chain": _group_in_chain, "chord-in-chain": _chord_in_chain,
    "chain-in-group": _chain_in_group,
}


class CanvasMix:
    """Draws canvases from weighted shapes with a seeded generator (same seed, same run)."""

    def __init__(self, weights: Mapping[str, float], mix: Mix, app: TaskQ, seed: int,
                 params: Mapping[str, Any] | None = None) -> None:
        unknown = sorted(set(weights) - set(SHAPES))
        if unknown:
            raise ValueError(f"unknown canvas shapes {unknown}; known: {', '.join(SHAPES)}")
        self.shapes = [s for s, w in weights.items() if w > 0]
        if not self.shapes:
            raise ValueError("[workload.canvas] needs at least one shape with a weight above 0")
        self.weights = [float(weights[s]) for s in self.shapes]
        low, high = (params or {}).get("canvas_size", (2, 4))
        if not 1 <= int(low) <= int(high):
            raise ValueError(f"canvas_size = [{low}, {high}]: expected 1 <= low <= high")
        self.size = (int(low), int(high))
        self.mix, self.app = mix, app
        self.rng = random.Random(seed + 1)  # apart from the mix's own draws

    def draw(self) -> Canvas:
        shape = self.rng.choices(self.shapes, self.weights)[0]
        draft = _Draft(self.mix, self.app, self.rng, self.size)
        signature = SHAPES[shape](draft)
        return Canvas(str(uuid.uuid4()), shape, signature, draft.nodes)
