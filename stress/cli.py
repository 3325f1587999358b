"""The ``taskq-stress`` command: list and run suites, replay a cell, benchmarks, ``chaos``.

Exit codes of ``run`` and ``replay``: 0 every oracle passed, 1 an oracle failed, 2 the run
could not be carried out (a broker unreachable, a worker that would not start, a bad suite).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from chaos.cli import cli as chaos_cli
from stress.bench_all import ROW_KEYS as BENCH_ROWS
from stress.errors import StressError

__all__ = ["main"]

_Command = TypeVar("_Command", bound=Callable[..., Any])


def _report_options(command: _Command) -> _Command:
    """``--report-dir``, ``--json`` and ``--junit``: where ``run`` and ``explore`` write."""
    for option in reversed((
        click.option("--report-dir", type=click.Path(file_okay=False, path_type=Path),
                     default=None, help="Where the reports and each cell's artifacts go "
                     "(default: stress-reports/<suite>-<time>/)."),
        click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
                     default=None, help="Write the JSON report here instead of "
                     "<report dir>/report.json."),
        click.option("--junit", "junit_path", type=click.Path(dir_okay=False, path_type=Path),
                     default=None, help="Also write JUnit XML here (a testcase per cell "
                     "and oracle)."),
    )):
        command = option(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="taskq", prog_name="taskq-stress")
def main() -> None:
    """Stress taskq under injected faults."""


main.add_command(chaos_cli, name="chaos")


def _fail(exc: Exception) -> None:
    click.echo(f"taskq-stress: {exc}", err=True)
    sys.exit(2)


@main.command("list")
def list_suites() -> None:
    """The suites in scenarios/ with their matrices."""
    from stress.suites import cells_of, find_suites, load_suite

    try:
        for name in find_suites():
            suite = load_suite(name)
            cells = cells_of(suite.matrix, suite.combine)
            click.echo(f"{name:18} {len(cells):3} cells  {suite.description}")
    except StressError as exc:
        _fail(exc)


@main.command()
@click.option("--corpus", "corpus", type=click.Path(exists=True, path_type=Path), default=None,
              help="Replay the cases saved by explore (a folder such as stress-corpus/, or one "
                   "file) as a regression suite, instead of --suite.")
@click.option("--suite", "suite_name", default=None, help="A suite name (taskq-stress list) "
              "or a path to a suite TOML file.")
@click.option("-A", "--app", default=None, help="Your app (module or module:attr): its tasks "
              "are named in the suite's [workload] table.")
@click.option("--workload", "workload_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="A TOML file whose [workload] table names your tasks "
              "(default with -A: ./taskq-stress.toml).")
@click.option("--matrix", "matrix_file", type=click.Path(exists=True, dir_okay=False,
                                                         path_type=Path),
              help="A TOML file whose [matrix] table replaces the suite's.")
@click.option("--cell", "cell_text", default=None,
              help="Run one cell: k=v,... over the axes (transport, pool, max_tasks_per_child, "
                   "acks, concurrency, kill_rate).")
@click.option("--duration", type=click.FloatRange(min=0.5), default=None,
              help="Seconds of publishing and faults per cell (default: the suite's).")
@click.option("--max-time", type=click.FloatRange(min=5), default=None,
              help="Hard bound on one cell, drain included.")
@click.option("--seed", type=int, default=None, help="Seed (printed when not given).")
@click.option("--broker", "broker_url", default=None,
              help="Run only on this broker (restricts the transport axis to its kind).")
@click.option("--worker-cmd", default=None,
              help="Judge another worker: a command line with {queue} {concurrency} {pool} "
                   "{broker} {node} {max_tasks_per_child} {acks_late} placeholders.")
@_report_options
def run(corpus: Path | None, suite_name: str | None, app: str | None,
        workload_file: Path | None,
        matrix_file: Path | None, cell_text: str | None, duration: float | None,
        max_time: float | None, seed: int | None,
        broker_url: str | None, worker_cmd: str | None, report_dir: Path | None,
        json_path: Path | None, junit_path: Path | None) -> None:
    """Run a suite over its matrix and judge every cell with the oracles."""
    import tomllib

    _interrupt_on_term()  # a stopped run takes its cell's worker down and writes its report

    from stress.run import RunOptions, run_suite
    from stress.spaces import transport_of
    from stress.suites import (
        DEFAULT_CELL,
        apply_workload,
        cells_of,
        load_suite,
        named_axes,
        parse_cell,
        parse_matrix,
        restrict,
    )

    if corpus is not None:
        _run_corpus(corpus, broker_url, worker_cmd, app, report_dir, json_path, junit_path)
    if suite_name is None:
        _fail(StressError("name a suite (--suite NAME; taskq-stress list) or a corpus "
                          "(--corpus DIR)"))
    assert suite_name is not None
    try:
        suite = load_suite(suite_name)
        if workload_file is None and app and not suite.app_tasks:
            workload_file = Path("taskq-stress.toml")
            if not workload_file.exists():
                raise StressError(f"-A {app}: name the tasks to publish in a [workload] table "
                                  "(--workload FILE, or ./taskq-stress.toml; see "
                                  "examples/shop/taskq-stress.toml)")
        if workload_file is not None:
            apply_workload(suite, workload_file)
        if matrix_file is not None:
            data = tomllib.loads(matrix_file.read_text())
            suite.matrix, suite.combine = parse_matrix(data.get("matrix", data), str(matrix_file))
        if cell_text:
            first = {k: v[0] for k, v in suite.matrix.items()}
            cells = [parse_cell(cell_text, {**DEFAULT_CELL, **first},
                                named_axes(suite.matrix, suite.faults))]
        else:
            cells = cells_of(suite.matrix, suite.combine, suite.faults)
        if broker_url:
            cells = restrict(cells, transport_of(broker_url))
        options = RunOptions(seed=seed, duration=duration, max_time=max_time,
                             broker_url=broker_url, app=app, worker_cmd=worker_cmd,
                             workload_file=workload_file, report_dir=report_dir,
                             json_path=json_path, junit_path=junit_path)
        code, _ = run_suite(suite, cells, options)
    except StressError as exc:
        _fail(exc)
    sys.exit(code)


def _run_corpus(corpus: Path, broker_url: str | None, worker_cmd: str | None, app: str | None,
                report_dir: Path | None, json_path: Path | None, junit_path: Path | None) -> None:
    from stress.explorer import ExploreOptions, run_corpus

    try:
        options = ExploreOptions(brokers=[broker_url] if broker_url else [],
                                 worker_cmd=worker_cmd, app=app, report_dir=report_dir,
                                 json_path=json_path, junit_path=junit_path)
        code = run_corpus(corpus, options)
    except StressError as exc:
        _fail(exc)
    sys.exit(code)


def _interrupt_on_term() -> None:
    """SIGTERM (and SIGINT, which a shell ignores for a background job) end a run or a search
    as Ctrl-C does: the running cell or case is cleaned up (its worker stopped) and the report
    written."""
    import signal

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _seconds(text: str) -> float:
    """``20m``, ``90s``, ``1h`` or plain seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    text = text.strip().lower()
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise click.BadParameter(f"{text!r}: a duration such as 20m, 90s or 1h") from None


