"""Completion webhooks end to end on every backend: an in-process worker delivers to a real
HTTP receiver; signatures verify; refused deliveries are retried with the same webhook-id."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable, Iterator

import msgspec
import pytest

import dromos
from dromos import JobState
from dromos.webhooks import WebhookVerificationError, verify
from tests.backends._support import SkewedClock, eventually
from tests.backends.conftest import Workers
from tests.receiver import Receiver

SECRET = "whsec_" + base64.b64encode(b"dromos-test-secret-0123456789").decode()
FAST = (0.1, 0.2, 0.3)  # retry schedule for the tests: seconds, not hours


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def hooked(make_app: Callable[..., dromos.App]) -> dromos.App:
    app = make_app(webhook_secret=SECRET, webhook_backoff=FAST)

    @app.task
    async def double(x: int) -> int:
        return 2 * x

    @app.task(retries=0)
    async def explode() -> None:
        raise ValueError("boom")

    @app.task
    async def later() -> None:
        pass

    return app


async def _delivered(receiver: Receiver, count: int) -> list[dict[str, object]]:
    got = await asyncio.to_thread(receiver.wait_for, count)
    return [verify(d.body, d.headers, SECRET) for d in got]


async def test_a_succeeded_job_posts_a_signed_cloudevent(
    hooked: dromos.App, workers: Workers, receiver: Receiver
) -> None:
    job = await hooked.get_task("double").options(callback_url=receiver.url).aenqueue(21)
    workers.start(hooked)
    assert await job.aresult(timeout=10) == 42
    [event] = await _delivered(receiver, 1)
    assert event["type"] == "dromos.job.succeeded"
    assert event["specversion"] == "1.0"
    assert event["subject"] == job.id
    assert event["source"] == "/dromos/conformance"
    data = event["data"]
    assert isinstance(data, dict)
    assert (data["id"], data["state"], data["result"]) == (job.id, "succeeded", 42)
    [delivery] = receiver.accepted()
    assert delivery.headers["content-type"] == "application/cloudevents+json"
    assert delivery.headers["webhook-id"] == event["id"]

    async def recorded() -> bool:
        return bool((await job.astatus()).webhooks)

    await eventually(recorded, what="the attempt recorded on the job")
    [attempt] = (await job.astatus()).webhooks
    assert (attempt.status, attempt.delivered, attempt.last, attempt.error) == (
        204,
        True,
        True,
        None,
    )


async def test_failed_and_cancelled_jobs_post_their_own_types(
    hooked: dromos.App, workers: Workers, receiver: Receiver
) -> None:
    failing = await hooked.get_task("explode").options(callback_url=receiver.url).aenqueue()
    waiting = await hooked.get_task("later").options(callback_url=receiver.url, delay=60).aenqueue()
    assert await waiting.acancel() is JobState.CANCELLED
    workers.start(hooked)
    with pytest.raises(dromos.JobFailed):
        await failing.aresult(timeout=10)
    events = {e["subject"]: e for e in await _delivered(receiver, 2)}
    assert events[failing.id]["type"] == "dromos.job.failed"
    data = events[failing.id]["data"]
    assert isinstance(data, dict)
    assert isinstance(data["error"], dict)
    assert data["error"]["type"] == "ValueError"
    assert events[waiting.id]["type"] == "dromos.job.cancelled"


async def test_a_refused_delivery_is_retried_with_the_same_webhook_id(
    hooked: dromos.App, workers: Workers, receiver: Receiver
) -> None:
    receiver.refuse = 2
    job = await hooked.get_task("double").options(callback_url=receiver.url).aenqueue(1)
    workers.start(hooked)
    await _delivered(receiver, 1)
    assert [d.status for d in receiver.seen] == [503, 503, 204]
    assert len({d.headers["webhook-id"] for d in receiver.seen}) == 1
    for d in receiver.seen:  # every attempt is signed (each with its own timestamp)
        verify(d.body, d.headers, SECRET)

    async def three() -> bool:
        return len((await job.astatus()).webhooks) == 3

    await eventually(three, what="three attempts recorded")
    attempts = (await job.astatus()).webhooks
    assert [(a.status, a.delivered, a.last) for a in attempts] == [
        (503, False, False), (503, False, False), (204, True, True),
    ]  # fmt: skip
    assert attempts[0].error == "answered 503"


async def test_a_receiver_that_never_answers_is_given_up_on_after_webhook_timeout(
    make_app: Callable[..., dromos.App], workers: Workers
) -> None:
    # It accepts the connection and reads the request, then says nothing: the attempt ends
    # after webhook_timeout in all (within the deliverer's lease) and is tried again.
    handlers: set[asyncio.Task[None]] = set()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await reader.read(65536)
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            pass  # hung up on at the end of the test
        finally:
            writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    app = make_app(webhook_secret=SECRET, webhook_backoff=FAST, webhook_timeout=0.5)
    assert app.webhooks.lease == 11.0

    @app.task
    async def noop() -> None:
        pass

    try:
        job = await noop.options(callback_url=f"http://127.0.0.1:{port}/hook").aenqueue()
        workers.start(app)

        async def two() -> bool:
            return len((await job.astatus()).webhooks) >= 2

        await eventually(two, timeout=20, what="two attempts recorded")
    finally:
        server.close()
        for handler in handlers:
            handler.cancel()
        await asyncio.gather(*handlers)
    first = (await job.astatus()).webhooks[0]
    assert (first.status, first.delivered, first.last) == (None, False, False)
    assert first.error == "no answer within webhook_timeout=0.5 s"


async def _ended_with_a_callback(
    app: dromos.App, workers: Workers, receiver: Receiver
) -> dromos.Job[int]:
    """A job with the receiver as its ``callback_url``, run by a worker to its end."""

    @app.task
    async def one() -> int:
        return 1

    job = await one.options(callback_url=receiver.url).aenqueue()
    workers.start(app)
    await job.aresult(timeout=10)
    return job


@pytest.mark.parametrize("skew", [-30.0, 30.0], ids=["behind", "ahead"])
async def test_a_webhook_retry_waits_its_backoff_on_the_brokers_clock(
    make_app: Callable[..., dromos.App],
    workers: Workers,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    skew: float,
) -> None:
    # RELIABILITY #13: a deliverer 30 s behind retried at once, one 30 s ahead 30 s late.
    monkeypatch.setattr("dromos.webhooks.time", SkewedClock(skew))
    app = make_app(webhook_secret=SECRET, webhook_backoff=(0.6,))
    receiver.refuse = 1
    await _ended_with_a_callback(app, workers, receiver)
    await eventually(lambda: len(receiver.seen) >= 1, what="the first attempt")
    first = time.monotonic()
    await eventually(lambda: len(receiver.seen) >= 2, timeout=20, what="the retry")
    assert 0.5 <= time.monotonic() - first < 10


async def test_retries_stop_after_the_retry_window(
    make_app: Callable[..., dromos.App], workers: Workers, receiver: Receiver
) -> None:
    app = make_app(webhook_secret=SECRET, webhook_backoff=(0.1,), webhook_retry_for=1.5)
    receiver.refuse = 1000
    job = await _ended_with_a_callback(app, workers, receiver)

    async def gave_up() -> bool:
        hooks = (await job.astatus()).webhooks
        return bool(hooks) and hooks[-1].last

    await eventually(gave_up, what="the last attempt")
    attempts = (await job.astatus()).webhooks
    assert 2 <= len(attempts) <= 8
    assert not any(a.delivered for a in attempts)
    await asyncio.sleep(0.3)
    assert len((await job.astatus()).webhooks) == len(attempts)  # no attempt after the last


async def test_a_worker_without_a_secret_retries_until_one_is_configured(
    make_app: Callable[..., dromos.App], workers: Workers, receiver: Receiver
) -> None:
    app = make_app(webhook_backoff=(0.1,))

    @app.task
    async def one() -> int:
        return 1

    job = await one.options(callback_url=receiver.url).aenqueue()
    worker = workers.start(app)
    await job.aresult(timeout=10)

    async def tried() -> bool:
        return bool((await job.astatus()).webhooks)

    await eventually(tried, what="an attempt")
    assert "secret" in ((await job.astatus()).webhooks[0].error or "")
    assert receiver.seen == []  # nothing unsigned was sent
    await workers.stop(worker)
    # The operator adds the secret and restarts the worker: the delivery goes out, signed.
    app.webhooks = msgspec.structs.replace(app.webhooks, secret=SECRET)
    workers.start(app)
    [event] = await _delivered(receiver, 1)
    assert event["subject"] == job.id


async def test_a_callback_url_that_is_not_http_is_refused_at_enqueue(
    make_app: Callable[..., dromos.App],
) -> None:
    app = make_app(webhook_hosts=["hooks.example"])

    @app.task
    async def one() -> int:
        return 1

    for url in ("ftp://hooks.example/x", "hooks.example/x", "http://elsewhere.example/x"):
        with pytest.raises(dromos.ValidationError) as caught:
            await one.options(callback_url=url).aenqueue()
        assert caught.value.errors[0]["loc"] == ("callback_url",)
    assert await (await app.abroker()).jobs() == []  # nothing was queued
    await one.options(callback_url="https://HOOKS.example/x").aenqueue()


def test_verify_refuses_a_tampered_body_a_wrong_secret_and_an_old_timestamp() -> None:
    from dromos.webhooks import sign

    body = json.dumps({"id": "1"}).encode()
    import time

    headers = sign(SECRET, "msg-1", int(time.time()), body)
    assert verify(body, headers, SECRET) == {"id": "1"}
    other = "whsec_" + base64.b64encode(b"another-secret-0123456789").decode()
    bad_cases = [
        (body + b" ", headers, SECRET),
        (body, headers, other),
        (body, sign(SECRET, "msg-1", int(time.time()) - 3600, body), SECRET),
        (body, {k: v for k, v in headers.items() if k != "webhook-id"}, SECRET),
    ]
    for data, hdrs, secret in bad_cases:
        with pytest.raises(WebhookVerificationError):
            verify(data, hdrs, secret)
