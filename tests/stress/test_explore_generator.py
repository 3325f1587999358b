"""The explore generator and the corpus format: seeded, covering, round-tripping (no brokers)."""

from __future__ import annotations

from collections import Counter

from stress.corpus import dumps, loads
from stress.explore import CORNERS, FAULT_KINDS, SPACE, TASK_KINDS, Generator, smaller


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
