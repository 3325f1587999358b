"""Suites and their matrices, read from ``scenarios/*.toml``.

A suite file::

    [suite]
    name = "kill-children"
    description = "..."
    duration = 10            # seconds of publishing and faults
    rate = 150               # tasks published per second
    max_time = 120           # the whole cell, drain included, never runs longer

    [workload]               # weights of the stress workload's kinds (stress.workload.KINDS)
    noop = 4
    sleep = 4
    [workload.params]
    sleep = [0.02, 0.3]

    [workload.canvas]        # optional: publish canvases of those kinds (stress.canvas)
    chain = 2
    chord = 1

    [[faults]]
    kind = "kill-children"   # see stress.faults.KINDS
    schedule = "poisson {kill_rate}/s"   # chaos's schedule syntax; {axis} is the cell's value
    # transports = ["redis", "amqp"]     # only in these cells (a proxy fault: not sqlite)

    [matrix]
    combine = "pairwise"     # every pair of axis values in some cell; or "product"
    transport = ["redis", "amqp", "sqlite"]
    pool = ["fair", "fast"]

    [oracles]
    min_kills_of_running = 5

App teams name their own tasks in ``[workload]`` with ``tasks``: a list of tables with
``name``, ``args`` (a list of argument lists, or ``strategy``: an expression over
``hypothesis.strategies`` as ``st``), ``weight`` and ``expect`` (``ok``, ``error``, ``any``).
"""

from __future__ import annotations

import itertools
import os
import string
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stress.errors import ScenarioError

__all__ = ["AXES", "DEFAULT_CELL", "Cell", "Suite", "cells_of", "find_suites", "load_suite",
           "named_axes", "parse_cell", "scenarios_dir"]

AXES: dict[str, tuple[type, tuple[Any, ...] | None]] = {
    "transport": (str, ("redis", "amqp", "sqlite")),
    "pool": (str, ("fair", "fast")),
    "max_tasks_per_child": (int, None),
    "acks": (str, ("early", "late", "late-reject")),
    "concurrency": (int, None),
    "kill_rate": (float, None),
}
DEFAULT_CELL: dict[str, Any] = {"transport": "redis", "pool": "fair", "max_tasks_per_child": 0,
                                "acks": "early", "concurrency": 2, "kill_rate": 10.0}


@dataclass(frozen=True)
class Cell:
    """One configuration of the matrix; ``id`` stays the same between runs.

    ``params`` holds a value for every axis (the worker needs them all); ``named`` lists the
    axes the id shows: a suite's cells are named by the axes it uses (``named_axes``), so a
    kill-main cell is not called ``kill_rate=10``. ``None`` names every axis in ``params``."""

    params: Mapping[str, Any]
    named: tuple[str, ...] | None = None

    @property
    def id(self) -> str:
        """The named axes in their order, then any other parameter (an explored case's
        pool type, lease, ...) by name."""
        known = [f"{k}={_show(self.params[k])}" for k in AXES
                 if k in self.params and (self.named is None or k in self.named)]
        extra = [f"{k}={_show(self.params[k])}" for k in sorted(self.params) if k not in AXES]
        return ",".join(known + extra)

    @classmethod
    def recorded(cls, params: Mapping[str, Any], cell_id: str) -> Cell:
        """The cell a report recorded, named as it was then (a report written before cells
        were named by their suite's axes names every axis)."""
        shown = {part.partition("=")[0] for part in cell_id.split(",")}
        return cls(params, tuple(k for k in AXES if k in shown))

    @property
    def children(self) -> int:
        """The pool children a healthy worker has: none for the solo and threads pools."""
        if self.params.get("pool_type", "prefork") != "prefork":
            return 0
        return int(self.params["concurrency"])

    def __getitem__(self, key: str) -> Any:
        return self.params[key]


def _show(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass
class Suite:
    name: str
    description: str
    path: Path
    duration: float = 10.0
    rate: float = 100.0
    max_time: float = 180.0
    workload: dict[str, float] = field(default_factory=dict)
    workload_params: dict[str, Any] = field(default_factory=dict)
    canvas: dict[str, float] = field(default_factory=dict)  # canvas shape weights
    app_tasks: list[dict[str, Any]] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)
    matrix: dict[str, list[Any]] = field(default_factory=dict)
    combine: str = "pairwise"
    oracles: dict[str, Any] = field(default_factory=dict)
    worker_args: list[str] = field(default_factory=list)
    worker_env: dict[str, str] = field(default_factory=dict)

    def faults_for(self, transport: str) -> list[dict[str, Any]]:
        """The faults a cell on ``transport`` runs: those without ``transports``, and those
        that list it (a connection cut needs a networked broker: not the embedded SQLite)."""
        return [f for f in self.faults if transport in f.get("transports", (transport,))]


