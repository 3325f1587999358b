"""Exceptions cross the wire as Celery writes them, and never build or call arbitrary code."""

from __future__ import annotations

from taskq.errors import RemoteTaskError
from taskq.exc_wire import exception_from_wire, exception_to_wire
from taskq.result import EagerResult


class LocalError(Exception):
    pass


def test_builtin_exception_round_trips():
    wire = exception_to_wire(ValueError("bad", 3))
    assert wire == {"exc_type": "ValueError", "exc_message": ["bad", 3],
                    "exc_module": "builtins"}
    back = exception_from_wire(wire)
    assert type(back) is ValueError and back.args == ("bad", 3)


def test_an_imported_exception_class_round_trips():
    back = exception_from_wire(exception_to_wire(LocalError("x")))
    assert type(back) is LocalError


def test_unknown_types_become_remote_task_errors_keeping_name_and_message():
    back = exception_from_wire({"exc_type": "Gone", "exc_module": "not.imported.mod",
                                "exc_message": ["it broke"]})
    assert isinstance(back, RemoteTaskError)
    assert (back.exc_type, back.exc_module, back.message) == ("Gone", "not.imported.mod",
                                                              "it broke")
    assert str(back) == "not.imported.mod.Gone: it broke"


def test_non_exception_names_are_never_called():
    for wire in ({"exc_type": "print", "exc_module": "builtins", "exc_message": ["x"]},
                 {"exc_type": "system", "exc_module": "os", "exc_message": ["echo pwned"]}):
        assert isinstance(exception_from_wire(wire), RemoteTaskError)


def test_non_json_arguments_are_repr_d():
    wire = exception_to_wire(ValueError(object))
    assert wire["exc_message"] == [repr(object)]


def test_sequence_and_mapping_arguments_stay_json_as_celery_keeps_them():
    wire = exception_to_wire(KeyError(("foo",), {"k": (1, object)}))
    assert wire["exc_message"] == [["foo"], {"k": [1, repr(object)]}]


def test_celerys_unpickleable_wrapper_keeps_the_original_args():
    """Celery's Retry(exc=...) wraps an exception that does not pickle; its exc_args must
    reach a Celery client as ('foo',), not as the characters of "('foo',)"."""
    import pytest

    serialization = pytest.importorskip("celery.utils.serialization")
    wrapper = serialization.UnpickleableExceptionWrapper("mod", "Unpickleable", ("foo",), "t")
    wire = exception_to_wire(wrapper)
    assert wire["exc_message"][:3] == ["mod", "Unpickleable", ["foo"]]
    back = exception_from_wire(wire)
    assert isinstance(back, serialization.UnpickleableExceptionWrapper)
    assert back.exc_args == ("foo",)


def test_eager_result_states():
    ok = EagerResult("i", 1, "SUCCESS")
    assert ok.ready() and ok.successful() and not ok.failed() and ok.get() == 1
    bad = EagerResult("i", KeyError("k"), "FAILURE", "tb")
    assert bad.failed() and bad.traceback == "tb"
