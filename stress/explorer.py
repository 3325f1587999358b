"""``taskq-stress explore`` and ``run --corpus``: run drawn cases as cells, shrink a failure,
save it to the corpus, report coverage.

Each case runs through :class:`stress.cell.CellRun`, the runner ``taskq-stress run`` uses:
the same worker process, ledger, fault journal and oracles (plus explore's own, see
:func:`stress.oracles.explore_verdicts`). A case fails when an oracle fails; a case that could
not be run (a broker down, a worker that does not start) is an error, and three errors in a
row end the search with exit code 2.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import shlex
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from stress.cell import CellResult, CellRun
from stress.corpus import load_corpus, save
from stress.errors import ScenarioError, StressError
from stress.explore import CORNERS, SPACE, Case, Corner, Generator, reduction, smaller
from stress.oracles import Verdict
from stress.report import write_junit_rows
from stress.shrink import reproduces, shrink
from stress.spaces import DEFAULT_URLS, transport_of

__all__ = ["ExploreOptions", "explore", "run_corpus"]

MAX_ERRORS_IN_A_ROW = 3
# A worker that is not taskq (a --worker-cmd with {placeholders}) is started from its own
# command line: only the axes that command carries vary.
FOREIGN_WORKER_AXES: dict[str, list[Any]] = {
    "pool_type": ["prefork"], "prefetch": [4], "max_memory_per_child": [0], "time_limit": [0],
    "fds": [0]}


@dataclass
class ExploreOptions:
    budget: float = 1200.0
    seed: int | None = None
    brokers: Sequence[str] = ()
    worker_cmd: str | None = None
    app: str | None = None
    runs_per_candidate: int = 3
    corpus_dir: Path = Path("stress-corpus")
    report_dir: Path | None = None
    json_path: Path | None = None
    junit_path: Path | None = None
    shrink_budget: float = 900.0
    corner_weight: float = 0.6
    max_cases: int | None = None
    keep_going: bool = False  # after a failure is shrunk and saved, search on (budget allowing)
    out: TextIO = field(default_factory=lambda: sys.stdout)

    def __post_init__(self) -> None:
        self.urls: dict[str, str | None] = {}
        for url in self.brokers:
            self.urls[transport_of(url)] = url
        if not self.urls:
            self.urls = {"redis": DEFAULT_URLS["redis"], "amqp": DEFAULT_URLS["amqp"],
                         "sqlite": None}

    @property
    def foreign(self) -> bool:
        return bool(self.worker_cmd and "{" in self.worker_cmd)

    def restrict(self) -> dict[str, list[Any]]:
        restrict: dict[str, list[Any]] = {"transport": list(self.urls)}
        if self.foreign:
            restrict.update(FOREIGN_WORKER_AXES)
            cmd = self.worker_cmd or ""
            for axis, placeholder in (("strategy", "{pool}"), ("concurrency", "{concurrency}"),
                                      ("max_tasks_per_child", "{max_tasks_per_child}")):
                if placeholder not in cmd:  # the command cannot carry it: keep the default
                    restrict[axis] = [SPACE[axis].default]
            if "celery" in cmd:
                restrict["strategy"] = ["fair"]  # Celery has no -O fast
                restrict["transport"] = [t for t in restrict["transport"] if t != "sqlite"]
        return restrict

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def replay_command(self, path: Path) -> str:
        argv = ["taskq-stress", "run", "--corpus", str(path)]
        for url in self.brokers:
            argv += ["--broker", url]
        if self.worker_cmd:
            argv += ["--worker-cmd", self.worker_cmd]
        if self.app:
            argv += ["-A", self.app]
        return shlex.join(argv)


def run_case(case: Case, directory: Path, options: ExploreOptions) -> CellResult:
    """One case as one cell, through the runner ``taskq-stress run`` uses."""
    suite = case.suite()
    transport = case.config["transport"]
    started = time.monotonic()
    run = CellRun(suite, case.cell(), case.seed, directory, case.duration, suite.max_time,
                  broker_url=options.urls.get(transport), app=options.app,
                  worker_cmd=options.worker_cmd if options.foreign else None,
                  taskq_cmd=shlex.split(options.worker_cmd)
                  if options.worker_cmd and not options.foreign else None,
                  transport_options=case.transport_options(), fleet=case.fleet)
    try:
        return run.run()
    except StressError as exc:
        return CellResult(case.cell(), case.seed, [], {}, directory,
                          time.monotonic() - started, "", error=str(exc))


def outcome(result: CellResult) -> bool | None:
    """True: an oracle failed; False: passed; None: the case could not be run."""
    return None if result.error else not result.passed


def failed_oracles(result: CellResult) -> list[str]:
    return [v.oracle for v in result.verdicts if not v.passed]


class Coverage:
    """Cases tried per axis value, fault kind and task kind."""

    def __init__(self) -> None:
        self.counts: dict[str, Counter[str]] = {name: Counter() for name in SPACE}
        self.counts["faults"] = Counter()
        self.counts["tasks"] = Counter()
        self.counts["origin"] = Counter()

    def add(self, case: Case) -> None:
        for name in SPACE:
            self.counts[name][str(case.config[name])] += 1
        self.counts["faults"].update({f.kind for f in case.faults} or {"none"})
        self.counts["tasks"].update(list(case.workload))
        self.counts["origin"][case.origin] += 1

    def table(self) -> str:
        lines = ["coverage (cases tried per value):"]
        for name, counts in self.counts.items():
            values = list(SPACE[name].values) if name in SPACE else sorted(counts)
            cells = [f"{v}={counts.get(str(v), 0)}" for v in values]
            cells += [f"{v}={n}" for v, n in counts.items()
                      if v not in {str(x) for x in values}]
            lines.append(f"  {name:20} " + "  ".join(cells))
        return "\n".join(lines)

    def to_json(self) -> dict[str, dict[str, int]]:
        return {name: dict(counts) for name, counts in self.counts.items()}


def _corpus_corners(directory: Path) -> list[Corner]:
    """Each saved case's axes off their defaults and its fault kinds, as a corner."""
    corners = []
    if directory.is_dir():
        for path, case in load_corpus(directory):
            off = {k: (v,) for k, v in case.config.items() if v != SPACE[k].default}
            off.setdefault("transport", (case.config["transport"],))
            corners.append(Corner(f"corpus:{path.stem}", off,
                                  tuple(sorted({f.kind for f in case.faults}))))
    return corners


