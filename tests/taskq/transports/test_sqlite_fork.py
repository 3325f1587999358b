"""A process forked while another of its threads is inside a write transaction on the SQLite
broker (the worker forks a pool child while a thread publishes what follows a dead child's
task, issue 15): the child must still be able to write. SQLite keeps a process's locks in
memory, so a child forked mid-transaction could never write that file again."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

from taskq.transports.sqlite_store import Store


def test_a_child_forked_while_a_thread_writes_can_write_the_broker(tmp_path: Path) -> None:
    path = str(tmp_path / "broker.db")
    store = Store(path)
    store.publish([("q", "before", None)])
    inside, release = threading.Event(), threading.Event()

    def hold(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO taskq_messages (queue, payload) VALUES ('q', 'held')")
        inside.set()
        assert release.wait(30)

    writer = threading.Thread(target=store.write, args=(hold,))
    writer.start()
    assert inside.wait(30)
    # The transaction ends a little after the fork begins (a fixed fork would wait for it).
    ender = threading.Timer(0.2, release.set)
    ender.start()
    pid = os.fork()
    if pid == 0:  # the child: a connection of its own, as a pool child's publish opens
        code = 1
        try:
            Store(path, busy_timeout=10.0).publish([("q", "from the child", None)])
            code = 0
        finally:
            os._exit(code)
    release.set()
    writer.join(30)
    ender.cancel()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child could not write the broker"
    payloads = store.read(lambda db: [r[0] for r in db.execute(
        "SELECT payload FROM taskq_messages ORDER BY id")])
    assert payloads == ["before", "held", "from the child"]
