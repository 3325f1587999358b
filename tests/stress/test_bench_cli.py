"""``taskq-stress bench pool``, ``redis``, ``startup`` and ``publish`` run and print their
figures.

Benchmarks do not pass or fail on their numbers; these tests check that each one runs to the
end on a small size and prints every figure it promises.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.stress.conftest import ROOT


def _bench(*args: str, timeout: float = 240) -> str:
    done = subprocess.run([sys.executable, "-m", "stress", "bench", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_bench_pool_prints_the_detection_latencies_of_each_kill():
    figures = json.loads(_bench("pool", "--kills", "3", "--concurrency", "1"))
    assert figures["kills"] == 3
    assert figures["pidfd"] is True
    for part in ("kill_to_pidfd_readable", "pidfd_readable_to_lost", "kill_to_lost",
                 "kill_to_replacement_ready"):
        assert 0 <= figures[part]["p50_ms"] <= figures[part]["max_ms"], part


def test_bench_redis_prints_a_rate_per_mode_and_transport(redis_url):
    lines = _bench("redis", "--url", redis_url, "--messages", "20").splitlines()
    assert "kombu redis" in lines[0] and "taskq redis" in lines[0]
    rows = {line[:20].strip(): line[20:].split() for line in lines[1:]}
    assert list(rows) == ["get + ack", "consume p1 + ack", "consume p10 + ack",
                          "consume p100 + ack"]
    for mode, rates in rows.items():
        assert len(rates) == 2 and all(float(r.replace(",", "")) > 0 for r in rates), mode


def test_bench_startup_prints_each_variants_time_to_the_first_task(redis_url):
    figures = json.loads(_bench("startup", "--broker", redis_url, "--rounds", "1",
                                "--tasks", "3"))
    assert len(figures["load_average"]) == 3
    for variant in ("taskq", "taskq --without-mingle"):
        assert figures[variant]["runs"] == 1, variant
        assert 0 < figures[variant]["min_ms"] <= figures[variant]["median_ms"] \
            <= figures[variant]["max_ms"], variant


def test_bench_publish_prints_send_task_calls_per_second(redis_url):
    figures = json.loads(_bench("publish", "--broker", redis_url, "--count", "20",
                                "--rounds", "2"))
    assert figures["taskq"]["runs"] == 2
    assert 0 < figures["taskq"]["min_per_s"] <= figures["taskq"]["median_per_s"] \
        <= figures["taskq"]["max_per_s"]


_ALL_ROWS = ["drain_redis", "drain_amqp", "cpu_redis", "cpu_amqp", "redis3", "redis3_threads",
             "startup", "recycle", "pss", "publish", "publish_group"]
def test_bench_drain_prints_the_rate_and_the_cpu_each_task_cost(redis_url):
    figures = json.loads(_bench("drain", "--broker", redis_url, "--tasks", "5000")
                         )["redis"]["taskq"]
    assert figures["runs"] == 1 and figures["median_tasks_per_s"] > 0
    # The main process and the pool both did work for every task drained
    assert figures["median_main_cpu_us_per_task"] > 0
    assert figures["median_pool_cpu_us_per_task"] > 0


def test_bench_consumer_prints_a_bare_consumers_cpu_per_message(redis_url):
    for extra in ([], ["--settle-each"]):
        figures = json.loads(_bench("consumer", "--broker", redis_url, "--messages", "500",
                                    "--rounds", "2", *extra))["redis"]
        assert figures["messages_per_s"]["runs"] == 2 and figures["messages_per_s"]["min"] > 0
        assert figures["cpu_us_per_message"]["min"] > 0  # it did consume and ack every one


_TINY = ["--drain-tasks", "2000", "--redis-tasks", "1500", "--recycle-tasks", "100",
         "--recycle-budget", "1", "--startup-tasks", "3", "--publish-count", "50",
         "--group-size", "10", "--settle", "0"]


@pytest.mark.timeout(900)  # eleven benchmarks one after another: minutes on a loaded machine
def test_bench_all_measures_every_row_of_the_table_and_writes_its_figures(
        redis_url, amqp_url, tmp_path):
    # Given every row, one tiny round, taskq alone
    out = tmp_path / "all.json"
    table = _bench("all", "--redis", redis_url, "--amqp", amqp_url, "--rounds", "1",
                   "--json", str(out), *_TINY, timeout=840)
    doc = json.loads(out.read_text())
    # Then the JSON has one entry per row, in the order, each with its figure
    # (or, for a drain the worker finished before it could be timed, the reason)
    assert [row["key"] for row in doc["rows"]] == _ALL_ROWS
    assert doc["rounds"] == 1 and doc["kinds"] == ["taskq"]
    assert [(s["row"], s["kind"], s["round"]) for s in doc["samples"]] == [
        (key, "taskq", 1) for key in _ALL_ROWS]
    for row in doc["rows"]:
        entry = row["taskq"]
        assert row["unit"] and row["target"], row["key"]
        assert entry["load_1m"]["min"] <= entry["load_1m"]["max"], row["key"]
        if row["key"] in {"startup", "pss", "publish", "publish_group"}:
            assert entry["runs"] == 1 and entry["min"] == entry["median"] == entry["max"] > 0
        else:
            assert entry["runs"] == 1 or entry["errors"], row["key"]
    # And the table printed has a line per row under its header, then the notes
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["figure", "unit"] and "taskq" in lines[0]
    assert "load 1m" in lines[0]
    for row, line in zip(doc["rows"], lines[2:2 + len(_ALL_ROWS)], strict=True):
        assert line.startswith(row["figure"]), line
    assert "median (min-max) of 1 rounds" in table


def test_bench_all_alternates_which_worker_goes_first_and_names_what_it_left_out(
        redis_url, tmp_path):
    out = tmp_path / "all.json"
    table = _bench("all", "--redis", redis_url, "--rounds", "2", "--compare", "celery",
                   "--compare", "dramatiq", "--row", "pss", "--row", "publish",
                   "--json", str(out), *_TINY)
    doc = json.loads(out.read_text())
    order = [(s["round"], s["row"], s["kind"]) for s in doc["samples"]]
    assert order == [(1, "pss", "taskq"), (1, "pss", "celery"),
                     (1, "publish", "taskq"), (1, "publish", "celery"),
                     (2, "pss", "celery"), (2, "pss", "taskq"),
                     (2, "publish", "celery"), (2, "publish", "taskq")]
    for row in doc["rows"]:
        for kind in ("taskq", "celery"):
            assert row[kind]["runs"] == 2 and len(row[kind]["values"]) == 2, (row, kind)
        assert row["ratio_taskq_over_celery"] > 0
    if "dramatiq" in doc["skipped"]:  # not installed here: said in the JSON and the table
        assert "dramatiq: not installed" in table