CATEGORICAL = ("pool_type", "strategy", "acks", "fds")  # fds: off or 1100, a switch
# numeric axes a failure is known by only as "off their default" (any value but the default)
SWITCHES = ("max_tasks_per_child", "fleet", "lease", "max_memory_per_child", "time_limit")
OFF = "off-default"


@dataclass(frozen=True)
class Known:
    """A failure already found (this run's, or the corpus's), known by its minimal case's
    categorical axes, the switches it has off their defaults, its fault kinds, and the
    oracles it failed (empty: not recorded)."""

    axes: Mapping[str, Any]
    faults: frozenset[str]
    oracles: frozenset[str] = frozenset()

    @classmethod
    def of(cls, case: Case, oracles: Sequence[str] = ()) -> Known:
        axes: dict[str, Any] = {k: case.config[k] for k in CATEGORICAL
                                if case.config[k] != SPACE[k].default}
        axes.update({k: OFF for k in SWITCHES if case.config[k] != SPACE[k].default})
        return cls(axes, frozenset(f.kind for f in case.faults), frozenset(oracles))

    def matches(self, case: Case) -> bool:
        """``case`` has every axis and fault kind of this failure."""
        return self.faults <= {f.kind for f in case.faults} and all(
            case.config[k] != SPACE[k].default if v == OFF else case.config[k] == v
            for k, v in self.axes.items())

    def explains(self, case: Case, failed: Sequence[str]) -> bool:
        """A failure of ``case`` on ``failed`` is most likely this one again: its categorical
        axes and fault kinds, and no oracle this one did not fail (the switches are left out:
        a shrink cut short by its budget leaves some off their defaults)."""
        return self.faults <= {f.kind for f in case.faults} and all(
            case.config[k] == v for k, v in self.axes.items() if v != OFF) and (
            not self.oracles or set(failed) <= self.oracles)


def _unexplained(case: Case, failed: Sequence[str], known: Sequence[Known]) -> set[str]:
    """The oracles ``case`` failed that no known failure it is like has failed: what makes
    it new, and what its shrinking must keep failing (else it slips to the known one)."""
    if any(k.explains(case, failed) for k in known):
        return set()
    seen = {o for k in known if k.matches(case) for o in k.oracles}
    return set(failed) - seen


