"""The fault proxy between real kombu/redis-py clients and the shared Redis and RabbitMQ."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import kombu
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from chaos.faults import Blackhole, Latency
from chaos.proxy import FaultProxy

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def redis_proxy(redis_url: str) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1:6379") as proxy:
        yield proxy


@pytest.fixture
def amqp_proxy(amqp_url: str) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1:5672") as proxy:
        yield proxy


def _median_ms(call: Callable[[], object], n: int = 5) -> float:
    samples = []
    for _ in range(n):
        start = time.monotonic()
        call()
        samples.append(time.monotonic() - start)
    return statistics.median(samples) * 1000


def _in_abandoned_thread(call: Callable[[], object]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``call`` in a daemon thread the test may leave behind if it hangs."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = call()
        except BaseException as exc:  # reported through result
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


# -- Redis ---------------------------------------------------------------------------------


@pytest.mark.redis
def test_redis_consumer_sees_the_cut_and_reconnects_through_the_proxy(
    redis_proxy: FaultProxy, redis_url: str, unique: str
) -> None:
    options = {"global_keyprefix": f"{unique}:"}
    got: list[Any] = []
    with kombu.Connection(redis_proxy.url("redis", "/0"), transport_options=options) as conn:
        consumer = kombu.Consumer(
            conn, [kombu.Queue(unique)], callbacks=[lambda body, msg: (got.append(body), msg.ack())]
        )
        consumer.consume()
        before = {c.index for c in redis_proxy.connections()}
        assert before, "the consumer's connections go through the proxy"
        cut = threading.Timer(0.3, redis_proxy.cut)
        cut.start()
        with pytest.raises(conn.recoverable_connection_errors):
            conn.drain_events(timeout=10)
        cut.join()
        # The client reconnects -- through the proxy -- and consumes again.
        conn.ensure_connection(max_retries=5)
        consumer.revive(conn.channel())
        consumer.consume()
        with kombu.Connection(redis_url, transport_options=options) as direct:
            direct.Producer().publish({"n": 1}, routing_key=unique)
        conn.drain_events(timeout=10)
        assert got == [{"n": 1}]
        after = {c.index for c in redis_proxy.connections()}
        assert after and not after & before


@pytest.mark.redis
def test_redis_blackhole_hangs_a_client_without_timeouts_and_times_out_one_with(
    redis_proxy: FaultProxy,
) -> None:
    patient = redis.Redis(port=redis_proxy.port, socket_timeout=None)
    # redis-py retries with backoff by default (~8 s here); one try shows the timeout itself.
    careful = redis.Redis(
        port=redis_proxy.port,
        socket_timeout=0.3,
        socket_connect_timeout=0.3,
        retry=Retry(NoBackoff(), 0),
    )
    assert patient.ping() and careful.ping()
    with redis_proxy.fault(Blackhole()):
        thread, result = _in_abandoned_thread(patient.ping)
        thread.join(1.5)
        assert thread.is_alive() and not result, "no timeout, no answer: it hangs"
        start = time.monotonic()
        with pytest.raises((redis.TimeoutError, redis.ConnectionError)):
            careful.ping()
        assert time.monotonic() - start < 2
    # Switched off: the careful client recovers on its next call (it reconnects).
    assert careful.ping()
    careful.close()


@pytest.mark.redis
def test_redis_latency_adds_the_configured_delay(redis_proxy: FaultProxy) -> None:
    client = redis.Redis(port=redis_proxy.port, socket_timeout=5)
    base = _median_ms(client.ping)
    with redis_proxy.fault(Latency(100)):
        delayed = _median_ms(client.ping)
    with redis_proxy.fault(Latency(50), direction="both"):
        both = _median_ms(client.ping)
    after = _median_ms(client.ping)
    client.close()
    print(f"redis PING rtt: base {base:.1f} ms, +100 ms down {delayed:.1f}, +50 both {both:.1f}")
    assert delayed >= 100 and delayed - base < 160
    assert both >= 100 and both - base < 160
    assert after < base + 40


# -- RabbitMQ ------------------------------------------------------------------------------


def _queue(name: str, channel: Any) -> kombu.Queue:
    # x-expires drops the queue a minute after its last use: nothing left on the shared broker
    return kombu.Queue(name, durable=False, expires=60, channel=channel)


@pytest.mark.amqp
def test_amqp_client_sees_the_cut_and_reconnects_through_the_proxy(
    amqp_proxy: FaultProxy, unique: str
) -> None:
    with kombu.Connection(amqp_proxy.url("amqp", "//", "guest:guest"), heartbeat=0) as conn:
        _queue(unique, conn.channel()).declare()
        [first] = amqp_proxy.connections()
        assert amqp_proxy.cut() == 1
        with pytest.raises(conn.recoverable_connection_errors):
            conn.drain_events(timeout=5)
        conn.ensure_connection(max_retries=5)
        ok = _queue(unique, conn.channel()).queue_declare(passive=True)
        assert ok.queue == unique
        [second] = amqp_proxy.connections()
        assert second.index > first.index


@pytest.mark.amqp
def test_amqp_blackhole_hangs_without_heartbeats_and_heartbeats_recover(
    amqp_proxy: FaultProxy, unique: str
) -> None:
    url = amqp_proxy.url("amqp", "//", "guest:guest")
    plain = kombu.Connection(url, heartbeat=0)
    beating = kombu.Connection(url, heartbeat=1)
    _queue(unique, plain.channel()).declare()
    beating.connect()
    toxic = amqp_proxy.add(Blackhole())
    # Without heartbeats or timeouts, a call never returns.
    thread, result = _in_abandoned_thread(
        lambda: _queue(unique, plain.channel()).queue_declare(passive=True)
    )
    thread.join(1.5)
    assert thread.is_alive() and not result
    # With heartbeats, the client finds out in about two intervals.
    start = time.monotonic()
    with pytest.raises(beating.recoverable_connection_errors):
        while time.monotonic() - start < 15:
            beating.heartbeat_check()
            try:
                beating.drain_events(timeout=0.2)
            except TimeoutError:
                pass
    assert time.monotonic() - start < 5
    amqp_proxy.remove(toxic)
    beating.ensure_connection(max_retries=5)
    assert _queue(unique, beating.channel()).queue_declare(passive=True).queue == unique
    beating.release()


@pytest.mark.amqp
def test_amqp_latency_adds_the_configured_delay(amqp_proxy: FaultProxy, unique: str) -> None:
    with kombu.Connection(amqp_proxy.url("amqp", "//", "guest:guest"), heartbeat=0) as conn:
        channel = conn.channel()
        _queue(unique, channel).declare()

        def declare() -> object:
            return _queue(unique, channel).queue_declare(passive=True)

        base = _median_ms(declare)
        with amqp_proxy.fault(Latency(100)):
            delayed = _median_ms(declare)
        after = _median_ms(declare)
    print(f"amqp queue.declare rtt: base {base:.1f} ms, +100 ms down {delayed:.1f}")
    assert delayed >= 100 and delayed - base < 160
    assert after < base + 40
