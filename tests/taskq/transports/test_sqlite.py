"""taskq's SQLite transport through kombu's API: leases, renewal, restore, wake-ups, errors.

Every test has its own database under ``tmp_path``; other processes are real subprocesses
(killed with real signals); waits are conditions with deadlines.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.asynchronous import Hub
from kombu.transport import TRANSPORT_ALIASES

import taskq  # noqa: F401 - registers the sqlite:// alias
from chaos import FakeClock
from taskq.config import Config
from taskq.errors import BrokerBusy, BrokerDatabaseError, ConfigurationError
from taskq.publish import make_connection
from taskq.transports import sqlite as sqlite_transport
from taskq.transports.lease import lease_of

Connect = Callable[..., Connection]
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/broker.db"  # tmp_path is absolute: four slashes


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "broker.db"


@pytest.fixture
def connect(url: str) -> Iterator[Connect]:
    opened: list[Connection] = []

    def connect(**options: Any) -> Connection:
        conn = Connection(url, transport_options=options)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.release()


def make_queue(name: str = "jobs") -> Queue:
    return Queue(name, Exchange(name), routing_key=name)


def publish(conn: Connection, queue: Queue, bodies: list[Any], **kwargs: Any) -> None:
    producer = Producer(conn)
    for body in bodies:
        producer.publish(body, exchange=queue.exchange, routing_key=queue.routing_key,
                         declare=[queue], serializer="json", **kwargs)


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.times: list[float] = []  # monotonic time of each arrival

    def __call__(self, body: Any, message: Any) -> None:
        self.messages.append(message)
        self.times.append(time.monotonic())

    @property
    def bodies(self) -> list[Any]:
        return [m.payload for m in self.messages]


def consume(conn: Connection, queues: list[Queue], prefetch: int | None = None,
            no_ack: bool = False) -> Inbox:
    inbox = Inbox()
    Consumer(conn, queues, callbacks=[inbox], accept=["json"], no_ack=no_ack,
             prefetch_count=prefetch).consume()
    return inbox


def drain_until(conns: list[Connection], done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        for conn in conns:
            try:
                conn.drain_events(timeout=0.05)
            except TimeoutError:
                pass
    return True


def drain_once(conn: Connection, timeout: float = 0.01) -> None:
    """One ``drain_events``: renew, restore and poll when due, deliver what is ready."""
    with contextlib.suppress(TimeoutError):
        conn.drain_events(timeout=timeout)


def rows(db_path: Path, where: str = "1") -> int:
    with sqlite3.connect(db_path) as db:
        return int(db.execute(f"SELECT count(*) FROM taskq_messages WHERE {where}").fetchone()[0])


# -- selection --------------------------------------------------------------------------------
def test_importing_taskq_registers_sqlite_and_make_connection_selects_it(url: str) -> None:
    assert TRANSPORT_ALIASES["sqlite"] == sqlite_transport.TRANSPORT
    conn = make_connection(Config(environ={}), url)
    try:
        assert isinstance(conn.transport, sqlite_transport.Transport)
        assert conn.transport.path.endswith("broker.db")
    finally:
        conn.release()


def test_a_relative_url_is_relative_to_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with Connection("sqlite:///sub.db") as conn:
        conn.connect()
        assert conn.transport.path == str(tmp_path / "sub.db")
    assert (tmp_path / "sub.db").exists()


# -- basics -----------------------------------------------------------------------------------
def test_messages_are_consumed_in_order_and_acks_delete_them(
        connect: Connect, db_path: Path) -> None:
    queue = make_queue()
    publish(connect(), queue, [{"n": n} for n in range(5)])
    assert rows(db_path) == 5  # committed before publish returned
    conn = connect()
    inbox = consume(conn, [queue])

    assert drain_until([conn], lambda: len(inbox.messages) == 5, timeout=5)
    assert inbox.bodies == [{"n": n} for n in range(5)]
    assert rows(db_path, "lease IS NOT NULL") == 5
    for message in inbox.messages:
        message.ack()
    assert rows(db_path) == 0


def test_a_fetch_leases_the_free_prefetch_window_in_one_transaction(
        connect: Connect) -> None:
    queue = make_queue()
    publish(connect(), queue, list(range(12)))
    conn = connect()
    store = conn.transport.store
    fetched: list[int] = []
    real_fetch = store.fetch

    def counting_fetch(*args: Any, **kwargs: Any) -> Any:
        got = real_fetch(*args, **kwargs)
        fetched.append(len(got))
        return got

    store.fetch = counting_fetch  # a spy on this connection's store: counts transactions
    inbox = consume(conn, [queue], prefetch=5)

    assert drain_until([conn], lambda: bool(inbox.messages), timeout=5)
    assert (fetched, inbox.bodies) == ([5], [0, 1, 2, 3, 4])
    for message in inbox.messages:
        message.ack()
    assert drain_until([conn], lambda: len(inbox.messages) == 10, timeout=5)
    assert fetched == [5, 5]


def test_reject_with_requeue_puts_the_message_back_first_marked_redelivered(
        connect: Connect) -> None:
    queue = make_queue()
    publish(connect(), queue, ["first", "second"])
    conn = connect()
    inbox = consume(conn, [queue], prefetch=1)
    assert drain_until([conn], lambda: bool(inbox.messages), timeout=5)
    assert not inbox.messages[0].delivery_info["redelivered"]
    inbox.messages[0].reject(requeue=True)

    assert drain_until([conn], lambda: len(inbox.messages) == 2, timeout=5)
    assert inbox.bodies == ["first", "first"]
    assert inbox.messages[1].delivery_info["redelivered"] is True


def test_reject_without_requeue_deletes_the_message(connect: Connect, db_path: Path) -> None:
    queue = make_queue()
    publish(connect(), queue, ["poison"])
    conn = connect()
    inbox = consume(conn, [queue])
    assert drain_until([conn], lambda: bool(inbox.messages), timeout=5)
    inbox.messages[0].reject(requeue=False)
    assert rows(db_path) == 0


def test_release_requeues_reserved_messages_at_once_in_order(
        connect: Connect, db_path: Path) -> None:
    queue = make_queue()
    publish(connect(), queue, ["a", "b", "c"])
    worker = connect()
    inbox = consume(worker, [queue], prefetch=3)
    assert drain_until([worker], lambda: len(inbox.messages) == 3, timeout=5)

    channel = inbox.messages[0].channel
    assert channel.release([m.delivery_tag for m in inbox.messages[:2]]) == 2
    other = connect()
    taken = consume(other, [queue], prefetch=2)
    # Well before the 60 s lease would have brought them back.
    assert drain_until([other], lambda: len(taken.messages) == 2, timeout=30)
    assert taken.bodies == ["a", "b"]
    inbox.messages[0].ack()  # released: no lease any more, dropped
    assert rows(db_path, "lease IS NOT NULL") == 3  # c still held; a and b by the other


def test_purge_size_and_delete(connect: Connect, db_path: Path) -> None:
    queue = make_queue()
    conn = connect()
    publish(conn, queue, list(range(4)))
    bound = queue(conn.default_channel)
    assert bound.queue_declare(passive=True).message_count == 4
    assert bound.purge() == 4
    assert bound.queue_declare(passive=True).message_count == 0
    publish(conn, queue, ["x"])
    bound.delete()
    assert rows(db_path) == 0
    with pytest.raises(conn.channel_errors):
        queue(conn.channel()).queue_declare(passive=True)


def test_several_queues_are_all_consumed(connect: Connect) -> None:
    first, second = make_queue("a"), make_queue("b")
    conn = connect()
    inbox = consume(conn, [first, second])
    publish(connect(), first, ["to a"])
    publish(connect(), second, ["to b"])
    assert drain_until([conn], lambda: len(inbox.messages) == 2, timeout=5)
    assert sorted(inbox.bodies) == ["to a", "to b"]


def test_a_fanout_broadcast_reaches_every_bound_queue_of_other_processes_connections(
        connect: Connect) -> None:
    exchange = Exchange("bcast", "fanout")
    one, two = connect(), connect()
    inbox_one = consume(one, [Queue("bcast.one", exchange, auto_delete=True)], no_ack=True)
    inbox_two = consume(two, [Queue("bcast.two", exchange, auto_delete=True)], no_ack=True)
    # A publisher that declared no queue: the bindings come from the database.
    Producer(connect()).publish({"cmd": "ping"}, exchange=exchange, declare=[exchange])

    assert drain_until([one, two], lambda: bool(inbox_one.messages and inbox_two.messages),
                       timeout=5)
    assert inbox_one.bodies == inbox_two.bodies == [{"cmd": "ping"}]


def test_a_direct_reply_reaches_a_queue_only_the_other_side_declared(connect: Connect) -> None:
    replies = Queue("reply.q", Exchange("reply.x", "direct"), routing_key="ticket-1")
    client = connect()
    inbox = consume(client, [replies], no_ack=True)
    Producer(connect()).publish({"pong": 1}, exchange="reply.x", routing_key="ticket-1")
    assert drain_until([client], lambda: bool(inbox.messages), timeout=5)
    assert inbox.bodies == [{"pong": 1}]


def test_no_ack_consumers_pop_without_a_lease(connect: Connect, db_path: Path) -> None:
    queue = make_queue()
    publish(connect(), queue, ["reply"])
    conn = connect(lease_timeout=0.3, restore_interval=0.1)
    inbox = consume(conn, [queue], no_ack=True)
    assert drain_until([conn], lambda: bool(inbox.messages), timeout=5)
    assert rows(db_path) == 0
    drain_until([conn], lambda: False, timeout=0.6)  # two leases long: nothing comes back
    assert inbox.bodies == ["reply"]


# -- leases -----------------------------------------------------------------------------------
def test_an_expired_lease_comes_back_redelivered_and_the_old_holders_ack_is_a_no_op(
        connect: Connect, db_path: Path) -> None:
    queue = make_queue()
    publish(connect(), queue, [{"n": 2**60}], headers={"text": "é \" \\ /"})
    stale = connect(lease_timeout=0.3)
    first = queue(stale.default_channel).get()  # basic_get never renews: the lease runs out
    assert first is not None and not first.delivery_info["redelivered"]
    conn = connect(lease_timeout=30, restore_interval=0.1)
    inbox = consume(conn, [queue])

    assert drain_until([conn], lambda: bool(inbox.messages), timeout=30)
    again = inbox.messages[0]
    assert again.payload == {"n": 2**60} and again.headers["text"] == "é \" \\ /"
    assert again.delivery_info["redelivered"] is True
    first.ack()  # its lease is gone: dropped; the new holder's lease is untouched
    assert rows(db_path, "lease IS NOT NULL") == 1
    again.ack()
    assert rows(db_path) == 0


@pytest.mark.parametrize("loop", ["drain_events", "hub"])
def test_a_renewing_consumer_keeps_its_message_through_three_leases(
        connect: Connect, db_path: Path, loop: str) -> None:
    # Given a 60 s lease renewed every 20 s, on a clock the test drives: the transports time
    # renewal and restore on it, and the lease deadlines in the file follow it.
    lease, step_by = 60.0, 5.0
    clock = FakeClock(start=1000.0)
    queue = make_queue()
    publish(connect(), queue, ["long task"])
    options = {"lease_timeout": lease, "renew_interval": 20, "restore_interval": 5,
               "poll_interval": 0.01, "clock": clock.monotonic}
    holder, other = connect(**options), connect(**options)
    held = consume(holder, [queue], prefetch=1)
    hub = Hub()
    if loop == "hub":
        holder.register_with_event_loop(hub)
        step: Callable[[], None] = hub.run_once
    else:
        def step() -> None:
            drain_once(holder)
    try:
        deadline = time.monotonic() + 30
        while not held.messages and time.monotonic() < deadline:
            step()
        assert held.bodies == ["long task"]
        stolen = consume(other, [queue], prefetch=1)
        # When 3.3 leases pass on that clock while the holder runs and another consumer
        # restores expired leases, both between 5 s steps (no real waiting for the lease)
        for _ in range(round(3.3 * lease / step_by)):
            clock.advance(step_by)
            step()
            drain_once(other)
        # Then the holder kept its message
        assert stolen.messages == [] and held.bodies == ["long task"]
        # And once the holder stops renewing for longer than its lease, it comes back
        clock.advance(lease + step_by)
        assert drain_until([other], lambda: bool(stolen.messages), timeout=30)
        assert stolen.bodies == ["long task"]
        assert stolen.messages[0].delivery_info["redelivered"]
        held.messages[0].ack()  # its lease is gone: dropped
        if loop == "hub":
            hub.run_once()  # acks on the loop commit at its next tick
        assert rows(db_path) == 1
        stolen.messages[0].ack()
        assert rows(db_path) == 0
    finally:
        hub.close()


def test_closing_a_connection_requeues_nothing_the_lease_brings_it_back(
        connect: Connect, db_path: Path) -> None:
    queue = make_queue()
    publish(connect(), queue, ["running"])
    worker = connect(lease_timeout=1)
    inbox = consume(worker, [queue])
    assert drain_until([worker], lambda: bool(inbox.messages), timeout=5)
    worker.release()
    assert rows(db_path, "lease IS NOT NULL") == 1

    conn = connect(restore_interval=0.1)
    again = consume(conn, [queue])
    assert drain_until([conn], lambda: bool(again.messages), timeout=30)
    assert again.bodies == ["running"] and again.messages[0].delivery_info["redelivered"]


HOLDER = textwrap.dedent("""
    import sys
    import taskq
    from kombu import Connection, Consumer, Exchange, Queue
    url, count = sys.argv[1], int(sys.argv[2])
    conn = Connection(url, transport_options={"lease_timeout": 3, "renew_interval": 0.25,
                                              "restore_interval": 0.2})
    held = []
    consumer = Consumer(conn, [Queue("jobs", Exchange("jobs"), routing_key="jobs")],
                        callbacks=[lambda body, message: held.append(message)],
                        accept=["json"], prefetch_count=count)
    consumer.consume()
    while len(held) < count:
        try:
            conn.drain_events(timeout=0.1)
        except TimeoutError:
            pass
    print("holding", len(held), flush=True)
    while True:  # never acks; renews until killed
        try:
            conn.drain_events(timeout=1)
        except TimeoutError:
            pass