@main.command()
@click.option("--budget", default="20m", show_default=True,
              help="How long to search (20m, 600s, 1h); shrinking a failure comes on top.")
@click.option("--shrink-budget", default="15m", show_default=True,
              help="How long shrinking a failure may take; the smallest failure so far is "
                   "saved when it runs out.")
@click.option("--seed", type=int, default=None, help="Seed (printed when not given).")
@click.option("--broker", "brokers", multiple=True,
              help="Brokers to search on (repeat; one per transport). Default: the local "
                   "Redis and RabbitMQ and the embedded SQLite broker.")
@click.option("--worker-cmd", default=None,
              help="Another worker: a taskq executable (another checkout's, e.g. "
                   "/path/.venv/bin/taskq; the runner adds every flag), or a full command line "
                   "with {queue} {concurrency} {pool} {broker} {node} {max_tasks_per_child} "
                   "{acks_late} placeholders (a Celery worker; fewer axes vary).")
@click.option("-A", "--app", default=None, help="Your app (module or module:attr).")
@click.option("--runs-per-candidate", type=click.IntRange(min=2), default=3,
              show_default=True, help="Runs of each shrink candidate; 2 must fail.")
@click.option("--corpus-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("stress-corpus"), show_default=True,
              help="Where the shrunk case is saved (and whose cases weigh in the search).")
