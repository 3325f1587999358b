"""The explore generator and the corpus format: seeded, covering, round-tripping (no brokers)."""

from __future__ import annotations

from collections import Counter

from stress.corpus import dumps, loads
from stress.explore import CORNERS, FAULT_KINDS, SPACE, TASK_KINDS, Case, Generator, smaller


def test_the_same_seed_draws_the_same_cases() -> None:
    first = [Generator(7).draw().key() for _ in range(50)]
    again = [Generator(7).draw().key() for _ in range(50)]
    other = [Generator(8).draw().key() for _ in range(50)]
    assert first == again
    assert first != other


def test_every_axis_value_fault_kind_task_kind_and_corner_is_reached() -> None:
    gen = Generator(1)
    cases = [gen.draw() for _ in range(2000)]
    for name, axis in SPACE.items():
        seen = {c.config[name] for c in cases}
        assert seen == set(axis.values), name
    assert {f.kind for c in cases for f in c.faults} == set(FAULT_KINDS)
    assert {k for c in cases for k in c.workload} == set(TASK_KINDS)
    assert {c.origin for c in cases} == {"random", *(c.name for c in CORNERS)}


def test_corners_take_their_share_and_fix_their_axes() -> None:
    gen = Generator(3, corner_weight=0.4)
    cases = [gen.draw() for _ in range(3000)]
    origins = Counter(c.origin for c in cases)
    assert 0.33 < 1 - origins["random"] / len(cases) < 0.47
    for case in cases:
        if case.origin == "recycle-cut":
            assert case.config["strategy"] == "fast"
            assert case.config["max_tasks_per_child"] >= 1
            assert "cut-connections" in {f.kind for f in case.faults}


def test_drawn_cases_are_runnable_configurations() -> None:
    gen = Generator(5)
    for _ in range(1000):
        case = gen.draw()
        kinds = {f.kind for f in case.faults}
        if case.config["pool_type"] != "prefork":
            assert not kinds & {"kill-children", "freeze-children", "kill-running"}
            assert not set(case.workload) & {"exit", "crash", "grow", "hard_limit"}
        if case.config["transport"] == "sqlite":
            assert not kinds & {"cut-connections", "blackhole", "latency", "reset-connections"}
        if "restart-broker" in kinds:
            assert case.config["transport"] == "redis"
        assert all(0 < f.at < case.duration for f in case.faults)
        suite, cell = case.suite(), case.cell()
        assert cell.children == (case.config["concurrency"]
                                 if case.config["pool_type"] == "prefork" else 0)
        assert ["-P", case.config["pool_type"]] == suite.worker_args[:2]


def test_restricting_an_axis_keeps_every_draw_inside_it() -> None:
    gen = Generator(2, restrict={"transport": ["amqp"], "pool_type": ["prefork"]})
    cases = [gen.draw() for _ in range(300)]
    assert {c.config["transport"] for c in cases} == {"amqp"}
    assert {c.config["pool_type"] for c in cases} == {"prefork"}
    assert "blocking-lease" not in {c.origin for c in cases}


def test_a_case_survives_the_corpus_round_trip() -> None:
    gen = Generator(11)
    for _ in range(200):
        case = gen.draw()
        back = loads(dumps(case, {"failed": ["deadlock"]}))
        assert back.key() == case.key()
        assert back.notes["failed"] == ["deadlock"]


def test_every_candidate_reduction_is_smaller_and_still_runnable() -> None:
    gen = Generator(4)
    for _ in range(200):
        case = gen.draw()
        for candidate in smaller(case):
            assert candidate.key() != case.key()
            assert candidate.size() < case.size()
            kinds = set(Generator(0).fault_kinds(candidate.config))
            assert {f.kind for f in candidate.faults} <= kinds


def test_a_celery_worker_gets_only_the_axes_its_command_line_carries() -> None:
    from stress.explorer import ExploreOptions

    options = ExploreOptions(worker_cmd="celery -A stress.workload:celery worker -Q {queue} "
                                        "-c {concurrency} -O {pool} -P prefork")
    gen = Generator(6, restrict=options.restrict())
    cases = [gen.draw() for _ in range(300)]
    assert {c.config["strategy"] for c in cases} == {"fair"}
    assert {c.config["max_tasks_per_child"] for c in cases} == {0}
    assert {c.config["fds"] for c in cases} == {0}
    assert "sqlite" not in {c.config["transport"] for c in cases}
    assert {c.config["concurrency"] for c in cases} == {1, 2, 3, 4}


# -- the corners of issue 13's defects: what each draws to reach its defect --------------------

def _from(name: str, n: int = 60, seed: int = 21) -> list[Case]:
    gen = Generator(seed, corner_weight=1.0, corners=[c for c in CORNERS if c.name == name])
    return [gen.draw() for _ in range(n)]


