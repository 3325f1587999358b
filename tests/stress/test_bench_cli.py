"""``taskq-stress bench pool``, ``redis``, ``startup`` and ``publish`` run and print their
figures.

Benchmarks do not pass or fail on their numbers; these tests check that each one runs to the
end on a small size and prints every figure it promises.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.stress.conftest import ROOT


def _bench(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "stress", "bench", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
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
