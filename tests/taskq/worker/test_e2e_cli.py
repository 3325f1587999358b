"""The ``taskq`` command line around a real worker: graph, call, result, purge, bad ``-A``,
an unreachable broker, the root-with-pickle refusal, and node names."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from e2e_support import AMQP_PORT, HERE, HOST, TASKQ, Broker, Ledger, StartWorker, wait_until

from taskq import states
from taskq.worker.bootsteps import default_steps


def taskq(*args: str, env: dict[str, str] | None = None, timeout: float = 60
          ) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(HERE), **(env or {})}
    return subprocess.run([*TASKQ, *args], env=full_env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


# -- graph ------------------------------------------------------------------------------------

def test_graph_bootsteps_prints_valid_dot_with_every_step() -> None:
    out = taskq("graph", "bootsteps")
    assert out.returncode == 0, out.stderr
    dot = out.stdout
    assert re.match(r'\s*digraph\s+"?\w+"?\s*\{', dot), dot
    assert dot.rstrip().endswith("}") and dot.count("{") == dot.count("}") == 1
    nodes = set(re.findall(r'^\s*"([^"]+)";\s*$', dot, re.M))
    edges = re.findall(r'^\s*"([^"]+)"\s*->\s*"([^"]+)";\s*$', dot, re.M)
    assert nodes == {step.name for step in default_steps()}
    assert {"hub", "pool", "consumer"} <= nodes
    assert ("consumer", "hub") in edges and ("consumer", "pool") in edges
    assert all(a in nodes and b in nodes for a, b in edges)
    body = [line.strip() for line in dot.splitlines()[1:-1] if line.strip()]
    statement = re.compile(r'^(rankdir=\w+|node \[.*\]|"[^"]+"( -> "[^"]+")?);$')
    assert all(statement.match(line) for line in body), body


# -- call / result / purge --------------------------------------------------------------------

def test_call_and_result_against_a_live_worker(broker: Broker, worker: StartWorker) -> None:
    worker(broker, pool="threads")
    sent = taskq("call", "-A", "appmod", "appmod.add", "--args", "[2, 3]", env=broker.env)
    assert sent.returncode == 0, sent.stderr
    task_id = sent.stdout.strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", task_id), sent.stdout
    shown = taskq("result", "-A", "appmod", task_id, "--wait", "15", env=broker.env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "SUCCESS 5"


def test_result_of_a_failed_task_shows_the_traceback(redis_broker: Broker,
                                                     worker: StartWorker) -> None:
    worker(redis_broker, pool="solo")
    task_id = taskq("call", "-A", "appmod", "appmod.boom", env=redis_broker.env).stdout.strip()
    shown = taskq("result", "-A", "appmod", task_id, "--wait", "15", "--traceback",
                  env=redis_broker.env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("FAILURE ValueError('boom')"), shown.stdout
    assert "Traceback" in shown.stdout and 'raise ValueError("boom")' in shown.stdout


def test_purge_deletes_waiting_tasks_while_a_worker_is_busy(
        broker: Broker, worker: StartWorker, ledger: Ledger, tmp_path: Path) -> None:
    """Given a worker busy with a task (held until the purge is done) and reserving one more
    (-c 1, prefetch 1), when ``taskq purge -f`` runs, then the waiting tasks are gone: they
    never run, while the running and the reserved ones do."""
    w = worker(broker, pool="threads", concurrency=1, args=["--prefetch-multiplier", "1"])
    client = broker.app()
    gate = tmp_path / "gate"
    running = client.send_task("appmod.gated", (str(gate), str(ledger)))
    ledger.wait_started(running.id)
    waiting = [client.send_task("appmod.stamp", (str(ledger),)) for _ in range(5)]
    w.wait_log(rf"received appmod\.stamp\[{waiting[0].id}\]")  # the one it reserves
    out = taskq("purge", "-A", "appmod", "-f", env=broker.env)
    assert out.returncode == 0, out.stderr
    match = re.search(r"purged (\d+) messages", out.stdout)
    assert match, out.stdout
    purged = int(match.group(1))
    assert 3 <= purged <= 4, out.stdout  # 5 sent, 1 reserved (2 at most, if prefetch raced)
    gate.touch()
    marker = client.send_task("appmod.stamp", (str(ledger),))
    marker.get(timeout=30)
    assert running.get(timeout=30) == "opened"
    ran = [r for r in waiting if ledger.starts(r.id)]
    assert len(ran) == len(waiting) - purged
    assert all(r.state == states.PENDING for r in waiting if r not in ran)


# -- refusing to start ------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "message"), [
    ("no_such_module_xyz", r"-A no_such_module_xyz: no module named 'no_such_module_xyz'"),
    ("appmod:nothing", r"-A appmod:nothing: appmod has no attribute 'nothing'"),
    ("appmod:add", r"-A appmod:add: add is a Task, not a TaskQ"),
    ("json", r"-A json: found no TaskQ app"),
])
def test_bad_app_gives_a_one_line_error(spec: str, message: str) -> None:
    out = taskq("worker", "-A", spec, "-P", "solo", timeout=30)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert re.search(message, lines[0]), lines[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="the refusal applies to root only")
def test_worker_refuses_to_run_as_root_with_pickle_accepted(redis_broker: Broker) -> None:
    out = taskq("worker", "-A", "appmod", "-P", "solo",
                env={**redis_broker.env, "TASKQ_ACCEPT_CONTENT": "json,pickle"}, timeout=30)
    assert out.returncode != 0
    assert "refusing to run as root with pickle in accept_content" in out.stderr
    assert "Traceback" not in out.stderr, out.stderr


def test_unreachable_broker_is_retried_with_a_warning_then_used(
        amqp_broker: Broker, worker: StartWorker) -> None:
    """Given a broker URL whose port refuses connections, the worker warns (URL shown with
    the password hidden), keeps retrying without exiting, and consumes once the port opens."""
    from chaos.proxy import FaultProxy

    with FaultProxy(f"127.0.0.1:{AMQP_PORT}") as proxy:
        proxy.down()
        url = proxy.url("amqp", "//", "guest:guest")
        w = worker(amqp_broker, pool="threads", ready=False, mingle=True,
                   env={"TASKQ_BROKER_URL": url})
        shown = re.escape(f"amqp://guest:**@127.0.0.1:{proxy.port}//")
        wait_until(lambda: len(re.findall(rf"waiting for the broker at {shown}", w.log())) >= 3,
                   20,
                   "three connection attempts")
        assert w.alive()
        assert "guest:guest" not in w.log()
        proxy.up()
        w.wait_log(rf"connected to {shown}", 15)
        assert amqp_broker.app().send_task("appmod.add", (3, 4)).get(timeout=15) == 7
        w.stop()  # while the proxy still forwards
        # Each attempt fails at once: none may stall the loop (kombu's connect() once slept
        # 2 s between two tries inside it).
        assert "event loop lagged" not in w.log()


# -- node names -------------------------------------------------------------------------------

def test_node_name_template_expands_host(redis_broker: Broker, worker: StartWorker) -> None:
    unique = redis_broker.name
    w = worker(redis_broker, pool="solo", node=f"{unique}@%h")
    assert w.hostname == f"{unique}@{HOST}"
    w.wait_log(rf"{re.escape(w.hostname)} ready")
    assert "%h" not in w.log()
    w.ping(redis_broker.app())


def test_default_node_name_is_taskq_at_host(redis_broker: Broker, worker: StartWorker) -> None:
    """No -n, and mingle and gossip left on: the defaults an operator gets."""
    w = worker(redis_broker, pool="solo", node="", mingle=True)
    assert w.hostname == f"taskq@{HOST}"
    w.wait_log(rf"taskq worker taskq@{re.escape(HOST)}\n")
    w.wait_log(rf"taskq@{re.escape(HOST)} ready")
    w.ping(redis_broker.app())
    assert "mingle: no other workers answered" in w.log()


def test_stopping_takes_less_than_the_grace_period(redis_broker: Broker,
                                                  worker: StartWorker) -> None:
    w = worker(redis_broker, pool="threads")
    assert w.stop() == 0  # on its own: after the grace period it would have been SIGKILLed
    assert "stopped" in w.log()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_sigterm_stops_a_worker_still_waiting_for_its_broker(
        redis_broker: Broker, worker: StartWorker) -> None:
    port = _free_port()
    w = worker(redis_broker, pool="threads", ready=False,
               env={"TASKQ_BROKER_URL": f"redis://127.0.0.1:{port}/0"})
    w.wait_log(rf"waiting for the broker at redis://127.0.0.1:{port}/0", 15)
    w.signal(signal.SIGTERM)
    assert w.wait_exit(5) == 0
    assert "stopped" in w.log()


def test_refused_credentials_stop_the_worker_with_a_clear_reason(
        amqp_broker: Broker, worker: StartWorker) -> None:
    """Retrying cannot fix a wrong password: the worker says so, hiding it, and exits 1."""
    url = "amqp://guest:wrong-secret@127.0.0.1:5672//"
    w = worker(amqp_broker, pool="threads", ready=False, env={"TASKQ_BROKER_URL": url})
    assert w.wait_exit(20) == 1
    log = w.log()
    assert "refused the credentials" in log, log
    assert "amqp://guest:**@127.0.0.1:5672//" in log
    assert "wrong-secret" not in log


def test_remote_control_shutdown_stops_the_worker_warmly(
        broker: Broker, worker: StartWorker, ledger: Ledger) -> None:
    w = worker(broker, pool="threads")
    client = broker.app()
    running = client.send_task("appmod.sleeper", (1.0, str(ledger)))
    ledger.wait_started(running.id)
    replies = client.control.shutdown(destination=[w.hostname], reply=True, timeout=2.0)
    assert replies == [{w.hostname: {"ok": "shutting down"}}]
    assert w.wait_exit(10) == 0
    assert running.get(timeout=5) == "slept"
    assert "warm shutdown" in w.log()


def test_a_users_own_step_runs_and_shows_in_the_graph(redis_broker, worker) -> None:
    import os
    import subprocess
    import sys

    w = worker(redis_broker, pool="threads")
    w.wait_log(r"audit step started on " + w.hostname.replace(".", r"\."))
    env = {**os.environ, **redis_broker.env,
           "PYTHONPATH": os.path.dirname(os.path.abspath(__file__))}
    dot = subprocess.run([sys.executable, "-m", "taskq", "graph", "bootsteps", "-A", "appmod"],
                         env=env, capture_output=True, text=True, timeout=30, check=True).stdout
    assert '"audit" -> "consumer";' in dot
