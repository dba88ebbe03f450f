"""Group commit of enqueues (dromos._coalesce): concurrent calls share a send, lose nothing."""

from __future__ import annotations

import asyncio

import pytest

from dromos._coalesce import Coalescer
from dromos.brokers.base import EnqueueRequest
from dromos.message import Message, encode, new_job_id, utcnow


def _request() -> EnqueueRequest:
    message = Message(id=new_job_id(), task="t", queue="default", created_at=utcnow())
    return EnqueueRequest(message, encode(message))


class _Recorder:
    """A send that takes a moment, as a round trip does, and records each batch."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.fail = fail
        self.in_flight = self.most_in_flight = 0

    async def __call__(self, requests: list[EnqueueRequest]) -> list[str]:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.01)
        finally:
            self.in_flight -= 1
        if self.fail:
            raise ConnectionError("broker down")
        ids = [r.message.id for r in requests]
        self.batches.append(ids)
        return ids


async def test_concurrent_calls_share_sends_and_each_gets_its_own_ids() -> None:
    send = _Recorder()
    coalescer = Coalescer(send)
    requests = [[_request() for _ in range(3)] for _ in range(64)]
    got = await asyncio.gather(*(coalescer.enqueue(r) for r in requests))
    assert got == [[r.message.id for r in rs] for rs in requests]
    assert sum(len(b) for b in send.batches) == 64 * 3
    assert len(send.batches) <= 2  # not 64: the calls that waited went together


async def test_a_failed_send_fails_every_call_in_it_and_the_next_send_still_runs() -> None:
    send = _Recorder(fail=True)
    coalescer = Coalescer(send)
    results = await asyncio.gather(
        *(coalescer.enqueue([_request()]) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, ConnectionError) for r in results)
    send.fail = False
    request = _request()
    assert await coalescer.enqueue([request]) == [request.message.id]


async def test_cancelling_the_first_caller_does_not_strand_the_others() -> None:
    coalescer = Coalescer(_Recorder())
    first = asyncio.ensure_future(coalescer.enqueue([_request()]))
    await asyncio.sleep(0)  # its send is in flight
    others = [_request() for _ in range(4)]
    waiting = asyncio.gather(*(coalescer.enqueue([r]) for r in others))
    first.cancel()
    assert await asyncio.wait_for(waiting, 5) == [[r.message.id] for r in others]
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_batches_are_bounded_in_size() -> None:
    send = _Recorder()
    coalescer = Coalescer(send)
    await asyncio.gather(*(coalescer.enqueue([_request() for _ in range(300)]) for _ in range(8)))
    assert max(len(b) for b in send.batches) <= 1000
    assert sum(len(b) for b in send.batches) == 2400


async def test_two_sends_overlap_and_the_callers_of_one_go_on_while_the_other_is_out() -> None:
    send = _Recorder()
    coalescer = Coalescer(send)
    done: list[int] = []

    async def caller(k: int) -> None:
        for _ in range(5):  # each call waits for its own send, as `await aenqueue` does
            await coalescer.enqueue([_request()])
        done.append(k)

    await asyncio.gather(*(caller(k) for k in range(64)))
    assert sorted(done) == list(range(64))
    assert sum(len(b) for b in send.batches) == 64 * 5
    assert send.most_in_flight == 2  # never more: a bounded number of connections
    assert len(send.batches) < 64 * 5 / 8  # still shared: a send carries many calls