def _mean_task(case: Case) -> float:
    total = sum(case.workload.values())
    return sum(w * (sum(case.sleep) / 2 if k == "sleep" else 0.05)
               for k, w in case.workload.items()) / total


def _gaps(case: Case) -> list[float]:
    return [b.at - a.at for a, b in zip(case.faults, case.faults[1:], strict=False)]


def test_recycle_cut_cuts_three_times_into_a_backlogged_fast_child() -> None:
    """Issue 13 #1 shows only when a cut lands while jobs wait queued in a fast child that has
    max-tasks-per-child >= 2: a backlog, and three cuts for the ~50 % each has."""
    for case in _from("recycle-cut"):
        assert [f.kind for f in case.faults] == ["cut-connections"] * 3
        assert case.config["strategy"] == "fast" and case.config["max_tasks_per_child"] >= 2
        assert case.config["concurrency"] in (1, 2) and case.fleet == 1
        assert case.rate * _mean_task(case) >= 1.5 * case.config["concurrency"]
        assert min(_gaps(case)) >= 1.5 and case.faults[-1].at < case.duration


def test_reconnect_blackhole_cuts_then_holes_an_idle_worker_longer_than_the_bound() -> None:
    """Issue 13 #3 shows only on an idle worker (a busy one notices through its tasks), after
    a reconnect, and only an oracle that times the notice sees it."""
    for case in _from("reconnect-blackhole"):
        cut, hole = case.faults
        assert (cut.kind, hole.kind) == ("cut-connections", "blackhole")
        assert hole.at - cut.at >= 1.5
        assert hole.duration > case.suite().oracles["blackhole_noticed_within"]
        assert abs((hole.at * case.rate) % 1 - 0.5) < 0.05  # midway between two publishes
        assert case.workload == {"noop": 1.0} and case.rate <= 2.0
        assert case.config["transport"] == "redis"


def test_kill_main_early_kills_three_times_into_busy_fast_children_and_watches_for_reruns(
        ) -> None:
    """Issue 13 #7: a job a child started a few ms after its main process was killed ran
    again after the lease: children with jobs queued behind short tasks start one in that
    window often, and the watch must outlast the lease."""
    for case in _from("kill-main-early"):
        assert [f.kind for f in case.faults] == ["kill-main"] * 3
        assert case.config["acks"] == "early" and case.config["strategy"] == "fast"
        assert case.rate * _mean_task(case) >= 1.4 * case.config["concurrency"]
        assert case.sleep[1] <= 0.2 and min(_gaps(case)) >= 1.5
        assert case.suite().oracles["watch_redelivery"] == case.config["lease"] + 3.0


def test_lease_cut_cuts_late_into_a_backlog_with_a_lease_the_oracle_can_see() -> None:
    """Issue 13 #5: reserved messages (a backlog) when the cut lands, late enough that the
    fleet runs dry inside the lease while they are invisible."""
    for case in _from("lease-cut"):
        (cut,) = case.faults
        assert cut.kind == "cut-connections" and cut.at >= 0.5 * case.duration
        oracles = case.suite().oracles
        assert oracles["lease"] == 10.0 and oracles["release_within"] + 1.0 < 10.0
        capacity = case.config["concurrency"] * case.fleet
        assert case.rate * _mean_task(case) >= 1.2 * capacity


def test_the_defect_corners_hold_no_fd_pressure_that_would_hide_their_defect() -> None:
    """2693be4's children die under fd pressure before running anything: a corner case drawn
    with it fails warm-up instead of reaching its own defect."""
    for name in ("recycle-cut", "kill-main-early", "reconnect-blackhole", "lease-cut"):
        assert {c.config["fds"] for c in _from(name, 40)} == {0}, name


def test_corners_are_drawn_by_their_weights() -> None:
    gen = Generator(3)
    cases = [gen.draw() for _ in range(4000)]
    share = {k: n / len(cases) for k, n in Counter(c.origin for c in cases).items()}
    weights = {c.name: c.weight for c in CORNERS}
    total = sum(weights.values())
    assert abs(share["random"] - 0.4) < 0.03
    for name, weight in weights.items():
        assert abs(share[name] - 0.6 * weight / total) < 0.025, name


def test_free_draws_sometimes_hold_a_black_hole_longer_than_the_notice_bound() -> None:
    gen = Generator(4, corner_weight=0.0)
    holes = [f.duration for c in (gen.draw() for _ in range(1500)) for f in c.faults
             if f.kind == "blackhole"]
    assert all(1.0 <= d <= 14.0 for d in holes)
    assert 0.1 < sum(d > 8.0 for d in holes) / len(holes) < 0.3
