"""The corpus: shrunk failing cases saved as TOML cells, replayed as a regression suite.

One file per case (``stress-corpus/<name>.toml``)::

    [case]
    name = "c1a2b3c4d"
    seed = 1234            # the workload's and the faults' seed
    duration = 4.0         # seconds of publishing and faults
    rate = 5.0             # tasks per second
    sleep = [0.01, 0.2]    # the sleep tasks' range
    failed = ["deadlock"]  # the oracles it failed when it was found (for the reader)
    found = "..."          # when, against which worker, after how many cases

    [config]               # every axis of stress.explore.SPACE
    transport = "redis"
    pool_type = "prefork"
    ...

    [workload]             # task kinds and weights (stress.workload.KINDS)
    noop = 1.0

    [[faults]]             # the nemesis: kind, offset, and for timed faults how long
    kind = "cut-connections"
    at = 1.5

``taskq-stress run --corpus DIR`` (or one file) runs every case of it as a cell.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stress.errors import ScenarioError
from stress.explore import FAULT_KINDS, SPACE, TASK_KINDS, Case, FaultEvent

__all__ = ["dumps", "load_corpus", "loads", "save"]


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string is a JSON string


def _table(values: Mapping[str, Any]) -> list[str]:
    return [f"{k} = {_value(v)}" for k, v in values.items()]


def dumps(case: Case, meta: Mapping[str, Any] | None = None) -> str:
    head = {"name": case.name, "seed": case.seed, "duration": case.duration, "rate": case.rate,
            "sleep": list(case.sleep), "origin": case.origin, **dict(meta or {})}
    lines = [f"# {case.describe()}", "", "[case]", *_table(head), "", "[config]",
             *_table({k: case.config[k] for k in SPACE}), "", "[workload]",
             *_table(dict(case.workload))]
    for fault in case.faults:
        entry: dict[str, Any] = {"kind": fault.kind, "at": fault.at}
        if fault.duration:
            entry["duration"] = fault.duration
        if fault.ms:
            entry["ms"] = fault.ms
        lines += ["", "[[faults]]", *_table(entry)]
    return "\n".join(lines) + "\n"


def loads(text: str, where: str = "<corpus>") -> Case:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    head = data.get("case", {})
    config = {k: axis.default for k, axis in SPACE.items()}
    for key, value in data.get("config", {}).items():
        if key not in SPACE:
            raise ScenarioError(f"{where}: unknown axis {key!r}; known: {', '.join(SPACE)}")
        if value not in SPACE[key].values:
            raise ScenarioError(f"{where}: {key}={value!r}; expected one of "
                                f"{', '.join(map(str, SPACE[key].values))}")
        config[key] = value
    workload = {str(k): float(v) for k, v in data.get("workload", {}).items()}
    if not workload or set(workload) - set(TASK_KINDS):
        raise ScenarioError(f"{where}: [workload] needs task kinds among {', '.join(TASK_KINDS)}")
    faults = []
    for fault in data.get("faults", []):
        if fault.get("kind") not in FAULT_KINDS:
            raise ScenarioError(f"{where}: fault kind {fault.get('kind')!r}; known: "
                                f"{', '.join(FAULT_KINDS)}")
        faults.append(FaultEvent(str(fault["kind"]), float(fault.get("at", 1.0)),
                                 float(fault.get("duration", 0.0)), float(fault.get("ms", 0.0))))
    try:
        sleep = tuple(float(v) for v in head.get("sleep", (0.01, 0.2)))
        case = Case(config, workload, (sleep[0], sleep[1]), tuple(faults),
                    float(head.get("duration", 5.0)), float(head.get("rate", 5.0)),
                    int(head.get("seed", 0)), origin=str(head.get("origin", "corpus")),
                    notes={k: v for k, v in head.items()
                           if k not in ("seed", "duration", "rate", "sleep", "origin")})
    except (TypeError, ValueError, IndexError) as exc:
        raise ScenarioError(f"{where}: bad [case] table: {exc}") from None
    return case


def save(case: Case, directory: Path, meta: Mapping[str, Any] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{case.name}.toml"
    path.write_text(dumps(case, meta))
    return path


def load_corpus(path: Path) -> list[tuple[Path, Case]]:
    """Every case of a corpus folder (sorted by file name), or of one file."""
    files = [path] if path.is_file() else sorted(path.glob("*.toml"))
    if not path.exists():
        raise ScenarioError(f"no corpus at {path}")
    cases = []
    for file in files:
        try:
            text = file.read_text()
        except OSError as exc:
            raise ScenarioError(f"cannot read {file}: {exc}") from None
        cases.append((file, loads(text, str(file))))
    return cases
