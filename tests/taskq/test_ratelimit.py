"""Rate limits: the rate strings, the token bucket on an injected clock, the task option and
the settings."""

from __future__ import annotations

import pytest

from taskq import TaskQ
from taskq.errors import ConfigurationError
from taskq.ratelimit import RateLimits, TokenBucket, parse_rate


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("text", "per_second"), [
    ("10/s", 10.0), ("10", 10.0), (10, 10.0), ("120/m", 2.0), ("36/h", 0.01), (" 5 / s ", 5.0),
    (None, 0.0), ("", 0.0), (0, 0.0), ("0.5/s", 0.5),
])
def test_rates_parse_as_celery_writes_them(text: object, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("bad", ["10/d", "ten/s", "-1/s", [1]])
def test_a_bad_rate_says_what_to_write(bad: object) -> None:
    with pytest.raises(ValueError, match="rate limit"):
        parse_rate(bad)


def test_tokens_are_reserved_in_arrival_order_and_refill_at_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(2.0, clock)  # one every 0.5 s, at most one saved up
    assert [bucket.reserve() for _ in range(4)] == pytest.approx([0.0, 0.5, 1.0, 1.5])
    clock.now += 10.0  # idle: the bucket refills to its capacity, not beyond
    assert bucket.reserve() == 0.0
    assert bucket.reserve() == pytest.approx(0.5)


def test_the_worker_buckets_follow_each_tasks_limit_and_its_changes() -> None:
    clock = FakeClock()
    app = TaskQ("r", environ={})

    @app.task(rate_limit="60/m")
    def limited() -> None: ...

    @app.task
    def free() -> None: ...

    limits = RateLimits(app.conf, clock)
    assert [limits.reserve(limited) for _ in range(3)] == pytest.approx([0.0, 1.0, 2.0])
    assert [limits.reserve(free) for _ in range(3)] == [0.0, 0.0, 0.0]
    limited.rate_limit = "10/s"  # the rate_limit remote command: a fresh bucket
    assert [limits.reserve(limited) for _ in range(2)] == pytest.approx([0.0, 0.1])
    limited.rate_limit = None
    assert limits.reserve(limited) == 0.0
    app.conf.update(task_default_rate_limit="1/s")
    assert [limits.reserve(free) for _ in range(2)] == pytest.approx([0.0, 1.0])
    app.conf.update(worker_disable_rate_limits=True)
    assert limits.reserve(free) == 0.0


def test_a_bad_rate_limit_fails_where_it_is_written() -> None:
    app = TaskQ("r", environ={})
    with pytest.raises(ValueError, match="'10/x'"):
        app.task(rate_limit="10/x")(lambda: None)
    with pytest.raises(ConfigurationError, match="task_default_rate_limit"):
        TaskQ("r", environ={}, task_default_rate_limit="often")