def _result_json(result: CellResult, case: Case | None, role: str) -> dict[str, Any]:
    return {
        "role": role, "case": case.name if case else None,
        "describe": case.describe() if case else None,
        "cell": result.cell.id, "params": dict(result.cell.params), "seed": result.seed,
        "passed": result.passed, "error": result.error, "seconds": round(result.seconds, 2),
        "directory": str(result.directory), "worker_command": result.worker_command,
        "figures": result.figures,
        "verdicts": [{"oracle": v.oracle, "passed": v.passed, "message": v.message,
                      "figures": v.figures} for v in result.verdicts],
    }


def _write_junit(path: Path, name: str, rows: Sequence[tuple[Case, CellResult, str]]) -> None:
    def failure_context(case: Case, result: CellResult, replay: str) -> Callable[[Verdict], str]:
        text = f"case: {case.describe()}\nreplay: {replay}\nartifacts: {result.directory}"
        return lambda v: text

    write_junit_rows(path, name, [
        (f"{name}.{case.name}", result, f"case: {case.describe()}",
         failure_context(case, result, replay)) for case, result, replay in rows])


def _report_dir(options: ExploreOptions, what: str) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    directory = options.report_dir or Path("stress-reports") / f"{what}-{stamp}"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def explore(options: ExploreOptions, clock: Callable[[], float] = time.monotonic) -> int:
    """Draw and run cases until the budget is spent or one fails; shrink it, save it.

    Exit code: 0 nothing found, 1 a case failed (shrunk and saved), 2 cases could not run."""
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**31)
    report_dir = _report_dir(options, "explore")
    restrict = options.restrict()
    corners = [*CORNERS, *_corpus_corners(options.corpus_dir)]
    gen = Generator(seed, corner_weight=options.corner_weight, corners=corners,
                    restrict=restrict)
    coverage = Coverage()
    began = clock()
    options.say(f"taskq-stress explore: seed {seed}, budget {options.budget:g}s, transports "
                f"{', '.join(options.urls)}, {len(gen.corners)} corners, reports in "
                f"{report_dir}")
    rows: list[tuple[Case, CellResult, str]] = []
    log: list[dict[str, Any]] = []
    found: tuple[Case, CellResult] | None = None
    failures: list[dict[str, Any]] = []
    shrinking = 0.0  # seconds spent shrinking (--keep-going): not search time
    # --keep-going: failures already known (the corpus's and this run's) are not drawn again
    # when their axes say enough (a failure known only by a fault kind would stop the search
    # from drawing that fault at all), and not shrunk again when they come back
    known = ([Known.of(c, [str(o) for o in c.notes.get("failed", [])])
              for _p, c in load_corpus(options.corpus_dir)]
             if options.keep_going and options.corpus_dir.is_dir()
             and any(options.corpus_dir.glob("*.toml")) else [])
    skipped = repeats = 0
    errors_in_a_row = errors = 0
    code = 0
    n = 0
    interrupted = False
    try:
        while clock() - began - shrinking < options.budget and (
                options.max_cases is None or n < options.max_cases):
            n += 1
            case = gen.draw()
            while options.keep_going and skipped < 10_000 and any(
                    k.axes and k.matches(case) for k in known):
                skipped += 1
                case = gen.draw()
            coverage.add(case)
            result = run_case(case, report_dir / f"case-{n:03d}", options)
            mark = {None: "ERROR", True: "FAIL", False: "pass"}[outcome(result)]
            early = result.figures.get("stopped_early")
            options.say(f"[{n}] {mark:5} {result.seconds:5.0f}s {case.describe()}"
                        + (f" -- {', '.join(failed_oracles(result))}" if mark == "FAIL" else "")
                        + (f" (stopped early, {early.split(':')[0]} certain)" if early else "")
                        + (f" -- {result.error.splitlines()[0][:160]}" if result.error else ""))
            rows.append((case, result, ""))
            log.append(_result_json(result, case, "explore"))
            if result.error:
                errors += 1
                errors_in_a_row += 1
                if errors_in_a_row >= MAX_ERRORS_IN_A_ROW:
                    options.say(f"taskq-stress explore: {errors_in_a_row} cases in a row could "
                                "not run; stopping")
                    code = 2
                    break
                continue
            errors_in_a_row = 0
            if not result.passed:
                found = (case, result)
                if not options.keep_going:
                    break
                target = _unexplained(case, failed_oracles(result), known)
                if not target:
                    repeats += 1
                    found = None
                    options.say("  like a failure already found (its axes, faults and "
                                "oracles): not shrunk again")
                    continue
                shrink_began = clock()
                failures.append(_shrink_and_save(
                    found, n, clock() - began - shrinking, report_dir, options, rows, log,
                    restrict, tag=f"{len(failures) + 1}-", target=target))
                shrinking += clock() - shrink_began
                found = None
                minimal = failures[-1].pop("minimal", None)
                if isinstance(minimal, Case):
                    known.append(Known.of(minimal, failures[-1]["oracles_minimal"]))
                if failures[-1].get("interrupted"):
                    interrupted = True
                    break
    except KeyboardInterrupt:
        interrupted = True
        options.say("taskq-stress explore: interrupted; the running case was cleaned up")
    searched = clock() - began - shrinking
    summary: dict[str, Any] = {
        "seed": seed, "budget_s": options.budget, "cases": n, "search_s": round(searched, 1),
        "cases_per_minute": round(n / (searched / 60), 2) if searched > 0 else None,
        "brokers": list(options.brokers), "worker_cmd": options.worker_cmd,
        "runs_per_candidate": options.runs_per_candidate,
        "skipped_like_known_failures": skipped, "repeats_of_known_failures": repeats,
        "could_not_run": errors,
    }
    if found is not None:
        failures.append(_shrink_and_save(found, n, searched, report_dir, options, rows, log,
                                         restrict))
        interrupted = interrupted or bool(failures[-1].get("interrupted"))
    for failure in failures:
        failure.pop("minimal", None)
    if failures:
        code = 1
        summary["failure"] = failures[0]
        summary["failures"] = failures
    elif interrupted or errors:
        code = 2  # a case that could not run was not searched: not "nothing found"
    summary["interrupted"] = interrupted
    options.say(coverage.table())
    summary["coverage"] = coverage.to_json()
    report_json = options.json_path or report_dir / "report.json"
    report_json.write_text(json.dumps({"explore": summary, "cells": log}, indent=2,
                                      default=str))
    if options.junit_path:
        _write_junit(options.junit_path, "explore", rows)
    verdict = (f"FOUND {len(failures)} failure(s)" if code == 1 else "INTERRUPTED" if interrupted
               else f"{errors} of {n} cases could not run (see their errors above)" if errors
               else "nothing found")
    options.say(f"taskq-stress explore: {verdict}: {n} cases in {searched / 60:.1f} min "
                f"({summary['cases_per_minute']} cases/min, seed {seed}); JSON {report_json}"
                + (f", JUnit {options.junit_path}" if options.junit_path else ""))
    return code


