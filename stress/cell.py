"""One matrix cell, from start to verdicts: worker, workload, faults, drain, judge, clean up.

The order: the cell's broker space is checked (unreachable: :class:`RunnerError`, exit 2);
the worker starts and must finish a warm-up task; the publisher and the fault runners run for
the suite's duration while the monitor reads the ledger (progress, deadlock watch, restarts a
worker killed by a fault); then the cell drains until every published task is resolved, the
deadlock watch fires, or ``max_time`` passes. The pool's health is read, everything stops,
and the oracles judge. Whatever happens (an oracle failure, an exception, Ctrl-C), the
worker's session is killed, the proxy stopped and the broker space deleted.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from chaos import ChaosError, FaultProxy, FaultRecord, Journal, LocalRedis, read_journal
from stress import ledger as ledger_mod
from stress.backend_probe import BackendProbe
from stress.errors import RunnerError
from stress.faults import NEEDS_PRIVATE_BROKER, NEEDS_PROXY, build_runners
from stress.harness import APP_ENV
from stress.ledger import Book, LedgerReader
from stress.leftovers import measure as measure_leftovers
from stress.oracles import (
    MAIN_FAULTS,
    Evidence,
    Verdict,
    certain_violations,
    judge,
    maybe_lost,
    pool_capacity,
    unresolved,
)
from stress.publisher import Publisher
from stress.series import series_of
from stress.spaces import LEASE_TIMEOUT, Space, address_of, make_space
from stress.suites import Cell, Suite
from stress.workerproc import Health, WorkerProc, taskq_command

__all__ = ["CellResult", "CellRun", "Progress"]

Progress = Callable[[int, int, str], None]  # (resolved, published, phase)


@dataclass
class CellResult:
    cell: Cell
    seed: int
    verdicts: list[Verdict]
    figures: dict[str, Any]
    directory: Path
    seconds: float
    worker_command: str
    error: str | None = None
    replay: str = ""
    series: dict[str, Any] = field(default_factory=dict)  # over time, for report.html

    @property
    def passed(self) -> bool:
        return self.error is None and all(v.passed for v in self.verdicts)


@dataclass
class CellRun:
    suite: Suite
    cell: Cell
    seed: int
    directory: Path
    duration: float
    max_time: float
    broker_url: str | None = None
    app: str | None = None
    worker_cmd: str | None = None
    progress: Progress | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    transport_options: dict[str, Any] = field(default_factory=dict)  # over the space's own
    taskq_cmd: list[str] | None = None  # another taskq build's command (another checkout)
    fleet: int = 1  # workers on the cell's queue (explore); main-process faults pick one
    _others: list[WorkerProc] = field(default_factory=list, init=False, repr=False)

    def run(self) -> CellResult:
        started = time.monotonic()
        self.directory.mkdir(parents=True, exist_ok=True)
        ledger_dir = self.directory / "ledger"
        # A report folder used again: an earlier run's ledger would be judged with this one's
        # (its published tasks "never started" here).
        shutil.rmtree(ledger_dir, ignore_errors=True)
        for stale in ("faults.jsonl", "stacks.txt", "worker-*.log"):
            for path in self.directory.glob(stale):
                path.unlink(missing_ok=True)
        ledger_dir.mkdir()
        journal = Journal(self.directory / "faults.jsonl")
        private = self._private_broker(journal)
        space = make_space(self.cell["transport"], self.directory,
                           private.url if private is not None else self.broker_url)
        space.transport_options.update(self.transport_options)
        proxy: FaultProxy | None = None
        worker: WorkerProc | None = None
        runners: list[Any] = []
        publisher: Publisher | None = None
        faults = self.suite.faults_for(self.cell["transport"])
        try:
            space.check()
            if any(f["kind"] in NEEDS_PROXY for f in faults):
                if space.transport == "sqlite":
                    raise RunnerError("network faults need a networked broker (redis or amqp), "
                                      "not the embedded sqlite one")
                proxy = FaultProxy(address_of(space.url), journal=journal, seed=self.seed)
                proxy.start()
            worker = self._worker(space, proxy, ledger_dir)
            self._others = [self._worker(space, proxy, ledger_dir, member)
                            for member in range(2, self.fleet + 1)]
            book, reader = Book(), LedgerReader(ledger_dir)
            publisher = Publisher(space, self.suite, ledger_dir, seed=self.seed,
                                  rate=self.suite.rate, duration=self.duration)
            worker.start()
            for other in self._others:
                other.start()
            try:
                within = float(self.suite.oracles.get("warm_up_within", 60.0))
                fleet_of = self.fleet > 1
                self._warm_up(publisher, worker, book, reader, within, 1 if fleet_of else None)
                for number, other in enumerate(self._others, start=2):
                    self._warm_up(publisher, other, book, reader, within, number)
            except RunnerError as exc:
                if not self.suite.oracles.get("judge_warm_up"):
                    raise
                # explore: the broker answered (space.check), so a worker that cannot run one
                # task under this configuration is the worker's failure, not the run's
                return CellResult(self.cell, self.seed, [Verdict("warm-up", False, str(exc))],
                                  {"published": publisher.published}, self.directory,
                                  time.monotonic() - started, worker.command)
            baseline = self._settled_health(worker)
            fleet = [worker, *self._others]
            runners = build_runners(faults, self.cell.params, seed=self.seed,
                                    duration=self.duration, journal=journal,
                                    main_pid=lambda: worker.pid if worker else None,
                                    proxy=proxy, broker=private,
                                    main_pids=lambda: [p for w in fleet if (p := w.pid)],
                                    running=lambda: _running_pids(book),
                                    monitor=(space.url, space.transport_options,
                                             lambda: [w.node for w in fleet if w.node]))
            publisher.start()
            for runner in runners:
                runner.start()
            probe = BackendProbe(space) if self.worker_cmd else None
            try:
                watch = self._watch(worker, publisher, book, reader, journal, started, probe,
                                    runners)
            finally:
                if probe is not None:
                    probe.close()
            for runner in runners:
                runner.stop()
            if watch["deadlock"] or watch.get("early") == "pool-capacity":
                worker.dump_stacks(self.directory / "stacks.txt")
                for other in self._others:
                    other.dump_stacks(self.directory / f"stacks-{other.name}.txt")
            health = self._settled_health(
                worker, 0.0 if watch["deadlock"] or watch.get("early") else 10.0)
            worker.stop()
            for other in self._others:
                other.stop()
            book.add(reader.poll())
            # every worker has stopped: what they left in the broker is theirs to answer for
            leftovers = (measure_leftovers(space) if self.suite.oracles.get("leases_released")
                         else None)
            evidence = Evidence(
                suite=self.suite, cell=self.cell, book=book,
                faults=read_journal(journal.path) if journal.path else [],
                deadlock=watch["deadlock"], deadlock_pending=watch["pending"],
                stall_bound=watch["bound"], baseline=baseline, health=health,
                worker_starts=worker.started + sum(o.started - 1 for o in self._others),
                is_taskq=self.worker_cmd is None,
                publish_errors=publisher.errors, directory=self.directory,
                duration=self.duration, stopped_early=watch.get("early"),
                observed_until=watch.get("until"), leftovers=leftovers,
            )
            verdicts, figures = judge(evidence)
            series = series_of(evidence)
            figures["seconds"] = round(time.monotonic() - started, 2)
            figures["published"] = publisher.published
            if watch.get("early"):
                figures["stopped_early"] = f"{watch['early']}: {watch['early_reason']}"[:300]
            if publisher.last_error:
                figures["last_publish_error"] = publisher.last_error
            return CellResult(self.cell, self.seed, verdicts, figures, self.directory,
                              time.monotonic() - started, worker.command, series=series)
        finally:
            # Each step on its own: the workers must go whatever another step raises (a run
            # stopped with SIGTERM once left its cell's worker running).
            for runner in runners:
                with contextlib.suppress(Exception):
                    runner.stop()
                with contextlib.suppress(Exception):
                    for injector in runner.injectors:
                        injector.close()
            if worker is not None:
                worker.stop(grace=5.0)
            if publisher is not None:
                with contextlib.suppress(Exception):
                    publisher.stop()
            for other in self._others:
                with contextlib.suppress(Exception):
                    other.stop(grace=5.0)
            if proxy is not None:
                with contextlib.suppress(Exception):
                    proxy.stop()
            journal.close()
            space.cleanup()
            if private is not None:
                with contextlib.suppress(Exception):
                    private.close()

    def _private_broker(self, journal: Journal) -> LocalRedis | None:
        """A private redis-server for suites that restart the broker (never the shared one)."""
        if not any(f["kind"] in NEEDS_PRIVATE_BROKER
                   for f in self.suite.faults_for(self.cell["transport"])):
            return None
        if self.cell["transport"] != "redis":
            raise RunnerError(f"suite {self.suite.name} restarts a private redis-server: use "
                              "the redis transport (--broker redis://... or --cell "
                              "transport=redis)")
        try:
            private = LocalRedis(directory=self.directory / "redis", journal=journal)
            private.start()
        except ChaosError as exc:
            raise RunnerError(f"cannot start a private redis-server: {exc}") from None
        return private

    # -- the worker ---------------------------------------------------------------------------
    def _worker(self, space: Space, proxy: FaultProxy | None, ledger_dir: Path,
                member: int = 1) -> WorkerProc:
        cell = self.cell
        broker = space.url
        if proxy is not None:
            parts = urlsplit(space.url)
            auth = parts.netloc.rsplit("@", 1)[0] if "@" in parts.netloc else ""
            broker = proxy.url(parts.scheme, parts.path, auth)
        late = cell["acks"] in ("late", "late-reject")
        # Another checkout's taskq, run from a taskq checkout: this directory's taskq package,
        # first on the path, would shadow the worker's own (an editable install resolves
        # after the path), so it stays off the path; the harness comes from the shim.
        foreign_tree = self.taskq_cmd is not None and (Path.cwd() / "taskq").is_dir()
        env = {
            **os.environ, **space.env(broker),
            "TASKQ_TASK_ACKS_LATE": "true" if late else "false",
            "TASKQ_TASK_REJECT_ON_WORKER_LOST": "true" if cell["acks"] == "late-reject"
            else "false",
            "TASKQ_WORKER_SEND_TASK_EVENTS": "false",
            ledger_mod.ENV: str(ledger_dir),
            "PYTHONPATH": os.pathsep.join(filter(None, (
                None if foreign_tree else os.getcwd(), os.environ.get("PYTHONPATH")))),
            "PYTHONUNBUFFERED": "1",
            **self.suite.worker_env, **self.extra_env,
        }
        if self.app:
            env[APP_ENV] = self.app
        if self.fleet > 1:
            env[ledger_mod.MEMBER_ENV] = str(member)
        shim = self._stress_path(always=foreign_tree)
        if shim is not None:  # this stress package, not the one in another checkout's tree
            env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(shim), env["PYTHONPATH"])))
        node = (f"stress-{space.name}@{socket.gethostname()}" if member == 1
                else f"stress{member}-{space.name}@{socket.gethostname()}")
        values = {"queue": space.queue, "concurrency": cell["concurrency"], "pool": cell["pool"],
                  "broker": broker, "node": node, "acks_late": str(late).lower(),
                  "max_tasks_per_child": cell["max_tasks_per_child"]}
        if self.worker_cmd:
            try:
                argv = shlex.split(self.worker_cmd.format(**values))
            except (KeyError, ValueError) as exc:
                raise RunnerError(f"--worker-cmd: cannot fill in {exc}; placeholders: "
                                  f"{', '.join('{' + k + '}' for k in values)}") from None
        else:
            argv = [*(self.taskq_cmd or taskq_command()), "worker", "-A", "stress.harness",
                    "-P", "prefork", "-c", str(cell["concurrency"]), "-O", cell["pool"],
                    "-Q", space.queue, "-n", node, "--without-mingle", "--without-gossip",
                    "-l", "info"]
            if cell["max_tasks_per_child"]:
                argv += ["--max-tasks-per-child", str(cell["max_tasks_per_child"])]
            argv += self.suite.worker_args
        # A --worker-cmd without {node} names itself: the control fault cannot address it.
        named = not self.worker_cmd or "{node}" in self.worker_cmd
        return WorkerProc(argv, env, self.directory,
                          "worker" if member == 1 else f"worker-m{member}",
                          node=node if named else "")

    def _stress_path(self, always: bool = False) -> Path | None:
        """A directory holding only this ``stress`` package, for a worker started from another
        checkout (whose own tree, first on its path, may hold an older harness)."""
        here = Path(__file__).resolve().parent
        if not always and (Path.cwd() / "stress").resolve() == here:
            return None
        shim = self.directory / "pythonpath"
        shim.mkdir(exist_ok=True)
        link = shim / "stress"
        if not link.exists():
            link.symlink_to(here, target_is_directory=True)
        return shim

    def _warm_up(self, publisher: Publisher, worker: WorkerProc, book: Book,
                 reader: LedgerReader, timeout: float = 60.0, member: int | None = None
                 ) -> None:
        """The worker is up when it has run one task end to end: in a fleet, this worker
        (``member``), not another that took its warm-up task (its baseline of fds would then
        be taken before it had connected); another warm-up task goes out until it does."""
        task_id = f"warmup-{uuid.uuid4()}"
        publisher.publish_one("noop", task_id)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            book.add(reader.poll())
            history = book.by_id.get(task_id)
            if history is not None and history.finishes:
                if member is None or any(str(e.extra.get("member")) == str(member)
                                         for e in history.starts):
                    return
                task_id = f"warmup-{uuid.uuid4()}"
                publisher.publish_one("noop", task_id)
            if not worker.alive():
                raise RunnerError(f"the worker exited with {worker.returncode()} before it ran "
                                  f"a task ({worker.command}); its log ends:\n"
                                  f"{worker.log_tail()}")
            time.sleep(0.05)
        taken = (" (the fleet's other workers ran every one sent)" if member is not None
                 else "")
        raise RunnerError(f"the worker did not run a warm-up task within {timeout:g} s"
                          f"{taken} ({worker.command}); its log ends:\n{worker.log_tail()}")

    def _settled_health(self, worker: WorkerProc, timeout: float = 10.0) -> Health | None:
        """The pool once it is back to its size (or what it is after ``timeout``)."""
        want = self.cell.children if self.worker_cmd is None else None
        deadline = time.monotonic() + timeout
        health = worker.health()
        while want is not None and time.monotonic() < deadline:
            health = worker.health()
            if health is not None and health.children == want and health.zombies == 0:
                break
            time.sleep(0.05)
        return health

    # -- watching the run ---------------------------------------------------------------------
    def _certain_failure(self, book: Book, journal: Journal, runners: list[Any],
                         done: bool, now: float) -> tuple[str, str] | None:
        """(oracle, why) when the run's failure is already certain (``early_stop`` suites:
        explore): a re-run the table forbids once no fault is left to come, or tasks waiting
        while the pool is short of capacity for longer than ``pool_capacity_after``."""
        faults = journal.records
        if done and all(r.done for r in runners):
            problems = certain_violations(book, faults, self.cell)
            if problems:
                return "nothing-lost", problems[0]
        if "pool_capacity_after" in self.suite.oracles:
            verdict = pool_capacity(Evidence(
                suite=self.suite, cell=self.cell, book=book, faults=list(faults),
                deadlock=False, deadlock_pending=0, stall_bound=0.0, baseline=None, health=None,
                worker_starts=1, is_taskq=True, publish_errors=0, directory=self.directory,
                observed_until=now))
            if not verdict.passed:
                return "pool-capacity", verdict.message
        return None

    def _watch(self, worker: WorkerProc, publisher: Publisher, book: Book,
               reader: LedgerReader, journal: Journal, started: float,
               probe: BackendProbe | None = None, runners: list[Any] | None = None
               ) -> dict[str, Any]:
        """Until drained, deadlocked or out of time (or, for ``early_stop`` suites, a failure
        is certain); restarts a worker a fault killed."""
        bound = float(self.suite.oracles.get("deadlock_after", 30.0))
        early_stop = bool(self.suite.oracles.get("early_stop"))
        last_check = 0.0
        last_events, last_progress = -1, time.monotonic()
        deadline = started + self.max_time
        result: dict[str, Any] = {"deadlock": False, "pending": 0, "bound": bound}
        while True:
            book.add(reader.poll())
            if probe is not None:
                probe.poll(book)
            now = time.monotonic()
            if book.events != last_events:
                last_events, last_progress = book.events, now
            for member in (worker, *self._others):
                if not member.alive():
                    member.reap()
                    member.start()  # a fault (or a crash) took it: the next one redelivers
                    last_progress = now
            pending = unresolved(book, journal.records, self.cell)  # in memory: every tick
            done = not publisher.running
            if self.progress:
                total = len(book.published())
                self.progress(total - len(pending), total, "drain" if done else "run")
            lingering = now < watch_redelivery_until(self.suite.oracles, journal.records)
            if done and not pending and not lingering:
                return result
            if done and not lingering and now - last_progress > 2 * LEASE_TIMEOUT and maybe_lost(
                    pending, journal.records, self.cell):
                return result  # lost where the table allows it (judged by nothing-lost)
            if early_stop and now - last_check >= 1.0:
                last_check = now
                certain = self._certain_failure(book, journal, runners or [], done, now)
                if certain is not None:
                    result.update(early=certain[0], early_reason=certain[1], until=now,
                                  pending=len(pending))
                    return result
            if pending and now - last_progress > bound:
                result.update(deadlock=True, pending=len(pending))
                return result
            if now > deadline:
                result.update(pending=len(pending))
                return result
            time.sleep(0.25)


def watch_redelivery_until(oracles: Mapping[str, Any], faults: Sequence[FaultRecord]) -> float:
    """When a drained run may stop (``watch_redelivery`` suites: explore): its main-process
    faults' time plus that many seconds. A task the table calls lost (early ack, its main
    process killed while it ran) resolves the moment the kill lands; a worker that had not
    acked it gets it back after the lease, and only a watch that lasts that long sees the
    forbidden re-run (issue 13 #7: a job started 3 ms after the kill ran again)."""
    after = float(oracles.get("watch_redelivery", 0.0) or 0.0)
    kills = [r.mono for r in faults if r.kind in MAIN_FAULTS and r.outcome == "ok"]
    return max(kills) + after if after and kills else 0.0


def _running_pids(book: Book) -> set[int]:
    """The pids the ledger shows running a task now (a run started and not ended)."""
    pids: set[int] = set()
    try:
        for h in list(book.by_id.values()):
            for s in list(h.starts):
                ended = any(e.mono >= s.mono and e.pid == s.pid for e in list(h.finishes)) or any(
                    e.mono >= s.mono for e in list(h.losses))
                if not ended:
                    pids.add(s.pid)
    except RuntimeError:  # the watch loop changed the book under us: try at the next call
        return set()
    return pids
