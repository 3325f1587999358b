"""taskq.compat against the installed kombu: each internal is there (or its fallback works).

ci/test-oldest-kombu.sh runs this file on the oldest supported kombu too.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from kombu import Connection
from kombu.asynchronous import Hub
from kombu.exceptions import MessageStateError
from kombu.transport import virtual

from taskq import compat
from taskq.errors import ConfigurationError


def test_a_kombu_without_an_overridden_hook_is_refused_naming_it() -> None:
    class OldChannel:
        def _get(self) -> None: ...

    compat.require_hooks(OldChannel, "_get")
    with pytest.raises(ConfigurationError, match=r"OldChannel\._brpop_start.*kombu>=5\.3"):
        compat.require_hooks(OldChannel, "_get", "_brpop_start")


def test_timer_entries_lists_what_is_scheduled_on_the_hub() -> None:
    hub = Hub()
    try:
        entry = hub.call_repeatedly(10.0, lambda: None)
        later = hub.call_later(20.0, lambda: None)
        assert {id(e) for e in compat.timer_entries(hub)} >= {id(entry), id(later)}
    finally:
        hub.close()


def test_propagate_errors_round_trips_on_a_hub() -> None:
    hub = Hub()
    try:
        assert compat.propagate_errors(hub) == ()
        compat.set_propagate_errors(hub, [OSError, KeyError])
        assert compat.propagate_errors(hub) == (OSError, KeyError)
    finally:
        hub.close()


def test_a_message_marked_acked_is_acknowledged_and_refuses_a_second_ack() -> None:
    conn = Connection("memory://")
    try:
        channel = conn.channel()
        message = channel.Message({"body": "x", "properties": {"delivery_tag": "t1"}},
                                  channel=channel)
        compat.mark_acked(message)
        assert message.acknowledged
        with pytest.raises(MessageStateError):
            message.ack()
    finally:
        conn.release()


def test_the_virtual_channel_internals_are_there() -> None:
    conn = Connection("memory://")
    try:
        channel: Any = conn.channel()
        assert compat.channel_qos(channel) is None  # not created by asking
        qos = channel.qos
        assert compat.channel_qos(channel) is qos
        compat.hold_credit(qos, "t1", object())
        assert compat.is_held(qos, "t1") and compat.qos_held(qos) == 1
        assert compat.consumed_queues(channel) == [] and not compat.has_consumers(channel)
        assert compat.consumer_queue(channel, "nobody") is None
        assert compat.queue_callbacks(channel.connection) == {}
        assert compat.existing_transport(conn) is channel.connection
        assert compat.existing_transport(Connection("memory://")) is None
        assert isinstance(channel, virtual.Channel)
    finally:
        conn.release()


def test_on_an_older_kombu_the_redis_extras_fall_back_to_its_behaviour() -> None:
    # kombu < 5.6 had no brpop_timeout (a blocking pop waited 1 s), < 5.7 no re-auth, no
    # queue expiry and no handle on its restore timer: nothing to do for those.
    old_channel: Any = SimpleNamespace()
    assert compat.brpop_timeout(old_channel) == 1.0
    compat.flush_brpop_reauth(old_channel)
    compat.refresh_queue_expiry(old_channel, ["q"])
    compat.cancel_unacked_restore(SimpleNamespace())
    assert compat.brpop_timeout(SimpleNamespace(brpop_timeout=5)) == 5.0


def test_a_missing_internal_is_named_with_what_to_install() -> None:
    with pytest.raises(ConfigurationError, match=r"_delivered.*pip install 'kombu>=5\.3,<6'"):
        compat.qos_held(SimpleNamespace(_dirty=set()))
