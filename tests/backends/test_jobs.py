"""Jobs through an app and an in-process worker: results, types, progress, order, delays."""

import asyncio
import collections
import dataclasses
import datetime
import threading
import time

import pydantic
import pytest

import dromos
from dromos import JobState
from tests.backends._support import eventually
from tests.backends.conftest import Workers


class Image(pydantic.BaseModel):
    id: int
    width: int = 800


class Thumbnail(pydantic.BaseModel):
    url: str
    size: tuple[int, int]


@dataclasses.dataclass
class Point:
    x: float
    y: float


async def test_an_async_task_succeeds_with_its_result(app: dromos.App, workers: Workers) -> None:
    @app.task
    async def add(a: int, b: int) -> int:
        return a + b

    workers.start(app)
    job = await add.aenqueue(2, 3)
    assert await job.aresult(timeout=10) == 5
    status = await job.astatus()
    assert (status.state, status.result, status.attempts) == (JobState.SUCCEEDED, 5, 1)


async def test_a_plain_task_succeeds_with_its_result(app: dromos.App, workers: Workers) -> None:
    @app.task
    def shout(word: str) -> str:
        assert threading.current_thread() is not threading.main_thread()
        return word.upper()

    workers.start(app)
    job = await shout.aenqueue("hi")
    assert await job.aresult(timeout=10) == "HI"


