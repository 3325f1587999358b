"""The public surface of ``chaos`` is deliberate, and chaos stands apart from taskq."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import chaos

ROOT = Path(__file__).resolve().parents[2]

EXPECTED = {
    # schedules and running them
    "Clock",
    "FakeClock",
    "Runner",
    "Schedule",
    "SystemClock",
    "at",
    "burst",
    "every",
    "parse_schedule",
    "poisson",
    "rate",
    # the journal
    "FaultRecord",
    "Journal",
    "read_journal",
    # injectors and targets
    "ChildrenOf",
    "Freeze",
    "GrowMemory",
    "Injector",
    "Kill",
    "KillMain",
    "Matching",
    "Outcome",
    "Pids",
    "ProcessRef",
    # network faults
    "Bandwidth",
    "Blackhole",
    "CutConnections",
    "FaultProxy",
    "Latency",
    "LimitData",
    "ProxyAPI",
    "ProxyClient",
    "Slicer",
    "SlowClose",
    "TimedFault",
    # brokers
    "Broker",
    "BrokerFault",
    "DockerRedis",
    "LocalRabbitMQ",
    "LocalRedis",
    # waiting
    "wait_until",
    # errors
    "BrokerError",
    "BrokerNotReady",
    "ChaosError",
    "DockerUnavailable",
    "JournalError",
    "ProxyError",
    "ScheduleError",
    "TargetError",
    "WaitTimeout",
}


def test_public_names_are_exactly_the_intended_ones() -> None:
    assert set(chaos.__all__) == EXPECTED
    assert len(chaos.__all__) == len(EXPECTED), "no duplicates"
    for name in chaos.__all__:
        assert getattr(chaos, name) is not None


def test_every_error_is_a_chaos_error() -> None:
    errors = [
        getattr(chaos, n)
        for n in chaos.__all__
        if n.endswith(("Error", "Timeout", "Ready", "Unavailable"))
    ]
    assert all(issubclass(e, chaos.ChaosError) for e in errors)


def test_chaos_does_not_import_taskq_or_docker_eagerly() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    code = "import sys, chaos; print(sorted(m for m in ('taskq', 'docker') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    ).stdout
    assert out.strip() == "[]"


def test_no_source_file_imports_taskq() -> None:
    for path in (ROOT / "chaos").rglob("*.py"):
        text = path.read_text()
        assert "import taskq" not in text and "from taskq" not in text, path
