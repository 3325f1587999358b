"""Suites, matrices and cells: every shipped suite loads, pairwise covers every pair."""

from __future__ import annotations

import itertools

import pytest

from stress.errors import ScenarioError
from stress.suites import AXES, cells_of, find_suites, load_suite, parse_cell, restrict


@pytest.mark.parametrize("name", sorted(find_suites()))
def test_every_shipped_suite_loads_with_a_matrix(name: str) -> None:
    suite = load_suite(name)
    assert suite.description and suite.duration > 0
    assert cells_of(suite.matrix, suite.combine)


def test_the_kill_children_suites_default_matrix_is_small_and_covers_every_pair() -> None:
    suite = load_suite("kill-children")
    cells = cells_of(suite.matrix, suite.combine)
    assert len(cells) <= 12  # under 5 minutes on 2 cores at ~13 s a cell
    for a, b in itertools.combinations(suite.matrix, 2):
        for va, vb in itertools.product(suite.matrix[a], suite.matrix[b]):
            assert any(c[a] == va and c[b] == vb for c in cells), (a, va, b, vb)


def test_cell_ids_are_stable_and_name_every_axis() -> None:
    cell = parse_cell("pool=fast,acks=late")
    assert cell.id == ("transport=redis,pool=fast,max_tasks_per_child=0,acks=late,"
                       "concurrency=2,kill_rate=10")
    assert [part.split("=")[0] for part in cell.id.split(",")] == list(AXES)


@pytest.mark.parametrize("text, expected", [
    ("pool=fastest", "pool='fastest'; expected one of fair, fast"),
    ("colour=red", "expected k=v pairs"),
    ("concurrency=two", "is not a int"),
])
def test_a_bad_cell_is_a_clear_error(text: str, expected: str) -> None:
    with pytest.raises(ScenarioError, match=expected):
        parse_cell(text)


def test_restricting_to_one_broker_keeps_each_configuration_once() -> None:
    suite = load_suite("kill-children")
    cells = restrict(cells_of(suite.matrix, suite.combine), "sqlite")
    assert {c["transport"] for c in cells} == {"sqlite"}
    assert len({c.id for c in cells}) == len(cells)


def test_an_unknown_suite_lists_the_known_ones() -> None:
    with pytest.raises(ScenarioError, match=r"known suites: .*kill-children"):
        load_suite("kill-everything")
