"""The App: configuration, broker URLs, the environment, and the task registry."""

from pathlib import Path

import pytest

import dromos
from dromos.brokers.memory import MemoryBroker
from dromos.brokers.sqlite import SQLiteBroker


def test_an_unknown_broker_scheme_is_refused_when_the_app_is_made() -> None:
    with pytest.raises(dromos.ConfigurationError, match=r"unknown broker URL 'nope://x'.*sqlite"):
        dromos.App("x", broker="nope://x")


def test_rabbitmq_without_a_state_store_is_refused_with_what_to_give(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("DROMOS_BACKEND", raising=False)
    with pytest.raises(dromos.ConfigurationError, match=r"keeps no job status.*backend="):
        dromos.App("x", broker="amqp://guest:guest@localhost/")
    with pytest.raises(dromos.ConfigurationError, match="keeps no job status itself"):
        dromos.App("x", broker="amqp://localhost/", backend="amqp://other/")
    monkeypatch.setenv("DROMOS_BACKEND", f"sqlite:///{tmp_path}/state.db")
    app = dromos.App("x", broker="amqp://guest:guest@localhost/?prefix=p")
    from dromos.brokers.rabbitmq import RabbitMQBroker
    from dromos.brokers.sqlite import SQLiteBroker as Store

    assert isinstance(app.broker, RabbitMQBroker)
    assert isinstance(app.broker.store, Store)
    assert app.broker.store.options.relay


def test_a_bad_sqlite_url_is_refused_with_how_to_write_it() -> None:
    with pytest.raises(dromos.ConfigurationError, match="sqlite:///"):
        dromos.App("x", broker="sqlite://")


def test_an_unknown_sqlite_option_is_refused() -> None:
    with pytest.raises(dromos.ConfigurationError, match="fast"):
        dromos.App("x", broker="sqlite:///x.db?fast=1")


def test_the_default_broker_is_sqlite_in_the_current_directory() -> None:
    app = dromos.App("x")
    assert app.broker_url == "sqlite:///./dromos.db"
    assert isinstance(app.broker, SQLiteBroker)


def test_dromos_broker_overrides_the_constructor(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DROMOS_BROKER", "memory://")
    app = dromos.App("x", broker=f"sqlite:///{tmp_path}/x.db")
    assert app.broker_url == "memory://"
    assert isinstance(app.broker, MemoryBroker)


def test_an_empty_dromos_broker_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DROMOS_BROKER", "")
    assert dromos.App("x", broker="memory://").broker_url == "memory://"


def test_a_separate_backend_is_refused_for_brokers_that_keep_status() -> None:
    with pytest.raises(dromos.ConfigurationError, match="backend"):
        dromos.App("x", broker="memory://", backend="sqlite:///other.db")


def test_a_non_positive_lease_is_refused() -> None:
    with pytest.raises(dromos.ConfigurationError, match="lease"):
        dromos.App("x", broker="memory://", lease=0)


def test_a_duplicate_task_name_is_refused(app: dromos.App) -> None:
    @app.task
    def resize() -> None: ...

    with pytest.raises(dromos.ConfigurationError, match=r"'resize' is already registered.*name="):

        @app.task(name="resize")
        def other() -> None: ...


def test_two_apps_are_independent() -> None:
    one, two = dromos.App("one", broker="memory://"), dromos.App("two", broker="memory://")

    @one.task
    def resize() -> None: ...

    @two.task
    def resize_too() -> None: ...

    assert (list(one.tasks), list(two.tasks)) == (["resize"], ["resize_too"])
    assert one.broker is not two.broker


def test_enqueue_many_refuses_a_task_of_another_app(app: dromos.App) -> None:
    other = dromos.App("other", broker="memory://")

    @other.task
    def foreign() -> None: ...

    with pytest.raises(dromos.ConfigurationError, match="another app"):
        app.enqueue_many([foreign.call()])
    assert app.portal.call(app.broker.jobs) == []


def test_a_job_handle_for_an_unknown_id_raises_job_not_found(app: dromos.App) -> None:
    with pytest.raises(dromos.JobNotFound, match="no job 'nope'"):
        app.job("nope").status()


def test_blocking_result_times_out_with_result_timeout(app: dromos.App) -> None:
    @app.task
    def never_run() -> None: ...

    job = never_run.enqueue()
    with pytest.raises(dromos.ResultTimeout) as waited:
        job.result(timeout=0.05)
    assert isinstance(waited.value, TimeoutError)
    assert job.status().state is dromos.JobState.QUEUED
