"""Generative fault search: the configuration space, the case model and its seeded generator.

A :class:`Case` is one worker configuration (every axis of :data:`SPACE`), a task mix and a
fault schedule (the "nemesis": a sequence of :class:`FaultEvent`, which may overlap), plus the
seed of its workload and faults. It runs as an ordinary cell (:meth:`Case.suite` and
:meth:`Case.cell` feed :class:`stress.cell.CellRun`), so it is judged by the same runner,
ledger and oracles as ``taskq-stress run``.

:class:`Generator` draws cases from a seed (same seed, same cases). It leans toward the
corners that broke before, so a short budget visits them often:

- with probability ``corner_weight`` (default 0.6) a draw starts from a *corner*: a few axis
  values and fault kinds fixed by one of :data:`CORNERS` (the defects of issue 13 and the
  SCENARIOS list) or by a case saved in the corpus (``stress-corpus/``), the rest drawn as
  usual; a corner is picked by its ``weight`` (2 for each issue 13 defect a search must
  reach, 1 for the others and for corpus cases). A corner also says what it takes to reach
  its defect: its faults in order and apart (a cut, then a black hole on an idle worker),
  their timing against the publishes, how long a black hole lasts, a backlog (``load``);
- otherwise every axis is drawn on its own with the weights of :data:`SPACE` (defaults and
  the values that broke before weigh more), and the faults from what the configuration
  allows (no child faults without prefork children, no proxy faults on the embedded broker,
  broker restarts only on a private Redis); one black hole in five lasts 9-14 s, longer
  than a worker may take to notice it.

:func:`smaller` lists the candidate reductions the shrinker (:mod:`stress.shrink`) tries.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from stress.spaces import LEASE_TIMEOUT
from stress.suites import Cell, Suite

__all__ = ["CORNERS", "FAULT_KINDS", "SPACE", "TASK_KINDS", "Axis", "Case", "Corner",
           "FaultEvent", "Generator", "reduction", "smaller"]


@dataclass(frozen=True)
class Axis:
    values: tuple[Any, ...]
    default: Any
    weights: tuple[float, ...] | None = None  # None: every value alike


# The configuration space. Weights favour defaults (what users run) and the values of the
# defects found before (-O fast, small max-tasks-per-child, leases short enough to be outlived).
SPACE: dict[str, Axis] = {
    "transport": Axis(("redis", "amqp", "sqlite"), "redis"),
    "pool_type": Axis(("prefork", "threads", "solo"), "prefork", (3, 1, 1)),
    "concurrency": Axis((1, 2, 3, 4), 2, (2, 3, 1, 1)),
    "strategy": Axis(("fair", "fast"), "fair"),
    "max_tasks_per_child": Axis((0, 1, 2, 3, 4, 5), 0, (4, 1, 1, 1, 1, 1)),
    "max_memory_per_child": Axis((0, 65536), 0, (4, 1)),  # KiB; 0: none
    "acks": Axis(("early", "late", "late-reject"), "early", (2, 2, 1)),
    "prefetch": Axis((4, 1, 2, 8), 4, (2, 1, 1, 1)),  # the worker's default is 4
    "lease": Axis((LEASE_TIMEOUT, 2.0, 3.0, 10.0), LEASE_TIMEOUT, (2, 1, 1, 1)),
    "heartbeat": Axis((10.0, 2.0), 10.0),  # AMQP only
    "time_limit": Axis((0, 30), 0, (3, 1)),  # the worker's hard limit; 0: none
    # workers on one broker: leases and redelivery show their bugs when another can take it
    "fleet": Axis((1, 2, 3), 1, (3, 2, 1)),
    "fds": Axis((0, 1100), 0, (4, 1)),  # fds the worker's main process holds open at start
}
SHRINK_ORDER = ("fleet", "pool_type", "transport", "acks", "max_tasks_per_child", "strategy",
                "concurrency", "max_memory_per_child", "prefetch", "lease", "heartbeat",
                "time_limit", "fds")

TASK_KINDS = ("noop", "sleep", "cpu", "big", "grow", "exit", "crash", "soft_limit", "hard_limit",
              "eta")
TASK_WEIGHTS = {"noop": 4, "sleep": 5, "cpu": 2, "big": 1, "grow": 1, "exit": 1, "crash": 1,
                "soft_limit": 1, "hard_limit": 1, "eta": 2}
PREFORK_ONLY_TASKS = {"grow", "exit", "crash", "soft_limit", "hard_limit"}

FAULT_KINDS = ("kill-children", "freeze-children", "kill-main", "terminate-worker",
               "cut-connections", "reset-connections", "blackhole", "latency",
               "restart-broker", "kill-running", "hup-worker", "cold-shutdown", "control")
FAULT_WEIGHTS = {"kill-children": 3, "freeze-children": 1, "kill-main": 2,
                 "terminate-worker": 1, "cut-connections": 4, "reset-connections": 1,
                 "blackhole": 2, "latency": 1, "restart-broker": 1, "kill-running": 3,
                 "hup-worker": 1, "cold-shutdown": 1, "control": 3}
# on for ``duration`` seconds; ``control``: a monitor asking every 0.5 s meanwhile
TIMED_FAULTS = {"freeze-children", "blackhole", "latency", "control"}
SLEEP_PROFILES = ("short", "medium", "around-lease")
DURATIONS = (4.0, 6.0, 8.0, 12.0)
RATES = (2.0, 5.0, 10.0, 20.0)


@dataclass(frozen=True)
class FaultEvent:
    kind: str
    at: float  # seconds after publishing starts
    duration: float = 0.0  # timed faults: how long the fault stays on
    ms: float = 0.0  # latency

    def to_suite(self) -> dict[str, Any]:
        if self.kind == "control":
            return {"kind": self.kind,
                    "schedule": f"every 0.5s after {self.at:g}s until {self.at + self.duration:g}s"}
        fault: dict[str, Any] = {"kind": self.kind, "schedule": f"at {self.at:g}"}
        if self.kind in TIMED_FAULTS:
            fault["duration"] = self.duration
        if self.kind == "latency":
            fault["ms"] = self.ms
        return fault

    def show(self) -> str:
        extra = f" for {self.duration:g}s" if self.kind in TIMED_FAULTS else ""
        extra += f" {self.ms:g}ms" if self.kind == "latency" else ""
        return f"{self.kind}@{self.at:g}s{extra}"


@dataclass(frozen=True)
class Case:
    """One configuration, task mix and fault schedule; runs as a cell."""

    config: Mapping[str, Any]
    workload: Mapping[str, float]
    sleep: tuple[float, float]
    faults: tuple[FaultEvent, ...]
    duration: float
    rate: float
    seed: int
    origin: str = "random"  # the corner it was drawn from, or "random"
    notes: Mapping[str, Any] = field(default_factory=dict)

    def key(self) -> str:
        """The case's content (not its origin or notes), for de-duplication and its name."""
        return json.dumps({"config": dict(sorted(self.config.items())),
                           "workload": dict(sorted(self.workload.items())),
                           "sleep": list(self.sleep), "faults": [f.__dict__ for f in self.faults],
                           "duration": self.duration, "rate": self.rate, "seed": self.seed},
                          sort_keys=True)

    @property
    def name(self) -> str:
        return "c" + hashlib.sha1(self.key().encode()).hexdigest()[:8]

    @property
    def tasks(self) -> int:
        return max(1, round(self.duration * self.rate))

    def size(self) -> tuple[int, int, int, int, float, float]:
        """What the shrinker makes smaller: faults, axes off default and task kinds, tasks,
        steps away from the defaults, seconds of timed faults, seconds of the run."""
        off = distance = 0
        for k, axis in SPACE.items():
            value = self.config.get(k, axis.default)
            off += value != axis.default
            ordered = sorted(axis.values) if isinstance(value, int | float) else axis.values
            distance += abs(ordered.index(value) - ordered.index(axis.default))
        return (len(self.faults), off + len(self.workload), self.tasks, distance,
                sum(f.duration for f in self.faults), self.duration)

    def describe(self) -> str:
        off = {k: v for k, v in self.config.items() if v != SPACE[k].default}
        mix = "+".join(f"{k}" for k in sorted(self.workload))
        faults = ", ".join(f.show() for f in self.faults) or "no faults"
        return (f"{self.name} [{self.origin}] {self.config['transport']} "
                f"{' '.join(f'{k}={v}' for k, v in off.items() if k != 'transport')} | "
                f"{mix} sleep {self.sleep[0]:g}-{self.sleep[1]:g}s | {self.tasks} tasks in "
                f"{self.duration:g}s | {faults}")

    # -- as a cell ------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return 1 if self.config["pool_type"] == "solo" else int(self.config["concurrency"])

    def cell(self) -> Cell:
        c = self.config
        params = {"transport": c["transport"], "pool": c["strategy"],
                  "max_tasks_per_child": c["max_tasks_per_child"], "acks": c["acks"],
                  "concurrency": c["concurrency"], "case": self.name,
                  "pool_type": c["pool_type"]}
        if self.fleet > 1:
            params["fleet"] = self.fleet
        return Cell(params)

    @property
    def fleet(self) -> int:
        return int(self.config.get("fleet", 1))

    def worker_args(self) -> list[str]:
        c = self.config
        args = ["-P", str(c["pool_type"])]
        if c["prefetch"] != SPACE["prefetch"].default:
            args += ["--prefetch-multiplier", str(c["prefetch"])]
        if c["max_memory_per_child"]:
            args += ["--max-memory-per-child", str(c["max_memory_per_child"])]
        if c["time_limit"]:
            args += ["--time-limit", str(c["time_limit"])]
        return args

    def worker_env(self) -> dict[str, str]:
        env = {}
        if self.config["transport"] == "amqp":
            env["TASKQ_BROKER_HEARTBEAT"] = str(self.config["heartbeat"])
        if self.config.get("fds"):
            env["TASKQ_STRESS_FDS"] = str(self.config["fds"])  # read by stress.harness
        return env

    def transport_options(self) -> dict[str, Any]:
        if self.config["transport"] in ("redis", "sqlite"):
            lease = float(self.config["lease"])
            return {"lease_timeout": lease, "restore_interval": min(0.5, lease / 4)}
        return {}

    def longest_task(self) -> float:
        longest = self.sleep[1] if "sleep" in self.workload else 0.1
        if "eta" in self.workload:
            longest = max(longest, 4.0)  # countdowns up to 4 s
        if "hard_limit" in self.workload or "soft_limit" in self.workload:
            longest = max(longest, 2.0)
        return longest

    def suite(self) -> Suite:
        lease = float(self.config["lease"])
        stall = max(20.0, 2 * self.longest_task() + lease + 10.0)
        oracles: dict[str, Any] = {
            "deadlock_after": stall, "min_tasks": 1, "min_kills_of_running": 0,
            "vacuity": "report",  # a case whose faults missed is weak, not failed
            "pool_capacity_after": max(10.0, self.longest_task() + lease + 5.0),
            "capacity": self.capacity, "settle_fds": 8,
            "early_stop": True,  # stop as soon as a failure is certain (cases cost seconds)
            "judge_warm_up": True,  # a worker that cannot run a first task fails the case
            "warm_up_within": 30.0,  # (it runs one in 1-3 s)
            "lease_held": self.fleet > 1,
            # recovery (stress.recovery): a black hole noticed in 8 s (a RabbitMQ worker by
            # its missed heartbeats: three of them); after a cut, no task waits over 3 s on
            # an idle fleet before the lease would have handed it back anyway
            "blackhole_noticed_within": max(8.0, 3 * float(self.config["heartbeat"]))
            if self.config["transport"] == "amqp" else 8.0,
            "release_within": 3.0, "lease": lease,
            # a drained run watches on for a lease past its last main-process fault, so a
            # job the killed worker never acked shows its re-run (issue 13 #7)
            "watch_redelivery": lease + 3.0,
        }
        if self.config["pool_type"] != "solo":  # solo runs tasks on the loop: it lags by design
            oracles["max_loop_lag"] = 5.0
        return Suite(
            name="explore", description=self.describe(), path=Path(f"<explore {self.name}>"),
            duration=self.duration, rate=self.rate, max_time=self.duration + stall + 90.0,
            workload=dict(self.workload),
            workload_params={"sleep": list(self.sleep), "big_bytes": 262144, "grow_mib": 24},
            faults=[f.to_suite() for f in self.faults], oracles=oracles,
            worker_args=self.worker_args(), worker_env=self.worker_env())