@click.option("--corner-weight", type=click.FloatRange(0, 1), default=0.6, show_default=True,
              help="Share of cases drawn from the corners that broke before.")
@click.option("--max-cases", type=click.IntRange(min=1), default=None,
              help="Stop after this many cases even with budget left.")
@click.option("--keep-going", is_flag=True,
              help="After a failure is shrunk and saved, search on until the budget is spent "
                   "(shrinking does not count against it).")
@_report_options
def explore(budget: str, shrink_budget: str, seed: int | None, brokers: tuple[str, ...],
            worker_cmd: str | None, app: str | None, runs_per_candidate: int,
            corpus_dir: Path, corner_weight: float, max_cases: int | None, keep_going: bool,
            report_dir: Path | None, json_path: Path | None, junit_path: Path | None) -> None:
    """Search for failing cases: random configurations, task mixes and fault schedules, each
    run as a cell; a failure is shrunk to a minimal case, saved under --corpus-dir and printed
    with the command that replays it. Exit code: 0 nothing found, 1 found, 2 could not run."""
    from stress.explorer import ExploreOptions
    from stress.explorer import explore as search

    _interrupt_on_term()
    try:
        options = ExploreOptions(
            budget=_seconds(budget), shrink_budget=_seconds(shrink_budget), seed=seed,
            brokers=list(brokers), worker_cmd=worker_cmd, app=app,
            runs_per_candidate=runs_per_candidate, corpus_dir=corpus_dir,
            corner_weight=corner_weight, max_cases=max_cases, keep_going=keep_going,
            report_dir=report_dir,
            json_path=json_path, junit_path=junit_path)
        code = search(options)
    except StressError as exc:
        _fail(exc)
    sys.exit(code)