def _shrink_and_save(found: tuple[Case, CellResult], n: int, searched: float, report_dir: Path,
                     options: ExploreOptions, rows: list[tuple[Case, CellResult, str]],
                     log: list[dict[str, Any]], restrict: Mapping[str, Sequence[Any]],
                     tag: str = "", target: set[str] | None = None) -> dict[str, Any]:
    case, result = found
    first_oracles = failed_oracles(result)
    options.say(f"taskq-stress explore: case {case.name} failed {', '.join(first_oracles)} "
                f"after {searched:.0f}s; confirming and shrinking "
                f"({options.runs_per_candidate} runs per candidate, 2 must fail)")
    runs = 0
    last_failure: dict[str, CellResult] = {case.key(): result}

    def once(candidate: Case) -> bool | None:
        """Did ``candidate`` fail, on one of the oracles that made this failure new
        (``target``: the shrink must not slip to a failure already found)?"""
        nonlocal runs
        runs += 1
        res = run_case(candidate, report_dir / f"shrink-{tag}{runs:03d}", options)
        log.append(_result_json(res, candidate, "shrink"))
        failed = outcome(res)
        if failed and target and not set(failed_oracles(res)) & target:
            failed = False
        if failed:
            last_failure[candidate.key()] = res
        return failed

    def fails(candidate: Case) -> bool:
        return reproduces(lambda: once(candidate), options.runs_per_candidate, 2)

    began = time.monotonic()
    info: dict[str, Any] = {"case": case.name, "describe": case.describe(),
                            "oracles": first_oracles, "after_cases": n,
                            "seconds_to_find": round(searched, 1)}
    accepted: list[Case] = []

    def on_step(candidate: Case, failed: bool) -> None:
        if failed:
            accepted.append(candidate)
        options.say(f"  shrink {'FAIL' if failed else 'pass'}: {candidate.describe()}")

    try:
        # the original failed once: one more failure in the remaining runs confirms it
        confirmed = reproduces(lambda: once(case), max(1, options.runs_per_candidate - 1), 1)
        info["confirmed"] = confirmed
        if not confirmed:
            options.say(f"taskq-stress explore: {case.name} did not fail again: a flaky "
                        "failure, saved unshrunk")
            minimal, complete, steps = case, False, 0
        else:
            shrunk = shrink(case, lambda c: smaller(c, restrict), fails, key=Case.key,
                            budget=options.shrink_budget, on_step=on_step, move=reduction)
            minimal, complete, steps = shrunk.case, shrunk.complete, len(shrunk.steps)
            info.update(candidates_tried=shrunk.tried)
    except KeyboardInterrupt:  # save the smallest failure so far
        options.say("taskq-stress explore: interrupted while shrinking; saving the smallest "
                    "failing case so far")
        minimal = accepted[-1] if accepted else case
        complete, steps = False, len(accepted)
        info["interrupted"] = True
    final = last_failure.get(minimal.key(), result)
    path = save(minimal, options.corpus_dir, {
        "failed": failed_oracles(final),
        "found": f"{dt.datetime.now():%Y-%m-%d %H:%M} by taskq-stress explore (seed "
                 f"{options.seed}, case {n}, {searched:.0f}s); shrunk from {case.name} in "
                 f"{steps} steps" + ("" if complete else " (stopped by the shrink budget)"),
        "worker": options.worker_cmd or "taskq"})
    replay = options.replay_command(path)
    rows.append((minimal, final, replay))
    info["minimal"] = minimal  # for the search (--keep-going); popped before the JSON
    info.update(oracles_minimal=failed_oracles(final))
    info.update(shrunk=minimal.name, shrunk_describe=minimal.describe(), shrink_steps=steps,
                shrink_complete=complete, shrink_s=round(time.monotonic() - began, 1),
                runs=runs, corpus_file=str(path), replay=replay,
                messages=[v.message for v in final.verdicts if not v.passed])
    options.say(f"taskq-stress explore: minimal case {minimal.describe()}")
    for v in final.verdicts:
        if not v.passed:
            options.say(f"  FAIL {v.oracle}: {v.message[:400]}")
    options.say(f"  saved to {path}; artifacts in {final.directory}\n  replay with: {replay}")
    return info


