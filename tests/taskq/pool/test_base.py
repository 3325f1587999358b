"""The pool interface's optional features: each pool declares what it can do, the others
answer with a neutral default or a clear ``PoolFeatureUnsupported``. No pool is started."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from taskq import TaskQ
from taskq.errors import ConfigurationError, PoolFeatureUnsupported
from taskq.pool import Job, Pool, pool_for
from taskq.protocol import TaskMessage

app = TaskQ("pooldefaults", broker="memory://")

# flag -> the methods it promises
FEATURES = {
    "supports_resize": ("grow", "shrink"),
    "supports_restart": ("restart",),
    "supports_autoscale": ("autoscale",),
    "supports_terminate_job": ("terminate_job",),
}


def make(kind: str, concurrency: int = 3) -> Pool:
    noop: Any = lambda *args: None  # noqa: E731
    return pool_for(kind)(app, concurrency=concurrency, on_started=noop, on_done=noop,
                          on_lost=noop, on_unstarted=noop)


def job() -> Job:
    return Job(msg=TaskMessage(task="t", id="j1", args=()))


@pytest.mark.parametrize("kind", ["prefork", "solo", "threads"])
def test_each_flag_matches_the_methods_the_pool_implements(kind):
    cls = pool_for(kind)
    for flag, methods in FEATURES.items():
        implemented = {getattr(cls, m) is not getattr(Pool, m) for m in methods}
        assert implemented == {getattr(cls, flag)}, (kind, flag)


def test_only_prefork_resizes_restarts_autoscales_and_terminates_jobs():
    assert all(getattr(pool_for("prefork"), flag) for flag in FEATURES)
    for kind in ("solo", "threads"):
        assert not any(getattr(pool_for(kind), flag) for flag in FEATURES)


@pytest.mark.parametrize("kind", ["solo", "threads"])
@pytest.mark.parametrize(("call", "args"), [
    ("grow", (1,)), ("shrink", (1,)), ("restart", ((), False)), ("autoscale", (4, 1)),
    ("terminate_job", None),
])
def test_an_unsupported_feature_says_which_pool_and_what_to_use(kind, call, args):
    pool = make(kind)
    with pytest.raises(PoolFeatureUnsupported) as info:
        getattr(pool, call)(*(args if args is not None else (job(), signal.SIGTERM)))
    assert isinstance(info.value, ConfigurationError)  # the remedy is a setting
    assert info.value.kind == kind
    assert str(info.value).startswith(f"the {kind} pool cannot ")
    assert "prefork" in str(info.value)


def test_solo_terminate_job_names_revoke_terminate():
    with pytest.raises(PoolFeatureUnsupported, match=r"solo pool cannot terminate a running "
                       r"task; use the prefork pool .*revoke\(terminate=True\)"):
        make("solo").terminate_job(job(), signal.SIGKILL)


@pytest.mark.parametrize("kind", ["solo", "threads"])
def test_neutral_defaults_of_a_pool_without_the_features(kind):
    pool = make(kind, concurrency=3)
    assert pool.size() == 3
    assert pool.max_tasks is None and pool.keepalive is None
    assert pool.autoscale_tick(10) is None   # nothing to adjust, nothing raised
    assert pool.withdraw([job()]) is None    # nothing held back to take


def test_only_solo_blocks_the_loop():
    assert pool_for("solo").blocks_loop
    assert not pool_for("threads").blocks_loop and not pool_for("prefork").blocks_loop


def test_prefork_size_and_max_tasks_come_from_its_settings():
    pool = make("prefork", concurrency=2)
    assert pool.size() == 2 and pool.max_tasks == app.conf.worker_max_tasks_per_child