async def test_a_pydantic_model_comes_back_as_that_model(app: dromos.App, workers: Workers) -> None:
    @app.task
    async def thumbnail(image: Image) -> Thumbnail:
        assert isinstance(image, Image)
        return Thumbnail(url=f"/t/{image.id}.png", size=(image.width // 4, 100))

    workers.start(app)
    job = await thumbnail.aenqueue(Image(id=7, width=400))
    result = await job.aresult(timeout=10)
    assert isinstance(result, Thumbnail)
    assert result == Thumbnail(url="/t/7.png", size=(100, 100))


async def test_a_dataclass_comes_back_as_that_dataclass(app: dromos.App, workers: Workers) -> None:
    @app.task
    def mirror(p: Point) -> Point:
        assert isinstance(p, Point)
        return Point(x=-p.x, y=-p.y)

    workers.start(app)
    job = await mirror.aenqueue(Point(1.5, 2.0))
    result = await job.aresult(timeout=10)
    assert isinstance(result, Point)
    assert result == Point(-1.5, -2.0)


async def test_a_result_handle_made_from_an_id_returns_plain_json(
    app: dromos.App, workers: Workers
) -> None:
    @app.task
    async def thumb() -> Thumbnail:
        return Thumbnail(url="/x", size=(1, 2))

    workers.start(app)
    job = await thumb.aenqueue()
    await job.aresult(timeout=10)
    assert await app.job(job.id).aresult(timeout=1) == {"url": "/x", "size": [1, 2]}


async def test_progress_and_message_are_visible_while_running_and_full_after(
    app: dromos.App, workers: Workers
) -> None:
    proceed = asyncio.Event()

    @app.task
    async def resize() -> str:
        await dromos.current_job().progress(0.5, "resizing")
        await proceed.wait()
        return "done"

    workers.start(app)
    job = await resize.aenqueue()

    async def halfway() -> bool:
        status = await job.astatus()
        return (status.state, status.progress, status.message) == (
            JobState.RUNNING,
            0.5,
            "resizing",
        )

    await eventually(halfway, what="progress 0.5 'resizing'")
    proceed.set()
    await job.aresult(timeout=10)
    assert (await job.astatus()).progress == 1.0


async def test_a_plain_task_reports_progress_from_its_thread(
    app: dromos.App, workers: Workers
) -> None:
    proceed = threading.Event()

    @app.task
    def crunch() -> None:
        dromos.current_job().progress(0.25, "crunching")
        proceed.wait(10)

    workers.start(app)
    job = await crunch.aenqueue()
    try:

        async def reported() -> bool:
            status = await job.astatus()
            return (status.progress, status.message) == (0.25, "crunching")

        await eventually(reported, what="progress from the worker thread")
    finally:
        proceed.set()
    await job.aresult(timeout=10)


async def test_a_delayed_job_runs_after_its_delay_and_not_before(
    app: dromos.App, workers: Workers
) -> None:
    ran_at: list[float] = []

    @app.task
    async def later() -> None:
        ran_at.append(time.time())

    workers.start(app)
    job = await later.options(delay=0.5).aenqueue()
    status = await job.astatus()
    assert status.state is JobState.SCHEDULED
    assert status.eta is not None
    await job.aresult(timeout=10)
    assert len(ran_at) == 1
    assert ran_at[0] >= status.eta.timestamp()


@pytest.mark.parametrize("skew", [3600.0, -3600.0], ids=["ahead", "behind"])
async def test_a_delay_counts_from_the_brokers_clock_whatever_the_producers_says(
    app: dromos.App, workers: Workers, monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    # The producer's clock an hour off, the broker's this machine's: a delay of a second must
    # become neither an hour and a second nor nothing at all.
    import dromos.app as app_module

    real = app_module.utcnow
    monkeypatch.setattr(app_module, "utcnow", lambda: real() + datetime.timedelta(seconds=skew))

    @app.task
    async def later() -> str:
        return "done"

    before = time.time()
    job = await later.options(delay=1.0).aenqueue()
    after = time.time()
    status = await job.astatus()
    assert status.state is JobState.SCHEDULED
    assert status.eta is not None
    assert before + 0.99 <= status.eta.timestamp() <= after + 1.01
    workers.start(app)
    assert await job.aresult(timeout=20) == "done"


async def test_a_job_with_an_eta_runs_at_its_eta(app: dromos.App, workers: Workers) -> None:
    from tests.backends._support import utc_in

    ran_at: list[float] = []

    @app.task
    async def at() -> None:
        ran_at.append(time.time())

    workers.start(app)
    eta = utc_in(0.3)
    job = await at.options(eta=eta).aenqueue()
    await job.aresult(timeout=10)
    assert ran_at[0] >= eta.timestamp()


async def test_the_worker_runs_higher_priorities_first(app: dromos.App, workers: Workers) -> None:
    order: list[str] = []

    @app.task
    async def step(name: str) -> None:
        order.append(name)

    jobs = [
        await step.options(priority=p).aenqueue(name)
        for name, p in (("low", 0), ("high", 9), ("mid", 5), ("high2", 9))
    ]
    workers.start(app, concurrency=1, prefetch=0)
    for job in jobs:
        await job.aresult(timeout=10)
    assert order == ["high", "high2", "mid", "low"]


async def test_a_job_longer_than_its_lease_completes_once_thanks_to_heartbeats(
    make_app: "collections.abc.Callable[..., dromos.App]", workers: Workers
) -> None:
    app = make_app(lease=1.0)
    runs: list[int] = []

    @app.task
    async def long() -> str:
        runs.append(dromos.current_job().attempt)
        await asyncio.sleep(2.2)
        return "ok"

    workers.start(app)
    job = await long.aenqueue()
    assert await job.aresult(timeout=20) == "ok"
    assert runs == [1]
    status = await job.astatus()
    assert (status.attempts, status.errors) == (1, [])


async def test_two_workers_on_one_broker_run_each_job_exactly_once(
    app: dromos.App, workers: Workers
) -> None:
    ledger: list[str] = []

    @app.task
    async def note(i: int) -> int:
        ledger.append(dromos.current_job().id)
        await asyncio.sleep(0)
        return i

    first = workers.start(app, concurrency=4)
    second = workers.start(app, concurrency=4)
    jobs = await note.aenqueue_many([(i,) for i in range(200)])
    results = await asyncio.gather(*(j.aresult(timeout=30) for j in jobs))
    assert results == list(range(200))
    counts = collections.Counter(ledger)
    assert set(counts) == {j.id for j in jobs}
    assert set(counts.values()) == {1}
    await workers.stop(first)
    await workers.stop(second)
    assert first.counts["succeeded"] + second.counts["succeeded"] == 200


async def test_a_job_enqueued_after_the_only_worker_stopped_waits_queued(
    app: dromos.App, workers: Workers
) -> None:
    # An idle worker may be handed new jobs by the broker (Redis: leased at enqueue); once
    # it has stopped, nothing more is leased to it: a later job waits for the next worker.
    ran: list[int] = []

    @app.task
    async def note(n: int) -> int:
        ran.append(n)
        return n

    worker = workers.start(app, concurrency=2)
    for n in range(6):
        assert await (await note.aenqueue(n)).aresult(timeout=10) == n
    await workers.stop(worker)
    job = await note.aenqueue(99)
    status = await job.astatus()
    assert status.state is JobState.QUEUED
    assert ran == [0, 1, 2, 3, 4, 5]
    workers.start(app, concurrency=2)
    assert await job.aresult(timeout=10) == 99


async def test_stop_hands_back_jobs_not_started_and_finishes_running_ones(
    app: dromos.App, workers: Workers
) -> None:
    started = asyncio.Event()
    proceed = asyncio.Event()
    ran: list[int] = []

    @app.task
    async def work(i: int) -> int:
        ran.append(i)
        started.set()
        await proceed.wait()
        return i

    jobs = await work.aenqueue_many([(i,) for i in range(5)])
    worker = workers.start(app, concurrency=1, prefetch=4)

    async def all_claimed() -> bool:
        states = [(await j.astatus()).state for j in jobs]
        return states == [JobState.RUNNING] * len(jobs)

    await asyncio.wait_for(started.wait(), 10)
    await eventually(all_claimed, what="every job claimed (one running, four prefetched)")
    stopping = asyncio.create_task(workers.stop(worker))
    await asyncio.sleep(0.3)  # let the worker notice the stop before the running job ends
    proceed.set()
    await asyncio.wait_for(stopping, 10)
    assert ran == [0]
    assert await jobs[0].aresult(timeout=1) == 0
    for job in jobs[1:]:
        status = await job.astatus()
        assert (status.state, status.errors) == (JobState.QUEUED, [])
    assert worker.counts["released"] == 4


async def test_jobs_handed_back_at_stop_run_on_the_next_worker(
    app: dromos.App, workers: Workers
) -> None:
    proceed = asyncio.Event()

    @app.task
    async def work(i: int) -> int:
        await proceed.wait()
        return i

    jobs = await work.aenqueue_many([(i,) for i in range(3)])
    worker = workers.start(app, concurrency=1, prefetch=2)

    async def all_claimed() -> bool:
        states = [(await j.astatus()).state for j in jobs]
        return states == [JobState.RUNNING] * len(jobs)

    await eventually(all_claimed, what="every job claimed")
    proceed.set()
    await workers.stop(worker)
    workers.start(app)
    assert [await j.aresult(timeout=10) for j in jobs] == [0, 1, 2]


async def test_concurrent_enqueues_sharing_sends_each_get_their_own_jobs(
    app: dromos.App, workers: Workers
) -> None:
    # 64 coroutines that each await their enqueues one by one: the group commit carries many
    # calls per send, with two sends in flight at once; every call gets back its own job, and
    # every job is stored once and runs with its own arguments.
    @app.task
    async def echo(i: int) -> int:
        return i

    async def caller(k: int) -> list[tuple[int, dromos.Job[int]]]:
        return [(i, await echo.aenqueue(i)) for i in range(k, 320, 64)]

    made = [pair for got in await asyncio.gather(*(caller(k) for k in range(64))) for pair in got]
    assert sorted(i for i, _ in made) == list(range(320))
    assert len({job.id for _, job in made}) == 320
    workers.start(app, concurrency=16)
    for i, job in made:
        assert await job.aresult(timeout=30) == i


async def test_two_thousand_callers_enqueue_and_wait_at_once_each_get_their_result(
    app: dromos.App, workers: Workers
) -> None:
    # A gateway under load: every request enqueues a job and waits for its result
    # (``Prefer: wait``), all at once, more of them than the broker client has connections.
    @app.task
    async def echo(i: int) -> int:
        return i

    workers.start(app, concurrency=64)

    async def request(i: int) -> int:
        job = await echo.aenqueue(i)
        return await job.aresult(timeout=60)

    answers = await asyncio.gather(*(request(i) for i in range(2_000)), return_exceptions=True)
    failed = [a for a in answers if isinstance(a, BaseException)]
    assert failed == [], f"{len(failed)} of 2,000 failed, the first: {failed[0]!r}"
    assert answers == list(range(2_000))


async def test_a_job_with_megabytes_of_arguments_and_result_round_trips(
    app: dromos.App, workers: Workers
) -> None:
    # A few MiB each way (a document, an image as base64): stored, delivered, run and
    # returned whole on every broker, not truncated or refused on the way.
    @app.task
    async def reverse(text: str) -> str:
        return text[::-1]

    text = "".join(chr(0x41 + i % 26) for i in range(4_000_000)) + "é"
    workers.start(app)
    job = await reverse.aenqueue(text)
    assert await job.aresult(timeout=60) == text[::-1]


async def test_queues_with_any_name_carry_their_jobs(app: dromos.App, workers: Workers) -> None:
    # A queue name is the user's text: spaces, punctuation and non-ASCII work on every broker
    # (RabbitMQ's client refused '*', '+' and 'é' in a queue's name until they were escaped).
    names = ["exports *", "émails", "a+b", "a+2B", "x:y#z", "reports/daily, eu"]
    jobs = []
    for name in names:

        @app.task(name=f"echo {name}", queue=name)
        async def echo(i: int) -> int:
            return i

        jobs.append(await echo.aenqueue(len(jobs)))
    workers.start(app, queues=names)
    assert [await job.aresult(timeout=30) for job in jobs] == list(range(len(names)))
    assert {s.queue for s in await (await app.abroker()).jobs(limit=100)} == set(names)


async def test_a_blocking_wait_inside_an_async_task_is_refused_with_the_async_way(
    app: dromos.App, workers: Workers
) -> None:
    # job.result() in an async task would stop the worker's event loop for the whole wait,
    # and the job waited for may need that very worker. await job.aresult() is the way.
    @app.task
    async def double(i: int) -> int:
        return 2 * i

    @app.task(retries=0)
    async def blocking(i: int) -> int:
        return double.enqueue(i).result(timeout=5)

    @app.task(retries=0)
    async def awaiting(i: int) -> int:
        return await (await double.aenqueue(i)).aresult(timeout=30)

    workers.start(app, concurrency=4)  # a slot for the job waited for
    with pytest.raises(dromos.JobFailed, match=r"await job\.aresult\(\)"):
        await (await blocking.aenqueue(1)).aresult(timeout=30)
    assert await (await awaiting.aenqueue(4)).aresult(timeout=30) == 8


async def test_a_progress_message_of_megabytes_is_stored_cut(
    app: dromos.App, workers: Workers
) -> None:
    @app.task
    async def chatty() -> None:
        await dromos.current_job().progress(1.0, "y" * 1_000_000)

    workers.start(app)
    job = await chatty.aenqueue()
    await job.aresult(timeout=30)
    status = await job.astatus()
    assert status is not None
    assert status.message is not None
    assert status.message.startswith("y" * 16_000)
    assert status.message.endswith("(984,000 more characters)")
