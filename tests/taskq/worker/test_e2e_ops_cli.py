"""`taskq events --dump` and `taskq multi` against live workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from e2e_support import Broker, StartWorker, wait_until

HERE = Path(__file__).parent


def env_for(broker: Broker) -> dict[str, str]:
    return {**os.environ, **broker.env, "PYTHONPATH": str(HERE)}


def test_events_dump_prints_the_workers_events(redis_broker: Broker, worker: StartWorker
                                               ) -> None:
    w = worker(redis_broker, pool="threads", args=["-E"])
    proc = subprocess.Popen([sys.executable, "-m", "taskq", "events", "--dump", "-A", "appmod",
                             "--duration", "20"], env=env_for(redis_broker),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = redis_broker.app()
        assert proc.stdout is not None
        lines: list[dict] = []

        def saw_success() -> bool:
            client.send_task("appmod.add", (2, 2)).get(timeout=10)
            line = proc.stdout.readline()
            if line.startswith("{"):
                lines.append(json.loads(line))
            return any(e["type"] == "task-succeeded" and e["hostname"] == w.hostname
                       for e in lines)

        wait_until(saw_success, timeout=20, what="taskq events --dump shows a success")
        assert all("clock" in e and "timestamp" in e for e in lines)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)


def test_multi_starts_and_stops_named_workers(redis_broker: Broker, tmp_path: Path) -> None:
    env = env_for(redis_broker)
    base = [sys.executable, "-m", "taskq", "multi"]
    folder = str(tmp_path)
    start = subprocess.run([*base, "start", "2", "--folder", folder, "--", "-A", "appmod",
                            "-P", "threads", "-c", "1", "--without-mingle"],
                           env=env, capture_output=True, text=True, timeout=60, check=False)
    assert start.returncode == 0, start.stderr
    try:
        client = redis_broker.app()
        wait_until(lambda: len(client.control.ping(timeout=0.5)) >= 2, timeout=20,
                   what="two multi workers answering")
        names = sorted(n.split("@")[0] for r in client.control.ping(timeout=0.5) for n in r)
        assert names == ["w1", "w2"]
        assert all((tmp_path / f"w{i}.pid").exists() for i in (1, 2))
    finally:
        stop = subprocess.run([*base, "stop", "2", "--folder", folder], env=env,
                              capture_output=True, text=True, timeout=120, check=False)
    assert stop.returncode == 0 and stop.stdout.count("stopped") == 2, stop.stdout
    assert not (tmp_path / "w1.pid").exists()