# -- drawing cases -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Corner:
    """A region that broke before: axis values (each a tuple to choose from), fault kinds that
    must be in the schedule (a kind twice: two of them), and a sleep profile.

    A corner says what it takes to reach its defect, not only where it is:

    - ``ordered``: the schedule is exactly these faults in this order, the first at
      ``first`` (a share of the run) and the rest 2-3 s apart, each midway between two
      publishes (a fault that lands with a task in flight is noticed through that task, not
      through the worker's timers);
    - ``hole``: how long its black holes stay on (s); ``load``: work offered per unit of
      pool capacity (above 1 the pool keeps a backlog, so jobs sit reserved and queued in
      children); ``rates``: publishing rates to pick from instead; ``workload``: a fixed task
      mix; ``weight``: its share of the corner draws.
    """

    name: str
    config: Mapping[str, tuple[Any, ...]]
    faults: tuple[str, ...] = ()
    sleep: str | None = None
    weight: float = 1.0
    ordered: bool = False
    first: tuple[float, float] = (0.15, 0.3)
    hole: tuple[float, float] | None = None
    load: float | None = None
    rates: tuple[float, ...] = ()
    workload: Mapping[str, float] | None = None


# How explore weighs the search (issue 14 asks to say it): ``corner_weight`` (0.6 by default)
# of the draws start from a corner, the rest are drawn freely from SPACE's weights. Among the
# corners, each defect of issue 13 that a 30-minute search has to reach weighs 2 (a draw in
# eight), those found easily or without a listed defect behind them weigh 1, and every case
# of the corpus (--corpus-dir) joins with weight 1. Each corner's own settings make a draw
# likely to hit its defect on a worker that has it (measured against 2693be4: docs/stress.md);
# those four hold no fd pressure (a worker whose children die under it runs nothing, which
# hides every other defect; free draws still hold it one time in five).
CORNERS: tuple[Corner, ...] = (
    # issue 13 #1: a job taken back after a lost connection still counts toward the child's
    # max-tasks-per-child, the child is never given work again. Needs jobs queued in the
    # child when the cut lands (-O fast, a backlog, max-tasks >= 2) and one child (two:
    # pool-capacity sees half the pool idle); each cut lands on a queued job about half the
    # time, so three cuts.
    Corner("recycle-cut", {"strategy": ("fast",), "max_tasks_per_child": (2, 3, 4, 5),
                           "pool_type": ("prefork",), "transport": ("redis", "amqp"),
                           "concurrency": (1, 1, 2), "fleet": (1,), "fds": (0,)},
           ("cut-connections",) * 3, "medium", weight=2, ordered=True, load=1.6),
    # issue 13 #2: a pool that blocks the loop (solo) lets a task outlive its lease: re-runs
    Corner("blocking-lease", {"pool_type": ("solo", "threads"), "lease": (2.0, 3.0),
                              "transport": ("sqlite", "redis")}, (), "around-lease"),
    # issue 13 #7: the early ack went once the child reported the start, so a job started
    # in the ms before the kill (its ack not flushed yet) or after it (the children learn of
    # the death some ms later: the kernel frees the parent's memory first) was never acked
    # and runs again on the next worker, after the lease. Children with jobs queued behind
    # short tasks (-O fast, a backlog) start jobs back to back; three kills; a short lease
    # (the watch waits a lease past the last kill for the re-run).
    Corner("kill-main-early", {"acks": ("early",), "pool_type": ("prefork",),
                               "strategy": ("fast",), "concurrency": (3, 4),
                               "transport": ("redis", "redis", "amqp"),
                               "lease": (2.0, 3.0, LEASE_TIMEOUT), "fleet": (1,), "fds": (0,)},
           ("kill-main",) * 3, "short", weight=2, ordered=True, load=1.5,
           workload={"sleep": 2.0, "noop": 1.0}),
    # issue 13 #3: after one reconnect, a black hole goes unnoticed (kombu swallows the
    # timers' errors): a cut, then a long hole while the worker is idle (a busy worker
    # notices through its tasks' acks); blackhole-noticed judges it. RabbitMQ's missed
    # heartbeats close the socket anyway, so Redis.
    Corner("reconnect-blackhole", {"transport": ("redis",), "pool_type": ("prefork", "threads"),
                                   "fleet": (1,), "fds": (0,)},
           ("cut-connections", "blackhole"), weight=2, ordered=True, hole=(10.0, 14.0),
           rates=(1.0, 2.0), workload={"noop": 1.0}),
    # issue 13 #5: a reconnect leaves the reserved messages leased to the dead connection:
    # a backlog (reserved messages) when the cut lands late in the run, a lease long enough
    # that the fleet idles while they are invisible (released-after-cut judges it), and
    # sometimes another worker that could have taken them.
    Corner("lease-cut", {"lease": (10.0,), "transport": ("redis",), "fleet": (1, 2),
                         "pool_type": ("prefork", "threads"), "fds": (0,)},
           ("cut-connections",), "short", weight=2, ordered=True, first=(0.55, 0.8),
           load=1.3),
    # SCENARIOS #1-3: recycling under kills and memory limits
    Corner("recycle-kill", {"max_tasks_per_child": (1, 2), "pool_type": ("prefork",),
                            "max_memory_per_child": (65536,)}, ("kill-children",), "short"),
)


