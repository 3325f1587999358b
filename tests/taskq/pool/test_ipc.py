"""Framing between the pool's parent and children: whole frames whatever the chunking,
partial non-blocking writes, truncated streams."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskq.pool.ipc import FrameReader, JobInbox, PendingWrites, encode, write_frames


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe2(os.O_CLOEXEC)
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def _drain(reader: FrameReader) -> list[object]:
    out = []
    while True:
        ok, obj = reader.next()
        if not ok:
            return out
        out.append(obj)


objects = st.recursive(st.none() | st.integers() | st.text() | st.binary(),
                       lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner),
                       max_leaves=8)


@given(items=st.lists(objects, min_size=1, max_size=6), cuts=st.lists(
    st.integers(min_value=1, max_value=64), max_size=20))
def test_frames_come_out_whole_whatever_the_chunking(items, cuts):
    data = b"".join(encode(item) for item in items)
    r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        reader = FrameReader(r)
        got: list[object] = []
        pos = 0
        for cut in [*cuts, len(data)]:
            chunk = data[pos:pos + cut]
            pos += len(chunk)
            if chunk:
                os.write(w, chunk)
            reader.read_available()
            got += _drain(reader)
        assert got == items
        assert reader.pending_bytes() == 0 and not reader.eof
    finally:
        os.close(r)
        os.close(w)


def test_reader_sees_eof(pipe):
    r, w = pipe
    os.set_blocking(r, False)
    write_frames(w, "a", "b")
    os.close(w)
    reader = FrameReader(r)
    reader.read_available()
    assert _drain(reader) == ["a", "b"] and reader.eof


def test_pending_writes_survive_a_full_pipe_and_keep_their_tags(pipe):
    r, w = pipe
    os.set_blocking(w, False)
    os.set_blocking(r, False)
    pending = PendingWrites()
    big = b"x" * (1 << 20)
    pending.append("small", encode("hello"))
    pending.append("big", encode(big))
    pending.append("after", encode("tail"))
    assert pending.write(w) is False  # the pipe took what it could
    assert len(pending) == 2          # "small" went whole; "big" is partly written
    reader = FrameReader(r)
    got: list[object] = []
    while pending:
        reader.read_available()
        got += _drain(reader)
        pending.write(w)
    reader.read_available()
    got += _drain(reader)
    assert got == ["hello", big, "tail"]


def test_take_returns_the_frames_not_wholly_written(pipe):
    _r, w = pipe
    os.set_blocking(w, False)
    pending = PendingWrites()
    pending.append(1, encode(b"y" * (1 << 20)))
    pending.append(2, encode("later"))
    pending.write(w)
    assert pending.take() == [1, 2] and not pending


def test_a_write_to_a_closed_pipe_raises(pipe):
    r, w = pipe
    os.close(r)
    pending = PendingWrites()
    pending.append(1, encode("x"))
    with pytest.raises(BrokenPipeError):
        pending.write(w)
    assert len(pending) == 1


def test_blocking_reader_returns_none_at_eof_and_on_a_truncated_frame(pipe):
    r, w = pipe
    frame = encode({"job": 1})
    os.write(w, encode(("job", 1)) + frame[:-3])
    os.close(w)
    inbox = JobInbox(r)
    assert inbox.next() == ("job", 1)
    assert inbox.next() is None  # cut short: the parent closed mid-job


def test_blocking_reader_reads_big_frames(pipe):
    import threading

    r, w = pipe
    big = ("job", 1, "z" * (3 << 20))
    writer = threading.Thread(target=write_frames, args=(w, big, ("job", 2)))
    writer.start()
    inbox = JobInbox(r)
    assert inbox.next() == big
    assert inbox.next() == ("job", 2)
    writer.join()
    os.close(w)
    assert inbox.next() is None


def test_a_cancel_written_after_a_job_is_seen_before_the_job_runs(pipe):
    r, w = pipe
    write_frames(w, ("job", 1), ("job", 2), ("job", 3))
    inbox = JobInbox(r)
    assert inbox.next() == ("job", 1)
    assert not inbox.cancelled(1)
    write_frames(w, ("cancel", [2]))  # the parent takes job 2 back while job 1 runs
    assert inbox.next() == ("job", 2)
    assert inbox.cancelled(2)
    assert inbox.next() == ("job", 3)
    assert not inbox.cancelled(3)
