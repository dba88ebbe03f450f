"""Chains: each step gets the previous result; a failure stops the chain and says where."""

from __future__ import annotations

import pytest

import dromos
from dromos.chain import next_step
from dromos.message import decode
from tests.backends.conftest import Workers


def _tasks(app: dromos.App) -> tuple[dromos.Task, dromos.Task, dromos.Task]:  # type: ignore[type-arg]
    @app.task(retries=0)
    async def fetch(url: str) -> str:
        return f"<{url}>"

    @app.task(retries=0)
    async def transform(text: str, upper: bool = False) -> int:
        if text == "<bad>":
            raise ValueError("cannot transform this")
        return len(text.upper() if upper else text)

    @app.task(retries=0)
    async def load(size: int, table: str) -> str:
        return f"{size} into {table}"

    return fetch, transform, load


async def test_each_step_gets_the_result_before_it(app: dromos.App, workers: Workers) -> None:
    fetch, transform, load = _tasks(app)
    chain = fetch.call("page") | transform.step(upper=True) | load.step("pages")
    handle = await chain.aenqueue()
    assert len(handle.jobs) == 3
    assert handle.id == handle.jobs[0].id
    status = await handle.astatus()
    assert status.steps[1] is None  # the later steps exist once their turn comes
    workers.start(app)
    assert await handle.aresult(timeout=10) == "6 into pages"
    status = await handle.astatus()
    assert status.done
    assert status.failed_step is None
    assert [s.result for s in status.steps if s] == ["<page>", 6, "6 into pages"]


async def test_a_failing_step_stops_the_chain_and_says_where(
    app: dromos.App, workers: Workers
) -> None:
    fetch, transform, load = _tasks(app)
    handle = await app.chain(fetch.call("bad"), transform.step(), load.step("t")).aenqueue()
    workers.start(app)
    with pytest.raises(dromos.JobFailed) as failed:
        await handle.aresult(timeout=10)
    assert (failed.value.status.task, failed.value.status.id) == ("transform", handle.jobs[1].id)
    status = await handle.astatus()
    assert status.failed_step == 1
    assert status.steps[2] is None  # never queued
    assert not status.done


async def test_a_step_whose_arguments_do_not_fit_is_dead_lettered(
    app: dromos.App, workers: Workers
) -> None:
    fetch, _transform, load = _tasks(app)
    handle = await (fetch.call("x") | load.step("t")).aenqueue()  # load wants an int first
    workers.start(app)
    with pytest.raises(dromos.JobFailed) as failed:
        await handle.aresult(timeout=10)
    assert failed.value.status.error is not None
    assert failed.value.status.error.type == "InvalidArguments"
    assert (await handle.astatus()).failed_step == 1


async def test_the_next_step_is_queued_once_even_if_queued_twice(app: dromos.App) -> None:
    fetch, transform, load = _tasks(app)
    chain = fetch.call("p") | transform.step() | load.step("t")
    handle = await chain.aenqueue()
    broker = await app.abroker()
    [delivery] = await broker.claim(["default"], 1, 30.0)
    first = decode(delivery.payload)
    step = next_step(app, first, b'"<p>"')
    assert step is not None
    # A worker that died after queueing the next step and before settling: the rerun queues
    # it again, and its idempotency key keeps it one job, with the id chosen up front.
    assert await broker.enqueue([step]) == [handle.jobs[1].id]
    again = next_step(app, first, b'"<p>"')
    assert again is not None
    assert await broker.enqueue([again]) == [handle.jobs[1].id]
    queued = [s for s in await broker.jobs() if s.task == "transform"]
    assert len(queued) == 1
    assert decode((await broker.claim(["default"], 1, 30.0))[0].payload).args == ["<p>"]


def test_chains_are_checked_when_built(app: dromos.App) -> None:
    fetch, transform, _load = _tasks(app)
    with pytest.raises(dromos.ConfigurationError, match="two steps"):
        app.chain(fetch.call("x"))
    with pytest.raises(dromos.ConfigurationError, match="only queue"):
        _ = fetch.call("x") | transform.options(delay=5).step()
    with pytest.raises(dromos.ValidationError):
        (fetch.call(123) | transform.step()).enqueue()  # the first step is checked at once