""")


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else ""


def test_a_sigkilled_consumers_messages_come_back_after_the_lease_none_lost(
        connect: Connect, url: str, db_path: Path) -> None:
    queue = make_queue()
    publish(connect(), queue, list(range(20)))
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, url, "20"],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert read_line(proc, timeout=20).strip() == "holding 20"
        assert rows(db_path, "lease IS NOT NULL") == 20
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with sqlite3.connect(db_path) as db:  # the dead holder's lease deadlines, final now
        deadlines = [d for (d,) in db.execute(
            "SELECT deadline FROM taskq_messages WHERE lease IS NOT NULL")]
    assert len(deadlines) == 20
    conn = connect(lease_timeout=1.5, restore_interval=0.2)
    clock = conn.transport.store.clock  # the clock the deadlines are on
    first_seen: list[float] = []

    def all_back() -> bool:
        if inbox.messages and not first_seen:
            first_seen.append(clock())
        return len(inbox.messages) == 20

    inbox = consume(conn, [queue], prefetch=20)
    # After the lease (3 s), with a deadline generous for a loaded machine.
    assert drain_until([conn], all_back, timeout=30)
    assert inbox.bodies == list(range(20))  # all of them, in publish order
    assert all(m.delivery_info["redelivered"] for m in inbox.messages)
    assert first_seen[0] >= min(deadlines), "a message came back before its lease ended"


WORKER = textwrap.dedent("""
    import sys
    import taskq
    from kombu import Connection, Consumer, Exchange, Queue
    url, expected = sys.argv[1], int(sys.argv[2])
    conn = Connection(url, transport_options={"lease_timeout": 30})
    def on_message(body, message):
        print(body, flush=True)
        message.ack()
    Consumer(conn, [Queue("jobs", Exchange("jobs"), routing_key="jobs")],
             callbacks=[on_message], accept=["json"], prefetch_count=10).consume()
    while True:
        try:
            conn.drain_events(timeout=0.5)
        except TimeoutError:
            # Stop once the queue is empty and stays so (the publishers are done).
            with conn.channel() as ch:
                left = ch.queue_declare("jobs", passive=True).message_count
            if left == 0 and len(open(sys.argv[3]).read().split()) >= expected:
                break