def _pick(rng: random.Random, axis: Axis) -> Any:
    return rng.choices(axis.values, axis.weights or [1.0] * len(axis.values))[0]


class Generator:
    """Draws cases from ``seed``; ``restrict`` fixes axes (``--broker`` fixes the transport; a
    non-taskq worker gets only the axes its command line can carry)."""

    def __init__(self, seed: int, *, corner_weight: float = 0.6,
                 corners: Sequence[Corner] = CORNERS,
                 restrict: Mapping[str, Sequence[Any]] | None = None) -> None:
        self.rng = random.Random(seed)
        self.corner_weight = corner_weight
        self.restrict = {k: tuple(v) for k, v in (restrict or {}).items()}
        self.corners = [c for c in corners if self._fits(c)]
        self.drawn = 0

    def _fits(self, corner: Corner) -> bool:
        return all(set(values) & set(self.restrict.get(k, values))
                   for k, values in corner.config.items())

    def _axis(self, name: str, fixed: Mapping[str, tuple[Any, ...]]) -> Any:
        axis = SPACE[name]
        allowed = self.restrict.get(name)
        choices = fixed.get(name)
        if choices is not None:
            choices = tuple(v for v in choices if allowed is None or v in allowed) or choices
            return self.rng.choice(choices)
        if allowed is not None:
            weights = [w for v, w in zip(axis.values, axis.weights or [1.0] * len(axis.values),
                                         strict=True) if v in allowed] or None
            values = tuple(v for v in axis.values if v in allowed) or tuple(allowed)
            return self.rng.choices(values, weights if weights and len(weights) == len(values)
                                    else None)[0]
        return _pick(self.rng, axis)

    def draw(self) -> Case:
        self.drawn += 1
        corner: Corner | None = None
        if self.corners and self.rng.random() < self.corner_weight:
            corner = self.rng.choices(self.corners, [c.weight for c in self.corners])[0]
        fixed = corner.config if corner else {}
        config = {name: self._axis(name, fixed) for name in SPACE}
        duration = self.rng.choice(self._durations(corner))
        sleep = self._sleep(corner.sleep if corner and corner.sleep else
                            self.rng.choice(SLEEP_PROFILES), float(config["lease"]))
        workload = (dict(corner.workload) if corner and corner.workload
                    else self._workload(config, corner))
        rate = self._rate(config, workload, sleep, duration, corner)
        faults = self._faults(config, duration, corner, rate)
        return Case(config, workload, sleep, tuple(faults), duration, rate,
                    seed=self.rng.randrange(2**31), origin=corner.name if corner else "random")

    @staticmethod
    def _durations(corner: Corner | None) -> tuple[float, ...]:
        """Runs long enough for an ordered corner's faults, 2 s apart, before 0.9 of the run."""
        if corner is None or not corner.ordered or len(corner.faults) < 2:
            return DURATIONS
        need = 2.0 * (len(corner.faults) - 1) / (0.9 - corner.first[1])
        return tuple(d for d in DURATIONS if d >= need) or DURATIONS[-1:]

    def _sleep(self, profile: str, lease: float) -> tuple[float, float]:
        if profile == "short":
            return (0.01, 0.2)
        if profile == "medium":
            return (0.1, 1.0)
        return (round(lease * 0.5, 2), round(lease * 1.6, 2))

    def _workload(self, config: Mapping[str, Any], corner: Corner | None) -> dict[str, float]:
        kinds = [k for k in TASK_KINDS
                 if config["pool_type"] == "prefork" or k not in PREFORK_ONLY_TASKS]
        count = self.rng.choice((1, 2, 2, 3, 4))
        chosen = {"sleep"} if corner and corner.sleep else set()
        while len(chosen) < count:
            chosen.add(self.rng.choices(kinds, [TASK_WEIGHTS[k] for k in kinds])[0])
        if not chosen & {"noop", "sleep", "cpu", "big"}:
            chosen.add("noop")  # something that ends well, so progress shows
        return {k: float(self.rng.choice((1, 2, 4))) for k in sorted(chosen)}

    def fault_kinds(self, config: Mapping[str, Any]) -> list[str]:
        kinds = ["kill-main", "terminate-worker", "hup-worker", "cold-shutdown", "control"]
        if config["pool_type"] == "prefork":
            kinds += ["kill-children", "freeze-children", "kill-running"]
        if config["transport"] != "sqlite":
            kinds += ["cut-connections", "reset-connections", "blackhole", "latency"]
        if config["transport"] == "redis":
            kinds.append("restart-broker")
        return [k for k in FAULT_KINDS if k in kinds]

    def _faults(self, config: Mapping[str, Any], duration: float,
                corner: Corner | None, rate: float) -> list[FaultEvent]:
        kinds = self.fault_kinds(config)
        forced = [k for k in (corner.faults if corner else ()) if k in kinds]
        if corner is not None and corner.ordered and forced:
            return self._sequence(forced, duration, corner, rate)
        count = max(len(forced), self.rng.choices((0, 1, 2, 3, 4), (1, 4, 3, 2, 1))[0])
        picked = forced + [self.rng.choices(kinds, [FAULT_WEIGHTS[k] for k in kinds])[0]
                           for _ in range(count - len(forced))]
        events = []
        for kind in picked:
            at = round(self.rng.uniform(0.5, duration * 0.9), 1)
            events.append(FaultEvent(kind, at, self._span(kind, corner),
                                     self._ms(kind)))
        return sorted(events, key=lambda f: (f.at, f.kind))

    def _span(self, kind: str, corner: Corner | None) -> float:
        """How long a timed fault stays on: 1-5 s; black holes sometimes 9-14 s (a corner's
        own range if it has one), longer than it takes a worker to notice one."""
        if kind not in TIMED_FAULTS:
            return 0.0
        if kind == "blackhole" and corner is not None and corner.hole is not None:
            return round(self.rng.uniform(*corner.hole), 1)
        if kind == "blackhole" and self.rng.random() < 0.2:
            return round(self.rng.uniform(9.0, 14.0), 1)
        return round(self.rng.uniform(1.0, 5.0), 1)

    def _ms(self, kind: str) -> float:
        return float(self.rng.choice((50, 200, 800))) if kind == "latency" else 0.0

    def _sequence(self, kinds: list[str], duration: float, corner: Corner,
                  rate: float) -> list[FaultEvent]:
        """An ordered corner's faults: the first at ``corner.first`` of the run, the next
        2-3 s apart, each midway between two publishes, all before 0.9 of the run."""
        start = self.rng.uniform(*corner.first) * duration
        room = duration * 0.9 - start
        events = []
        at = start
        for n, kind in enumerate(kinds):
            if n:
                at += min(self.rng.uniform(2.0, 3.0), room / (len(kinds) - 1))
            snapped = round((int(at * rate) + 0.5) / rate, 2)
            while snapped >= duration * 0.95 and snapped - 1 / rate > 0:
                snapped = round(snapped - 1 / rate, 2)
            events.append(FaultEvent(kind, snapped, self._span(kind, corner), self._ms(kind)))
        return events

    def _rate(self, config: Mapping[str, Any], workload: Mapping[str, float],
              sleep: tuple[float, float], duration: float, corner: Corner | None = None
              ) -> float:
        """A rate whose work fits the pool: the drain after publishing stays short. A corner
        may pick from its own rates, or offer ``load`` times what the pool can run."""
        total = sum(workload.values())
        mean = sum(w * (sum(sleep) / 2 if k == "sleep" else 0.05)
                   for k, w in workload.items()) / total
        capacity = 1 if config["pool_type"] == "solo" else int(config["concurrency"])
        if corner is not None and corner.rates:
            return float(self.rng.choice(corner.rates))
        if corner is not None and corner.load:  # the whole fleet's capacity
            fleet = capacity * int(config.get("fleet", 1))
            return round(max(1.0, corner.load * fleet / max(mean, 0.01)), 1)
        most = capacity * (duration + 15.0) / max(mean, 0.01) / duration
        return max(1.0, min(self.rng.choice(RATES), round(most, 1)))


