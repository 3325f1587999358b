"""Brokers chaos can start, stop, restart, crash, pause and resume.

- :class:`LocalRedis` -- a private ``redis-server`` (durable: AOF, ``appendfsync always``);
- :class:`LocalRabbitMQ` -- a private RabbitMQ node with its own name, ports and data dir;
- :class:`DockerRedis` -- Redis in a container, through the docker SDK.

``chaos.brokers.docker`` imports the docker SDK only when a container broker is made.
"""

from __future__ import annotations

from chaos.brokers.base import Broker, BrokerFault, LocalProcessBroker
from chaos.brokers.docker import DockerRedis, docker_unavailable
from chaos.brokers.local_rabbitmq import LocalRabbitMQ
from chaos.brokers.local_redis import LocalRedis

__all__ = [
    "Broker",
    "BrokerFault",
    "DockerRedis",
    "LocalProcessBroker",
    "LocalRabbitMQ",
    "LocalRedis",
    "docker_unavailable",
]