def run_corpus(path: Path, options: ExploreOptions) -> int:
    """Every case of a corpus (a folder or one file) as a cell: 0 all pass, 1 one failed,
    2 one could not run."""
    cases = load_corpus(path)
    if not cases:
        raise ScenarioError(f"no cases (*.toml) in {path}")
    report_dir = _report_dir(options, "corpus")
    rows: list[tuple[Case, CellResult, str]] = []
    log = []
    for n, (file, case) in enumerate(cases, 1):
        if case.config["transport"] not in options.urls:
            options.say(f"[{n}] skip  {file.name}: needs a {case.config['transport']} broker "
                        "(--broker)")
            continue
        result = run_case(case, report_dir / f"case-{n:03d}", options)
        mark = {None: "ERROR", True: "FAIL", False: "pass"}[outcome(result)]
        options.say(f"[{n}] {mark:5} {result.seconds:5.0f}s {file.name}: {case.describe()}")
        for v in result.verdicts:
            if not v.passed:
                options.say(f"    FAIL {v.oracle}: {v.message[:300]}")
        if result.error:
            options.say(f"    ERROR {result.error.splitlines()[0][:300]}")
        replay = options.replay_command(file)
        rows.append((case, result, replay))
        log.append(_result_json(result, case, "corpus"))
    report_json = options.json_path or report_dir / "report.json"
    report_json.write_text(json.dumps({"corpus": str(path), "cells": log}, indent=2,
                                      default=str))
    if options.junit_path:
        _write_junit(options.junit_path, "corpus", rows)
    results = [r for _c, r, _p in rows]
    code = 2 if any(r.error for r in results) else (0 if all(r.passed for r in results) else 1)
    passed = sum(r.passed for r in results)
    options.say(f"taskq-stress corpus {path}: {passed}/{len(results)} cases passed; JSON "
                f"{report_json}")
    return code