def scenarios_dir() -> Path:
    """``TASKQ_STRESS_SCENARIOS``, else ``scenarios/`` beside the ``stress`` package."""
    env = os.environ.get("TASKQ_STRESS_SCENARIOS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "scenarios"


def find_suites(directory: Path | None = None) -> dict[str, Path]:
    directory = directory or scenarios_dir()
    found: dict[str, Path] = {}
    for path in sorted(directory.glob("*.toml")):
        found[path.stem] = path
    return found


def _typed(axis: str, value: Any, where: str) -> Any:
    kind, allowed = AXES[axis]
    try:
        typed = kind(value)
    except (TypeError, ValueError):
        raise ScenarioError(f"{where}: {axis}={value!r} is not a {kind.__name__}") from None
    if allowed is not None and typed not in allowed:
        raise ScenarioError(f"{where}: {axis}={value!r}; expected one of {', '.join(allowed)}")
    if kind in (int, float) and typed < 0:
        raise ScenarioError(f"{where}: {axis}={value!r} must not be negative")
    return typed


def parse_matrix(table: Mapping[str, Any], where: str) -> tuple[dict[str, list[Any]], str]:
    combine = str(table.get("combine", "pairwise"))
    if combine not in ("pairwise", "product"):
        raise ScenarioError(f"{where}: matrix combine={combine!r}; use 'pairwise' or 'product'")
    axes: dict[str, list[Any]] = {}
    for key, values in table.items():
        if key == "combine":
            continue
        if key not in AXES:
            raise ScenarioError(f"{where}: unknown matrix axis {key!r}; known: "
                                f"{', '.join(AXES)}")
        values = values if isinstance(values, list) else [values]
        if not values:
            raise ScenarioError(f"{where}: matrix axis {key!r} has no values")
        axes[key] = [_typed(key, v, where) for v in values]
    return axes, combine


def load_suite(name_or_path: str, directory: Path | None = None) -> Suite:
    path = Path(name_or_path)
    if path.suffix != ".toml":
        suites = find_suites(directory)
        if name_or_path not in suites:
            known = ", ".join(suites) or "none"
            raise ScenarioError(f"no suite {name_or_path!r} in {directory or scenarios_dir()}; "
                                f"known suites: {known} (taskq-stress list)")
        path = suites[name_or_path]
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"cannot read suite file {path}: {exc}") from None
    head = data.get("suite", {})
    where = str(path)
    workload = dict(data.get("workload", {}))
    params = workload.pop("params", {})
    app_tasks = workload.pop("tasks", [])
    canvas = _canvas_weights(workload.pop("canvas", {}), where=str(path))
    matrix, combine = parse_matrix(data.get("matrix", {}), where)
    faults = data.get("faults", [])
    from stress.faults import KINDS

    for fault in faults:
        if fault.get("kind") not in KINDS:
            raise ScenarioError(f"{where}: fault kind {fault.get('kind')!r}; known: "
                                f"{', '.join(KINDS)}")
        for transport in fault.get("transports", []):
            _typed("transport", transport, f"{where}: fault {fault['kind']!r} transports")
    worker = data.get("worker", {})
    return Suite(
        name=str(head.get("name", path.stem)), description=str(head.get("description", "")),
        path=path, duration=float(head.get("duration", 10)), rate=float(head.get("rate", 100)),
        max_time=float(head.get("max_time", 180)),
        workload={k: float(v) for k, v in workload.items()}, workload_params=params,
        canvas=canvas, app_tasks=list(app_tasks), faults=list(faults), matrix=matrix,
        combine=combine,
        oracles=dict(data.get("oracles", {})),
        worker_args=[str(a) for a in worker.get("args", [])],
        worker_env={str(k): str(v) for k, v in worker.get("env", {}).items()},
    )


def _canvas_weights(table: Mapping[str, Any], where: str) -> dict[str, float]:
    from stress.canvas import SHAPES

    unknown = sorted(set(table) - set(SHAPES))
    if unknown:
        raise ScenarioError(f"{where}: unknown canvas shapes {unknown} in [workload.canvas]; "
                            f"known: {', '.join(SHAPES)}")
    try:
        return {k: float(v) for k, v in table.items()}
    except (TypeError, ValueError):
        raise ScenarioError(f"{where}: [workload.canvas] takes a weight (a number) per "
                            "shape") from None


