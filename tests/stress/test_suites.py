"""Suites, matrices and cells: every shipped suite loads, pairwise covers every pair."""

from __future__ import annotations

import itertools

import pytest

from stress.errors import ScenarioError
from stress.suites import (
    AXES,
    DEFAULT_CELL,
    Cell,
    cells_of,
    find_suites,
    load_suite,
    named_axes,
    parse_cell,
    restrict,
)


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


def test_a_suites_cells_are_named_only_by_the_axes_it_uses() -> None:
    """Given kill-connections (its matrix: transport, pool, acks; no schedule reads an axis),
    its cell ids name those three axes and not kill_rate, concurrency or max_tasks_per_child,
    which it leaves at their defaults; the cells still carry every axis for the worker."""
    suite = load_suite("kill-connections")
    cells = cells_of(suite.matrix, suite.combine, suite.faults)
    for cell in cells:
        assert [part.split("=")[0] for part in cell.id.split(",")] == [
            "transport", "pool", "acks"]
        assert cell["kill_rate"] == 10 and cell["concurrency"] == 2
    assert len({c.id for c in cells}) == len(cells)
    restricted = restrict(cells, "redis")
    assert all("kill_rate" not in c.id for c in restricted)


@pytest.mark.parametrize("name", sorted(find_suites()))
def test_every_axis_a_fault_schedule_reads_names_the_cells(name: str) -> None:
    suite = load_suite(name)
    for cell in cells_of(suite.matrix, suite.combine, suite.faults):
        shown = {part.split("=")[0] for part in cell.id.split(",")}
        assert shown == {"transport", *suite.matrix}
        if any("{kill_rate}" in str(f.get("schedule")) for f in suite.faults):
            assert "kill_rate" in shown


def test_a_schedule_axis_missing_from_the_matrix_still_names_the_cell() -> None:
    assert named_axes(["pool"], [{"schedule": "poisson {kill_rate}/s"}]) == (
        "transport", "pool", "kill_rate")


def test_one_cell_given_on_the_command_line_is_named_by_the_suites_axes_and_its_own() -> None:
    suite = load_suite("kill-main")
    cell = parse_cell("pool=fast", {**DEFAULT_CELL}, named_axes(suite.matrix, suite.faults))
    assert cell.id == "transport=redis,pool=fast,acks=early"


def test_a_recorded_cell_keeps_the_name_its_report_gave_it() -> None:
    """Replay rebuilds a cell from report.json: a report written when ids named every axis
    and a newer one both find their cell under the id they recorded."""
    params = dict(DEFAULT_CELL)
    old_id = Cell(params).id
    assert Cell.recorded(params, old_id).id == old_id
    assert Cell.recorded(params, "transport=redis,acks=early").id == "transport=redis,acks=early"


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
