"""The fault journal: one JSON line per injection, safe to share between processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from chaos.clock import FakeClock
from chaos.errors import JournalError
from chaos.journal import FaultRecord, Journal, iter_journal, read_journal


def test_records_round_trip_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / "faults.jsonl"
    clock = FakeClock(42.0)
    with Journal(path, clock=clock, wall=lambda: 1_700_000_000.5) as journal:
        written = journal.record(
            "kill",
            "children of 1",
            "ok",
            params={"signal": "SIGKILL"},
            detail={"pids": [7], "indices": [0]},
            offset=1.5,
        )
        journal.record("kill", "children of 1", "no-target")
    records = read_journal(path)
    assert records[0] == written
    assert records[0].mono == 42.0 and records[0].wall == 1_700_000_000.5
    assert records[0].detail == {"pids": [7], "indices": [0]}
    assert [r.outcome for r in records] == ["ok", "no-target"]
    assert path.read_text().count("\n") == 2


def test_memory_journal_keeps_the_last_records_and_notifies_listeners() -> None:
    journal = Journal(keep=3)
    seen: list[FaultRecord] = []
    journal.subscribe(seen.append)
    for i in range(5):
        journal.record("probe", str(i), "ok")
    assert [r.target for r in journal.records] == ["2", "3", "4"]
    assert len(seen) == 5


def test_unknown_outcome_is_refused() -> None:
    with pytest.raises(JournalError, match="unknown outcome 'maybe'"):
        Journal().record("kill", "x", "maybe")


def test_closed_file_journal_refuses_writes(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.jsonl")
    journal.close()
    with pytest.raises(JournalError, match="closed"):
        journal.record("kill", "x", "ok")


def test_unopenable_path_is_a_journal_error(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="cannot open"):
        Journal(tmp_path / "missing-dir" / "j.jsonl")


_WRITER = """
import sys
from chaos.journal import Journal
path, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
with Journal(path) as journal:
    for i in range(count):
        journal.record("probe", name, "ok", detail={"i": i, "pad": "x" * (i % 7 * 900)})
"""


def test_several_processes_append_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "shared.jsonl"
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), f"w{n}", "300"])
        for n in range(4)
    ]
    assert [w.wait(60) for w in writers] == [0, 0, 0, 0]
    records = read_journal(path, strict=True)
    assert len(records) == 1200
    for n in range(4):
        mine = [r.detail["i"] for r in records if r.target == f"w{n}"]
        assert mine == list(range(300)), "each writer's lines are whole and in order"
    assert len({r.writer for r in records}) == 4


def test_reader_skips_a_truncated_last_line_unless_strict(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with Journal(path) as journal:
        journal.record("kill", "x", "ok")
    with open(path, "a") as handle:
        handle.write('{"mono": 1, "wall"')
    assert len(read_journal(path)) == 1
    with pytest.raises(JournalError, match="truncated"):
        read_journal(path, strict=True)


def test_reader_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    path.write_text('{"mono": 1}\n')
    with pytest.raises(JournalError, match=r"j.jsonl:1: .*lacks wall, kind, target, outcome"):
        list(iter_journal(path))
    path.write_text("not json\n")
    with pytest.raises(JournalError, match="not JSON"):
        read_journal(path)
    with pytest.raises(JournalError, match="cannot read"):
        read_journal(tmp_path / "nope.jsonl")