def apply_workload(suite: Suite, path: Path) -> None:
    """Replace the suite's workload with the ``[workload]`` table of ``path`` (an app team's
    own tasks, ``[[workload.tasks]]``)."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"cannot read workload file {path}: {exc}") from None
    workload = dict(data.get("workload", {}))
    if not workload:
        raise ScenarioError(f"{path} has no [workload] table; name your tasks in "
                            "[[workload.tasks]] (see examples/shop/taskq-stress.toml)")
    if "canvas" in workload:
        raise ScenarioError(f"{path}: [workload.canvas] draws canvases of the stress "
                            "workload's own kinds; an app's [workload] cannot have one")
    suite.canvas = {}
    suite.workload_params = workload.pop("params", {})
    suite.app_tasks = list(workload.pop("tasks", []))
    suite.workload = {k: float(v) for k, v in workload.items()}


def _pairwise(axes: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """A small set of rows covering every pair of values of every two axes (greedy, stable)."""
    names = list(axes)
    if len(names) < 2:
        return [dict(zip(names, row, strict=True)) for row in itertools.product(*axes.values())]
    uncovered = {(a, va, b, vb) for a, b in itertools.combinations(names, 2)
                 for va in axes[a] for vb in axes[b]}
    rows: list[dict[str, Any]] = []
    candidates = [dict(zip(names, row, strict=True))
                  for row in itertools.product(*axes.values())]
    pairs = list(itertools.combinations(names, 2))

    def gain(row: dict[str, Any], uncovered: set[tuple[Any, ...]]) -> int:
        return sum((a, row[a], b, row[b]) in uncovered for a, b in pairs)

    while uncovered:
        best = max(candidates, key=lambda row: gain(row, uncovered))  # first best: stable
        rows.append(best)
        uncovered -= {(a, best[a], b, best[b]) for a, b in itertools.combinations(names, 2)}
    return rows


def named_axes(matrix: Iterable[str], faults: Iterable[Mapping[str, Any]] = ()
               ) -> tuple[str, ...]:
    """The axes that name a suite's cells: the transport (every cell runs on one broker), the
    axes its matrix lists, and those its fault schedules read (``{kill_rate}``), in AXES
    order. An axis with one value stays in the name, so ids do not change when a ``--matrix``
    adds a value."""
    used = set(matrix) | {"transport"}
    for fault in faults:
        used |= {name for _, name, _, _ in string.Formatter().parse(
            str(fault.get("schedule", ""))) if name}
    return tuple(k for k in AXES if k in used)


def cells_of(axes: Mapping[str, list[Any]], combine: str = "pairwise",
             faults: Iterable[Mapping[str, Any]] = ()) -> list[Cell]:
    """The matrix's cells (every axis it does not list at its default), named by
    ``named_axes``."""
    full = {k: list(axes.get(k, [DEFAULT_CELL[k]])) for k in AXES}
    rows = (_pairwise(full) if combine == "pairwise"
            else [dict(zip(full, row, strict=True)) for row in itertools.product(*full.values())])
    named = named_axes(axes, faults)
    return [Cell(row, named) for row in rows]


def parse_cell(text: str, base: Mapping[str, Any] | None = None,
               named: Iterable[str] | None = None) -> Cell:
    """``transport=redis,pool=fast`` on top of ``base`` (the defaults), named by ``named``
    and the axes ``text`` sets (every axis when ``named`` is None)."""
    params = dict(base or DEFAULT_CELL)
    given: set[str] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in AXES:
            raise ScenarioError(f"--cell {text!r}: expected k=v pairs with k one of "
                                f"{', '.join(AXES)}")
        params[key.strip()] = _typed(key.strip(), value.strip(), "--cell")
        given.add(key.strip())
    if named is None:
        return Cell(params)
    shown = given | set(named) | {"transport"}
    return Cell(params, tuple(k for k in AXES if k in shown))


def restrict(cells: Iterable[Cell], transport: str) -> list[Cell]:
    """The cells for one transport (``--broker``), de-duplicated."""
    seen: dict[str, Cell] = {}
    for cell in cells:
        moved = Cell({**cell.params, "transport": transport}, cell.named)
        seen.setdefault(moved.id, moved)
    return list(seen.values())
