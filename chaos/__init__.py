"""chaos: fault injectors, schedules and the fault journal (``import chaos``).

Usable alone, from pytest, and by ``taskq-stress``. chaos never imports taskq: it works on
processes, sockets and brokers from the outside.
"""

from __future__ import annotations

from chaos.brokers import Broker, BrokerFault, DockerRedis, LocalRabbitMQ, LocalRedis
from chaos.clock import Clock, FakeClock, SystemClock
from chaos.errors import (
    BrokerError,
    BrokerNotReady,
    ChaosError,
    DockerUnavailable,
    JournalError,
    ProxyError,
    ScheduleError,
    TargetError,
    WaitTimeout,
)
from chaos.faults import Bandwidth, Blackhole, Latency, LimitData, Slicer, SlowClose
from chaos.injector import Injector, Outcome
from chaos.journal import FaultRecord, Journal, read_journal
from chaos.process import Freeze, GrowMemory, Kill, KillMain
from chaos.proxy import FaultProxy
from chaos.proxy_api import ProxyAPI, ProxyClient
from chaos.proxy_injectors import CutConnections, TimedFault
from chaos.runner import Runner
from chaos.schedule import Schedule, at, burst, every, parse_schedule, poisson, rate
from chaos.targets import ChildrenOf, Matching, Pids, ProcessRef
from chaos.waiting import wait_until

__all__ = [
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
]
