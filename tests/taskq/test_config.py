"""Settings: one precedence everywhere, and errors that name the setting and a fix."""

from __future__ import annotations

import types

import pytest

from taskq import TaskQ
from taskq.config import Config, validate
from taskq.errors import ConfigurationError


def test_precedence_defaults_code_env_cli():
    conf = Config(environ={})
    assert conf.task_default_queue == "celery" and conf.source("task_default_queue") == "default"
    conf.update(task_default_queue="code")
    assert conf.task_default_queue == "code"
    env_conf = Config(environ={"TASKQ_TASK_DEFAULT_QUEUE": "env"})
    env_conf.update(task_default_queue="code")
    assert env_conf.task_default_queue == "env" and env_conf.source("task_default_queue") == "env"
    env_conf.override({"task_default_queue": "cli"})
    assert env_conf.task_default_queue == "cli" and env_conf.source("task_default_queue") == "cli"


def test_later_config_from_object_overrides_earlier_code():
    app = TaskQ("p", broker="redis://a", environ={})
    app.config_from_object(types.SimpleNamespace(broker_url="redis://b"))
    assert app.conf.broker_url == "redis://b"


@pytest.mark.parametrize(("raw", "value"), [
    ({"TASKQ_TASK_ACKS_LATE": "yes"}, ("task_acks_late", True)),
    ({"TASKQ_TASK_ACKS_LATE": "off"}, ("task_acks_late", False)),
    ({"TASKQ_WORKER_CONCURRENCY": "4"}, ("worker_concurrency", 4)),
    ({"TASKQ_WORKER_CONCURRENCY": "none"}, ("worker_concurrency", None)),
    ({"TASKQ_RESULT_EXPIRES": "1.5"}, ("result_expires", 1.5)),
    ({"TASKQ_ACCEPT_CONTENT": "json,pickle"}, ("accept_content", ["json", "pickle"])),
    ({"TASKQ_ACCEPT_CONTENT": '["json"]'}, ("accept_content", ["json"])),
    ({"TASKQ_BROKER_TRANSPORT_OPTIONS": '{"global_keyprefix": "x:"}'},
     ("broker_transport_options", {"global_keyprefix": "x:"})),
])
def test_environment_values_are_parsed_by_type(raw, value):
    name, expected = value
    assert Config(environ=raw)[name] == expected


def test_unknown_setting_in_code_suggests_the_closest_name():
    with pytest.raises(ConfigurationError, match="unknown setting 'borker_url'; did you mean "
                                                 "'broker_url'"):
        TaskQ("p", borker_url="x", environ={})


def test_unknown_environment_variable_suggests_the_closest_name():
    with pytest.raises(ConfigurationError, match="TASKQ_TASK_ACK_LATE names no taskq setting; "
                                                 "did you mean 'TASKQ_TASK_ACKS_LATE'"):
        _ = Config(environ={"TASKQ_TASK_ACK_LATE": "1"}).task_acks_late


def test_foreign_taskq_variables_are_left_alone():
    conf = Config(environ={"TASKQ_STRESS_LEDGER_DIR": "/tmp/x", "TASKQ_APP": "proj"})
    assert conf.broker_url is None


def test_bad_environment_value_names_variable_and_value():
    with pytest.raises(ConfigurationError, match=r"TASKQ_WORKER_CONCURRENCY.*'many'"):
        _ = Config(environ={"TASKQ_WORKER_CONCURRENCY": "many"}).worker_concurrency


@pytest.mark.parametrize(("name", "value", "message"), [
    ("worker_pool", "prefrok", "did you mean 'prefork'"),
    ("worker_concurrency", 0, "must be at least 1"),
    ("task_acks_late", "maybe", "expected true or false"),
    ("accept_content", 5, "expected a list of strings"),
    ("broker_transport_options", "{bad json", "not valid JSON"),
    ("worker_concurrency", True, "expected a number"),
])
def test_bad_values_name_the_setting(name, value, message):
    with pytest.raises(ConfigurationError, match=message) as info:
        validate(name, value)
    assert name in str(info.value)


def test_config_module_rejects_unknown_and_uppercase_names():
    with pytest.raises(ConfigurationError, match="unknown setting 'result_backed'"):
        Config(environ={}).from_object(types.SimpleNamespace(result_backed="x"))
    with pytest.raises(ConfigurationError, match="write task_acks_late = "):
        Config(environ={}).from_object(types.SimpleNamespace(TASK_ACKS_LATE=True))


def test_config_module_by_path_that_does_not_import():
    with pytest.raises(ConfigurationError, match="cannot import config module 'no_such_mod_x'"):
        Config(environ={}).from_object("no_such_mod_x")


def test_config_module_skips_imports_and_functions(tmp_path, monkeypatch):
    (tmp_path / "cfgmod_ok.py").write_text(
        "import os\ndef helper():\n    pass\nbroker_url = 'redis://h'\nCONSTANT = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    conf = Config(environ={})
    conf.from_object("cfgmod_ok")
    assert conf.broker_url == "redis://h"


def test_defaults_are_copies_not_shared():
    conf = Config(environ={})
    conf.accept_content.append("pickle")
    assert conf.accept_content == ["json"]


# -- writes and reads of app.conf go through one checked path (issue 13 #14) ------------------

def test_a_misspelt_attribute_write_names_the_closest_setting():
    app = TaskQ("t", environ={})
    with pytest.raises(ConfigurationError, match=r"task_acks_lat.*did you mean 'task_acks_late'"):
        app.conf.task_acks_lat = True
    assert app.conf.task_acks_late is False


def test_a_bad_value_written_as_an_attribute_names_the_setting_and_the_expected_type():
    app = TaskQ("t", environ={})
    with pytest.raises(ConfigurationError, match=r"worker_concurrency.*whole number.*'two'"):
        app.conf.worker_concurrency = "two"
    assert app.conf.worker_concurrency is None


def test_attribute_writes_are_checked_and_agree_with_get_and_items():
    conf = Config(environ={})
    conf.task_default_queue = "mine"
    conf.worker_concurrency = "3"  # as from a form or a file: normalised like the environment
    assert conf.task_default_queue == conf["task_default_queue"] == "mine"
    assert conf.get("task_default_queue") == "mine" and conf.source("task_default_queue") == "code"
    assert conf.worker_concurrency == conf.get("worker_concurrency") == 3


def test_item_writes_are_checked_like_attribute_writes():
    conf = Config(environ={})
    conf["task_acks_late"] = "yes"
    assert conf.task_acks_late is True and conf.get("task_acks_late") is True
    with pytest.raises(ConfigurationError, match="did you mean 'task_acks_late'"):
        conf["task_ack_late"] = True
    with pytest.raises(ConfigurationError, match=r"task_acks_late.*true or false"):
        conf["task_acks_late"] = "maybe"


def test_get_of_a_misspelt_name_is_an_error_not_the_default():
    conf = Config(environ={})
    with pytest.raises(ConfigurationError, match="did you mean 'task_default_queue'"):
        conf.get("task_default_queu")
    assert conf.get("task_default_queue", "other") == "celery"


def test_the_environment_still_beats_an_attribute_write():
    conf = Config(environ={"TASKQ_TASK_DEFAULT_QUEUE": "env"})
    conf.task_default_queue = "code"
    assert conf.task_default_queue == conf.get("task_default_queue") == "env"
