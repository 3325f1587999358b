"""Events in Celery's format: a dispatcher, a receiver and an in-memory cluster state.

Events are JSON dicts published to the topic exchange ``celeryev`` with routing key
``type.replace('-', '.')``; each carries ``hostname``, ``pid``, ``clock`` (Lamport),
``timestamp``, ``utcoffset`` and its own fields. Celery's ``celery events`` and Flower read
them.
"""

from __future__ import annotations

from taskq.events.dispatcher import EventDispatcher, event_exchange
from taskq.events.receiver import EventReceiver
from taskq.events.state import State

__all__ = ["EventDispatcher", "EventReceiver", "State", "event_exchange"]