""")

PUBLISHER = textwrap.dedent("""
    import sys
    import taskq
    from kombu import Connection, Exchange, Producer, Queue
    url, tag, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    queue = Queue("jobs", Exchange("jobs"), routing_key="jobs")
    with Connection(url) as conn:
        producer = Producer(conn)
        for n in range(count):
            producer.publish(f"{tag}-{n}", exchange=queue.exchange, routing_key="jobs",
                             declare=[queue], serializer="json")
    with open(sys.argv[4], "a") as done:
        done.write(f"{tag}\\n")
""")


def test_concurrent_publishers_and_consumers_deliver_every_message_exactly_once(
        url: str, tmp_path: Path, db_path: Path) -> None:
    publishers, per_publisher = 3, 300
    done = tmp_path / "published.txt"
    done.write_text("")
    consumers = [subprocess.Popen([sys.executable, "-c", WORKER, url, str(publishers),
                                   str(done)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
                 for _ in range(2)]
    producers = [subprocess.Popen([sys.executable, "-c", PUBLISHER, url, f"p{i}",
                                   str(per_publisher), str(done)], cwd=ROOT)
                 for i in range(publishers)]
    try:
        for proc in producers:
            assert proc.wait(timeout=60) == 0
        outputs = [proc.communicate(timeout=60)[0] for proc in consumers]
    finally:
        for proc in [*producers, *consumers]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    received = [line for out in outputs for line in out.split()]
    expected = {f"p{i}-{n}" for i in range(publishers) for n in range(per_publisher)}
    assert len(received) == len(expected)  # none twice
    assert set(received) == expected  # none lost
    assert all(out.split() for out in outputs), "both consumers took a share"
    assert rows(db_path) == 0


# -- contention and bad files -----------------------------------------------------------------
def hold_write_lock(db_path: Path, seconds: float, holding: threading.Event) -> None:
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    holding.set()
    time.sleep(seconds)  # the stimulus: another process's write transaction lasting this long
    db.execute("COMMIT")
    db.close()


@contextlib.contextmanager
def write_locked(db_path: Path, seconds: float) -> Iterator[None]:
    """Another connection holds the write lock for ``seconds`` from when this block starts."""
    holding = threading.Event()
    holder = threading.Thread(target=hold_write_lock, args=(db_path, seconds, holding))
    holder.start()
    try:
        assert holding.wait(5)
        yield
    finally:
        holder.join()


def test_a_locked_database_is_waited_for_not_surfaced(connect: Connect, db_path: Path) -> None:
    queue = make_queue()
    conn = connect(busy_timeout=30)
    publish(conn, queue, ["before"])
    errors: list[BaseException] = []

    def publish_while_locked() -> None:
        try:
            publish(conn, queue, ["while locked"])
        except BaseException as exc:
            errors.append(exc)

    # This test holds the write lock itself, so the publish cannot get through before it
    # lets go, however slow the machine.
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    publisher = threading.Thread(target=publish_while_locked)
    try:
        publisher.start()
        publisher.join(1.0)  # the stimulus: the lock stays held this long at least
        waiting = publisher.is_alive()
        during = rows(db_path)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
        publisher.join(30)
    assert not errors  # the lock was waited for, not surfaced
    assert waiting and during == 1  # it was still waiting while the lock was held
    assert rows(db_path) == 2


def test_a_lock_held_past_the_busy_timeout_is_a_connection_error(
        connect: Connect, db_path: Path) -> None:
    queue = make_queue()
    conn = connect(busy_timeout=0.2)
    publish(conn, queue, ["before"])
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # held until the purge has given up, however slow
    try:
        with pytest.raises(BrokerBusy, match="stayed locked") as raised:
            conn.default_channel.queue_purge("jobs")
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    assert isinstance(raised.value, conn.connection_errors)


def test_a_corrupted_file_is_named_with_what_to_do(url: str, db_path: Path) -> None:
    db_path.write_bytes(os.urandom(4096))
    with pytest.raises(BrokerDatabaseError) as raised, Connection(url) as conn:
        conn.connect()
    text = str(raised.value)
    assert str(db_path) in text and "move the file aside" in text
    assert "(SQLITE_NOTADB)" in text, "SQLite's own error name, for a report"


def test_an_unwritable_location_is_named_with_what_to_do() -> None:
    with pytest.raises(BrokerDatabaseError) as raised, \
            Connection("sqlite:////proc/taskq-test-broker.db") as conn:
        conn.connect()
    assert "/proc/taskq-test-broker.db" in str(raised.value)
    assert "writable" in str(raised.value)


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(BrokerDatabaseError, match="does not exist"), \
            Connection(f"sqlite:///{tmp_path}/nowhere/broker.db") as conn:
        conn.connect()


@pytest.mark.parametrize(("options", "named"), [
    ({"lease_timeout": 0}, "lease_timeout"),
    ({"lease_timeout": "soon"}, "lease_timeout"),
    ({"lease_timeout": 10, "renew_interval": 10}, "renew_interval"),
    ({"poll_interval": -1}, "poll_interval"),
])
def test_bad_options_are_refused_naming_the_option(
        url: str, options: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        Connection(url, transport_options=options).transport  # noqa: B018


def test_a_url_without_a_file_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="name the database file"):
        Connection("sqlite://").transport  # noqa: B018


# -- wake-ups ---------------------------------------------------------------------------------
def test_on_the_event_loop_a_publish_from_elsewhere_wakes_the_consumer(
        connect: Connect) -> None:
    queue = make_queue()
    # The transport's timers (fallback poll, lease upkeep) are minutes away: only a wake-up
    # can deliver within the wait below.
    poll = 600.0
    conn = connect(poll_interval=poll, lease_timeout=3 * poll, restore_interval=2 * poll)
    inbox = consume(conn, [queue])
    hub = Hub()
    conn.register_with_event_loop(hub)
    try:
        hub.run_once()  # the first fetch finds nothing: idle, waiting on the socket
        assert not any(c.maybe_ready for c in conn.transport.channels if c._consumers)
        published = time.monotonic()
        publish(connect(), queue, ["hello"])
        while not inbox.messages and time.monotonic() - published < poll / 10:
            hub.run_once()
        assert inbox.bodies == ["hello"]
        assert inbox.times[0] - published < poll / 10
    finally:
        hub.close()


def test_on_the_event_loop_batch_after_batch_is_fetched_without_waiting(
        connect: Connect) -> None:
    queue = make_queue()
    publish(connect(), queue, list(range(250)))
    # The transport's timers (fallback poll, lease upkeep) are minutes away: a wait for one
    # between batches would take longer than the whole wait below.
    poll = 600.0
    conn = connect(poll_interval=poll, lease_timeout=3 * poll, restore_interval=2 * poll,
                   fetch_batch=50)
    inbox = consume(conn, [queue], no_ack=True)  # no prefetch limit: 5 full batches
    hub = Hub()
    conn.register_with_event_loop(hub)
    try:
        started = time.monotonic()
        while len(inbox.messages) < 250 and time.monotonic() - started < poll / 10:
            hub.run_once()
        assert inbox.bodies == list(range(250))
        assert inbox.times[-1] - started < poll / 10  # not a poll timeout per batch
    finally:
        hub.close()


def test_drain_events_blocks_on_the_wake_socket_not_a_sleep(connect: Connect) -> None:
    queue = make_queue()
    poll = 600.0  # the fallback poll: only a wake-up can deliver within the wait below
    conn = connect(poll_interval=poll)
    inbox = consume(conn, [queue])
    with pytest.raises(TimeoutError):
        conn.drain_events(timeout=0.05)  # nothing there: now idle
    consuming = [c for c in conn.transport.channels if c._consumers]
    published: list[float] = []

    def publisher() -> None:
        # Wait until the consumer has found the queue empty, then publish once.
        deadline = time.monotonic() + 30
        while any(c.maybe_ready for c in consuming) and time.monotonic() < deadline:
            time.sleep(0.005)
        publish(connect(), queue, ["wake"])
        published.append(time.monotonic())

    thread = threading.Thread(target=publisher)
    thread.start()
    try:
        conn.drain_events(timeout=poll / 10)
    finally:
        thread.join()
    assert inbox.bodies == ["wake"]
    assert inbox.times[0] - published[0] < poll / 10


def test_stale_wake_sockets_of_dead_processes_are_removed(
        connect: Connect, url: str, db_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, url, "1"],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    queue = make_queue()
    publish(connect(), queue, ["one"])
    try:
        assert read_line(proc, timeout=20).strip() == "holding 1"
    finally:
        proc.kill()
        proc.wait()
    wake_dir = Path(f"{db_path}.wake")
    assert any(p.name.startswith(f"{proc.pid}-") for p in wake_dir.iterdir())
    publish(connect(), queue, ["two"])  # its wake-up finds nobody there
    assert not any(p.name.startswith(f"{proc.pid}-") for p in wake_dir.iterdir())


# -- fork -------------------------------------------------------------------------------------
def test_a_forked_child_opens_its_own_database_connection(connect: Connect) -> None:
    queue = make_queue()
    conn = connect()
    publish(conn, queue, ["from the parent"])
    parent_db = conn.transport.store.connection()
    pid = os.fork()
    if pid == 0:  # the child: publish through the inherited kombu connection, then vanish
        code = 1
        try:
            publish(conn, queue, ["from the child"])
            code = 0 if conn.transport.store.connection() is not parent_db else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    publish(conn, queue, ["parent again"])  # the parent's store still works
    # closed before the fork (no SQLite state of the file crosses it), opened again here
    assert conn.transport.store.connection() is not parent_db
    inbox = consume(conn, [queue])
    assert drain_until([conn], lambda: len(inbox.messages) == 3, timeout=5)
    assert inbox.bodies == ["from the parent", "from the child", "parent again"]


def test_confirming_acks_acks_held_leases_and_reports_expired_ones(
        connect: Connect, db_path: Path) -> None:
    """Two early acks a lost connection did not get through (the embedded broker's writes
    fail whole): the next connection acks the one still leased and reports the other, whose
    lease ran out meanwhile, as not acked (it is back in its queue)."""
    queue = make_queue()
    publish(connect(), queue, ["held", "expired"])
    lost = connect(lease_timeout=30)
    held, expired = queue(lost.default_channel).get(), queue(lost.default_channel).get()
    assert held is not None and expired is not None
    leases = [(m.delivery_tag, lease_of(m)) for m in (held, expired)]
    db = sqlite3.connect(db_path)
    with db:  # the second lease runs out, unrenewed
        db.execute("UPDATE taskq_messages SET deadline = 0 WHERE id = ?", (leases[1][1],))
    db.close()
    conn = connect(lease_timeout=30, restore_interval=0.05)
    assert conn.default_channel.connection.store.restore_expired() == 1
    assert conn.default_channel.confirm_acks(leases) == [True, False]
    assert rows(db_path, "lease IS NOT NULL") == 0 and rows(db_path) == 1