# -- shrinking candidates --------------------------------------------------------------------

def _toward(value: Any, default: Any, values: tuple[Any, ...]) -> list[Any]:
    """The default first, then (for numbers) the next value one step nearer to it."""
    out = [default]
    if isinstance(value, int | float) and not isinstance(value, bool):
        nearer = [v for v in values if v != default and (
            default < v < value or value < v < default)]
        if nearer:
            out.append(max(nearer) if value > default else min(nearer))
    return out


def smaller(case: Case, allowed: Mapping[str, Sequence[Any]] | None = None) -> Iterator[Case]:
    """Candidate reductions of ``case``, the biggest first: every fault at once, one fault, half
    the tasks, one axis back toward its default, one task kind, a shorter run."""
    if len(case.faults) > 1:
        yield replace(case, faults=())
    for n in range(len(case.faults)):
        yield replace(case, faults=case.faults[:n] + case.faults[n + 1:])
    if case.rate > 1:
        yield replace(case, rate=max(1.0, round(case.rate / 2, 1)))
    for name in SHRINK_ORDER:
        value = case.config[name]
        axis = SPACE[name]
        if value == axis.default:
            continue
        for target in _toward(value, axis.default, axis.values):
            if allowed and name in allowed and target not in allowed[name]:
                continue
            if not _valid({**case.config, name: target}, case):
                continue
            yield replace(case, config={**case.config, name: target})
    if len(case.workload) > 1:
        for kind in case.workload:
            rest = {k: w for k, w in case.workload.items() if k != kind}
            yield replace(case, workload=rest)
    for timed in (n for n, f in enumerate(case.faults) if f.duration > 1.0):
        f = case.faults[timed]
        shorter = replace(f, duration=round(max(1.0, f.duration / 2), 1))
        yield replace(case, faults=(*case.faults[:timed], shorter, *case.faults[timed + 1:]))
    last = max((f.at for f in case.faults), default=0.0)
    shorter_run = max(2.0, last + 1.0, round(case.duration / 2, 1))
    if shorter_run < case.duration:
        yield replace(case, duration=shorter_run)


def reduction(before: Case, after: Case) -> tuple[Any, ...]:
    """What a shrink candidate changes, whatever else the case holds: the faults it drops or
    shortens (by kind and time), the axes it moves (and where to), the task kinds it drops,
    a lower rate, a shorter run (for :func:`stress.shrink.shrink`'s ``move``)."""
    faults = tuple(sorted((f.kind, f.at, f.duration) for f in set(before.faults)
                          - set(after.faults)))
    axes = tuple(sorted((k, str(v)) for k, v in after.config.items()
                        if before.config.get(k) != v))
    tasks = tuple(sorted(set(before.workload) - set(after.workload)))
    return (faults, axes, tasks, after.rate < before.rate, after.duration < before.duration)


def _valid(config: Mapping[str, Any], case: Case) -> bool:
    """Faults and tasks the configuration can still carry (no child kills without children)."""
    kinds = set(Generator(0).fault_kinds(config))
    if any(f.kind not in kinds for f in case.faults):
        return False
    return not (config["pool_type"] != "prefork" and set(case.workload) & PREFORK_ONLY_TASKS)