@main.command()
@click.argument("report", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("cell_id")
@click.option("--report-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where this run's reports go (default: a new stress-reports/ folder).")
def replay(report: Path, cell_id: str, report_dir: Path | None) -> None:
    """Run one cell of an earlier report again, with its seed, duration and broker."""
    from stress.run import RunOptions, load_report, run_suite
    from stress.suites import Cell, apply_workload, load_suite

    try:
        data = load_report(report)
        cells = {c["cell"]: c for c in data.get("cells", [])}
        if cell_id not in cells:
            raise StressError(f"no cell {cell_id!r} in {report}; cells: {', '.join(cells)}")
        recorded = cells[cell_id]
        info = data.get("run", {})
        suite = load_suite(data.get("suite_file") or data["suite"])
        if info.get("workload"):
            apply_workload(suite, Path(info["workload"]))
        cell = Cell.recorded(recorded["params"], cell_id)
        options = RunOptions(seed=info.get("seed"), duration=info.get("duration"),
                             max_time=info.get("max_time"), broker_url=info.get("broker"),
                             app=info.get("app"), worker_cmd=info.get("worker_cmd"),
                             report_dir=report_dir, cell_seeds={cell.id: recorded["seed"]})
        code, _ = run_suite(suite, [cell], options)
    except StressError as exc:
        _fail(exc)
    sys.exit(code)


@main.command()
@click.argument("dirs", nargs=-1, required=True,
                type=click.Path(exists=True, path_type=Path))
@click.option("--compare", "others", multiple=True,
              type=click.Path(exists=True, path_type=Path),
              help="Another run's report folder to draw in the same charts (repeat for more); "
                   "the same as naming several folders.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the page (default: DIR/report.html for one run, "
                   "DIR/compare.html for several, DIR being the first).")
def report(dirs: tuple[Path, ...], others: tuple[Path, ...], output: Path | None) -> None:
    """Rebuild report.html from a run's report folder (or its report.json); with several
    runs (a taskq run and a --worker-cmd Celery run, say), one page whose charts put cells
    with the same id side by side."""
    from stress.report_html import CHARTS_HINT, charts_available, load_run, write_html

    try:
        runs = [load_run(path) for path in (*dirs, *others)]
        target = output or runs[0].directory / (
            "report.html" if len(runs) == 1 else "compare.html")
        write_html(target, runs)
    except (StressError, OSError) as exc:
        _fail(exc)
    if not charts_available():
        click.echo(f"taskq-stress: {CHARTS_HINT}", err=True)
    click.echo(str(target))


@main.group()
def bench() -> None:
    """Benchmarks: they print figures, they do not pass or fail."""


_T = TypeVar("_T")
_R = TypeVar("_R")

_worker_concurrency = click.option(
    "--concurrency", "-c", type=click.IntRange(min=1), default=2, show_default=True,
    help="The worker's pool size.")
_brokers = click.option(
    "--broker", "brokers", multiple=True,
    default=["redis://127.0.0.1:6379/0", "amqp://guest:guest@127.0.0.1:5672//"],
    show_default=True, help="A broker to measure on (repeat for several).")
_baseline = click.option(
    "--baseline", type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None, help="Alternate with the taskq package of this source tree (e.g. a git "
                       "worktree of an older commit).")


def _compare(help: str) -> Callable[[_Command], _Command]:
    return click.option("--compare", type=click.Choice(["celery"]), default=None, help=help)


def _kinds(compare: str | None, baseline: Path | None = None) -> list[str]:
    """What a benchmark alternates: taskq, then the baseline tree's, then Celery."""
    return ["taskq", *(["baseline"] if baseline else []), *([compare] if compare else [])]


def _alternate(rounds: int, variants: list[_T], run_one: Callable[[_T], _R],
               line: Callable[[_R], str], prefix: str = "") -> list[_R]:
    """``rounds`` runs of every variant, the variants alternating (so a slow spell of the
    machine falls on all of them); each run's figure goes to stderr as it comes."""
    runs = []
    for n in range(rounds):
        for variant in variants:
            run = run_one(variant)
            click.echo(f"{prefix}round {n + 1} {line(run)}", err=True)
            runs.append(run)
    return runs


@bench.command()
@_brokers
@click.option("--tasks", type=click.IntRange(min=1), default=20_000, show_default=True,
              help="Noop tasks in the queue to drain.")
@_worker_concurrency
@click.option("--rounds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Drains per broker (at least 5 with --compare).")
@_compare("Alternate with a Celery worker on the same messages (5 rounds).")
def drain(brokers: tuple[str, ...], tasks: int, concurrency: int, rounds: int,
          compare: str | None) -> None:
    """Drain a pre-filled queue of noop tasks with a -c 2 worker; print tasks per second."""
    import functools
    import json

    from stress.bench_drain import drain_once, report

    rounds = max(rounds, 5) if compare else rounds
    results = {}
    for url in brokers:
        runs = _alternate(
            rounds, _kinds(compare),
            functools.partial(drain_once, url=url, tasks=tasks, concurrency=concurrency),
            lambda run: f"{run.worker}: {run.rate:,.0f} tasks/s ({run.seconds:.2f} s; CPU "
                        f"per task: main {run.main_cpu_us:,.0f} µs, pool "
                        f"{run.pool_cpu_us:,.0f} µs)",
            prefix=f"{url.split('://')[0]} ")
        results[url.split("://")[0]] = report(runs)
    click.echo(json.dumps(results, indent=2))


@bench.command()
@click.option("--broker", default="redis://127.0.0.1:6379/0", show_default=True,
              help="The broker the queue is filled on (a fresh key prefix or queue per run).")
@click.option("--tasks", type=click.IntRange(min=1), default=100, show_default=True,
              help="Tasks in the queue before the worker starts.")
@_worker_concurrency
@click.option("--rounds", type=click.IntRange(min=1), default=5, show_default=True,
              help="Starts per variant, the variants alternating.")
@click.option("--mingle", type=click.Choice(["both", "on", "off"]), default="both",
              show_default=True, help="Measure with mingle, without (--without-mingle), or both.")
@_compare("Alternate with a Celery worker on the same messages.")
@_baseline
def startup(broker: str, tasks: int, concurrency: int, rounds: int, mingle: str,
            compare: str | None, baseline: Path | None) -> None:
    """Time a worker from exec to its first task's start (queue pre-filled); print the
    median and spread per variant."""
    import json
    import tempfile

    from stress.bench_startup import StartRun, Variant, report, start_once

    mingles = {"both": [True, False], "on": [True], "off": [False]}[mingle]
    variants = [Variant(kind, m) for m in mingles for kind in _kinds(compare, baseline)]
    with tempfile.TemporaryDirectory(prefix="taskq-bench-startup-") as tmp:
        scratch = Path(tmp)

        def start(variant: Variant) -> StartRun:
            return start_once(variant, broker, tasks, concurrency, baseline=baseline,
                              scratch=scratch)

        for variant in variants:  # untimed: fills the bytecode cache
            start(variant)
        runs = _alternate(rounds, variants, start,
                          lambda run: f"{run.variant.label}: {run.seconds * 1000:.0f} ms")
    click.echo(json.dumps(report(runs), indent=2))


@bench.command()
@click.option("--broker", default="redis://127.0.0.1:6379/0", show_default=True,
              help="The broker (also the result backend) to publish to, under a fresh prefix.")
@click.option("--count", type=click.IntRange(min=1), default=3000, show_default=True,
              help="send_task calls timed per round (after an untimed warm-up).")
@click.option("--rounds", type=click.IntRange(min=1), default=5, show_default=True,
              help="Rounds per client, the clients alternating.")
@_compare("Alternate with a Celery client sending the same messages.")
@_baseline
def publish(broker: str, count: int, rounds: int, compare: str | None,
            baseline: Path | None) -> None:
    """Publish noop tasks one send_task call at a time, results on; print calls per second."""
    import json

    from stress.bench_publish import publish_once, report

    runs = _alternate(
        rounds, _kinds(compare, baseline),
        lambda kind: publish_once(kind, broker, count, baseline=baseline),
        lambda run: f"{run.kind}: {run.rate:,.0f} send_task/s ({run.seconds:.2f} s)")
    click.echo(json.dumps(report(runs), indent=2))


@bench.command(name="all")
@click.option("--redis", "redis_url", default="redis://127.0.0.1:6379/0", show_default=True,
              help="The Redis server (broker and, for publishing, result backend).")
@click.option("--amqp", "amqp_url", default="amqp://guest:guest@127.0.0.1:5672//",
              show_default=True, help="The RabbitMQ broker of the RabbitMQ drain row.")
@click.option("--compare", multiple=True, type=click.Choice(["celery", "dramatiq"]),
              help="Measure this worker too, beside taskq (repeat for several; one that is "
                   "not installed is left out and said so).")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Rounds; each measures every row for every worker.")
@click.option("--row", "only", multiple=True, type=click.Choice(list(BENCH_ROWS)),
              help="Measure only this row (repeat for several; default: all).")
@click.option("--drain-tasks", type=click.IntRange(min=1), default=5000, show_default=True,
              help="Noop tasks per drain (Redis and RabbitMQ rows).")
@click.option("--redis-tasks", type=click.IntRange(min=1), default=3000, show_default=True,
              help="Tasks per drain of the row whose task makes 3 Redis calls.")
@click.option("--recycle-tasks", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Tasks queued for the --max-tasks-per-child 1 row ...")
@click.option("--recycle-budget", type=click.FloatRange(min=0.1), default=8.0,
              show_default=True, help="... which stops after this many seconds.")
@click.option("--startup-tasks", type=click.IntRange(min=1), default=100, show_default=True,
              help="Tasks queued before a worker starts (start-up row).")
@click.option("--publish-count", type=click.IntRange(min=1), default=2000, show_default=True,
              help="send_task calls timed per publishing round.")
@click.option("--group-size", type=click.IntRange(min=1), default=100, show_default=True,
              help="Tasks per group when publishing in bulk (--publish-count tasks a round).")
@click.option("--settle", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Seconds an idle worker sits before its PSS is read.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("bench-all.json"), show_default=True,
              help="Where the figures go as JSON (every measurement, with the load average).")
def bench_all(redis_url: str, amqp_url: str, compare: tuple[str, ...], rounds: int,
              only: tuple[str, ...], drain_tasks: int, redis_tasks: int, recycle_tasks: int,
              recycle_budget: float, startup_tasks: int, publish_count: int,
              group_size: int, settle: float, json_path: Path) -> None:
    """Measure every row of the README's performance table (drains, a Redis-bound task, start-up,
    recycling, idle PSS, publishing one by one and in groups), taskq beside the --compare
    workers, rounds alternating; print median and range per row and write JSON."""
    import json
    import tempfile

    from stress.bench_all import Sizes, make_rows, run, select, summary, table

    sizes = Sizes(drain_tasks, redis_tasks, recycle_tasks, recycle_budget, startup_tasks,
                  publish_count, group_size, settle)
    kinds = ["taskq", *dict.fromkeys(compare)]
    with tempfile.TemporaryDirectory(prefix="taskq-bench-all-") as tmp:
        rows = select(make_rows(redis_url, amqp_url, sizes, Path(tmp)), only)

        def progress(sample: Any) -> None:
            shown = "failed: " + sample.error if sample.value is None else f"{sample.value:,.1f}"
            click.echo(f"round {sample.round} {sample.row} {sample.kind}: {shown} "
                       f"(load {sample.load[0]:.2f}, {sample.seconds:.1f} s)", err=True)

        doc = summary(run(rows, kinds, rounds, progress))
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    click.echo(table(doc))
    click.echo(f"taskq-stress: figures written to {json_path}", err=True)


@bench.command()
@click.option("--kills", type=click.IntRange(min=1), default=500, show_default=True,
              help="Children to kill while they run a task.")
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=2, show_default=True,
              help="The pool's size.")
@click.option("--mib", type=click.IntRange(min=0), default=0, show_default=True,
              help="Memory each child holds (the kernel reports a death once it is freed).")
@click.option("--no-pidfd", is_flag=True, help="Measure the fallback without pidfds.")
def pool(kills: int, concurrency: int, mib: int, no_pidfd: bool) -> None:
    """Kill children running a task; print how fast the pool notices and replaces them."""
    import json

    from stress.bench_pool import run

    click.echo(json.dumps(run(kills, concurrency, mib, use_pidfd=not no_pidfd), indent=2))


@bench.command()
@_brokers
@click.option("--messages", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Noop task messages to consume and ack.")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Runs per broker.")
@click.option("--settle-each", is_flag=True,
              help="Apply each ack before taking the next message (Redis: a round trip per "
                   "message, as an early ack costs a worker).")
def consumer(brokers: tuple[str, ...], messages: int, rounds: int, settle_each: bool) -> None:
    """The floor under a worker's main process: CPU per message of a bare kombu consumer
    (receive and ack the drain's noop tasks, nothing else)."""
    import functools
    import json

    from stress.bench_common import spread
    from stress.bench_consumer import consume_once

    results = {}
    for url in brokers:
        runs = _alternate(
            rounds, [url], functools.partial(consume_once, messages=messages,
                                             settle_each=settle_each),
            lambda run: f"{run.rate:,.0f} messages/s, CPU {run.cpu_us:,.0f} µs per message",
            prefix=f"{url.split('://')[0]} ")
        results[url.split("://")[0]] = {
            "messages_per_s": spread([r.rate for r in runs]),
            "cpu_us_per_message": spread([r.cpu_us for r in runs])}
    click.echo(json.dumps(results, indent=2))


@bench.command()
@click.option("--url", default="redis://127.0.0.1:6379/0", show_default=True,
              help="The Redis server to measure on.")
@click.option("--messages", type=click.IntRange(min=1), default=3000, show_default=True,
              help="Messages to fetch and ack per mode.")
def redis(url: str, messages: int) -> None:
    """Fetch + ack throughput of taskq's Redis transport against kombu's, per mode."""
    from stress.bench_redis import rows

    for line in rows(url, messages):
        click.echo(line)
