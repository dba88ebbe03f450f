"""Tasks: inline calls, per-job options, and the retry backoff."""

import inspect
from datetime import UTC, datetime, timedelta

import pytest

import dromos
from dromos.message import decode


def test_calling_a_plain_task_runs_the_function_inline(app: dromos.App) -> None:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    assert add(2, 3) == 5
    assert app.portal.call(app.broker.jobs) == []


async def test_calling_an_async_task_returns_a_coroutine_that_runs_it(app: dromos.App) -> None:
    @app.task
    async def add(a: int, b: int) -> int:
        return a + b

    pending = add(2, 3)
    assert inspect.iscoroutine(pending)
    assert await pending == 5


def test_current_job_works_in_an_inline_call(app: dromos.App) -> None:
    @app.task
    def whoami() -> str:
        job = dromos.current_job()
        job.progress(0.5, "reports nowhere")
        return job.task

    assert whoami() == "whoami"


def test_a_task_keeps_its_functions_name_and_doc(app: dromos.App) -> None:
    @app.task
    def resize(image_id: int) -> None:
        """Resize an image."""

    assert (resize.name, resize.__doc__) == ("resize", "Resize an image.")


def test_name_option_registers_the_task_under_that_name(app: dromos.App) -> None:
    @app.task(name="images.resize")
    def resize(image_id: int) -> None: ...

    assert app.get_task("images.resize") is resize


def test_an_unknown_task_name_raises_unknown_task_error(app: dromos.App) -> None:
    with pytest.raises(dromos.UnknownTaskError, match="register it"):
        app.get_task("nope")


def test_options_refuse_delay_and_eta_together(app: dromos.App) -> None:
    @app.task
    def work() -> None: ...

    with pytest.raises(dromos.ConfigurationError, match="either delay= or eta="):
        work.options(delay=5, eta=datetime.now(UTC))


def test_options_refuse_a_naive_eta(app: dromos.App) -> None:
    @app.task
    def work() -> None: ...

    with pytest.raises(dromos.ConfigurationError, match="timezone-aware"):
        work.options(eta=datetime.now())  # a naive datetime: the point of the test


def test_options_are_written_into_the_envelope(app: dromos.App) -> None:
    @app.task(queue="images", retries=2)
    def work() -> None: ...

    call = work.options(
        delay=timedelta(seconds=10),
        priority=5,
        idempotency_key="k",
        queue="urgent",
        timeout=3,
        retries=4,
        callback_url="https://billing/hooks",
        headers={"traceparent": "00-abc-def-01"},
    ).call()
    message = decode(work.request(call, 60.0).payload)
    assert (message.queue, message.priority, message.timeout, message.max_attempts) == (
        "urgent",
        5,
        3,
        5,
    )
    assert message.eta is not None
    assert timedelta(seconds=9) < message.eta - message.created_at <= timedelta(seconds=10)
    assert message.headers == {
        "traceparent": "00-abc-def-01",
        "idempotency_key": "k",
        "callback_url": "https://billing/hooks",
    }


def test_the_tasks_own_settings_apply_without_options(app: dromos.App) -> None:
    @app.task(queue="images", retries=2, priority=3)
    def work() -> None: ...

    message = decode(work.request(work.call(), 60.0).payload)
    assert (message.queue, message.max_attempts, message.priority, message.eta) == (
        "images",
        3,
        3,
        None,
    )


def test_negative_retries_are_refused(app: dromos.App) -> None:
    with pytest.raises(dromos.ConfigurationError, match="retries"):

        @app.task(retries=-1)
        def work() -> None: ...


def test_an_async_task_cannot_use_the_process_executor(app: dromos.App) -> None:
    with pytest.raises(dromos.ConfigurationError, match="process"):

        @app.task(executor="process")
        async def work() -> None: ...


def test_retry_delay_stays_within_half_and_all_of_its_ceiling(app: dromos.App) -> None:
    @app.task(backoff=1.0, max_backoff=1000.0)
    def work() -> None: ...

    for failures in range(1, 8):
        ceiling = 2.0 ** (failures - 1)
        for _ in range(50):
            assert 0.5 * ceiling <= work.retry_delay(failures) <= ceiling


def test_retry_delay_grows_exponentially(app: dromos.App) -> None:
    @app.task(backoff=0.5, max_backoff=1000.0)
    def work() -> None: ...

    # the jitter ranges [0.5, 1] x 0.5 * 2**(n-1) of two steps apart never overlap
    for failures in range(1, 8):
        assert max(work.retry_delay(failures) for _ in range(20)) < min(
            work.retry_delay(failures + 2) for _ in range(20)
        )


def test_retry_delay_is_jittered(app: dromos.App) -> None:
    @app.task(backoff=1.0)
    def work() -> None: ...

    delays = [work.retry_delay(3) for _ in range(200)]
    assert min(delays) < 0.6 * 4
    assert max(delays) > 0.9 * 4


def test_retry_delay_is_capped_by_max_backoff(app: dromos.App) -> None:
    @app.task(backoff=1.0, max_backoff=30.0)
    def work() -> None: ...

    for failures in (6, 10, 50, 1000, 5000):
        assert 15.0 <= work.retry_delay(failures) <= 30.0


@pytest.mark.parametrize("priority", [-4096, 4096, 10**9])
def test_priority_outside_the_range_every_broker_orders_is_refused(priority: int) -> None:
    app = dromos.App("t", broker="memory://")

    @app.task
    def f() -> None: ...

    with pytest.raises(dromos.ConfigurationError, match="-4095 to 4095"):
        f.options(priority=priority)
    with pytest.raises(dromos.ConfigurationError, match="out of range"):
        app.task(name="g", priority=priority)(lambda: None)
