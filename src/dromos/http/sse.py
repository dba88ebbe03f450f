"""``GET /v1/jobs/{id}/events``: a job's changes as Server-Sent Events, until it ends.

Each change of state is an event named after the new state (``event: running``); a change
of progress or message within a state is ``event: progress``. Every event's ``data`` is the
whole status JSON (as ``GET /v1/jobs/{id}`` answers), and its ``id`` counts the events of the
stream. The first event is the status at connection time; the stream ends after the event of
a terminal state (succeeded, failed, cancelled). A reconnecting client (``Last-Event-ID``)
simply gets the current status first: events are snapshots, so none needs replaying.

How it learns of changes: brokers push the *end* of a job (``Broker.wait``), not each
progress report, so the stream waits on ``wait`` for at most a short interval and reads the
status in between. The interval starts at 50 ms after every change and doubles up to 500 ms
while nothing changes: a busy job is followed closely, an idle one costs two reads a second,
and the end is seen at once. A comment line every 15 s of silence keeps proxies from closing
the connection.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import msgspec

from dromos.brokers.base import Broker
from dromos.job import JobStatus

__all__ = ["FIRST_POLL", "KEEPALIVE", "MAX_POLL", "format_event", "job_events"]

FIRST_POLL = 0.05
MAX_POLL = 0.5
KEEPALIVE = 15.0
#: Tells the browser's EventSource to reconnect after 1 s if the connection drops.
_RETRY = b"retry: 1000\n\n"
_encode = msgspec.json.encode


def format_event(event: str, data: bytes, event_id: int) -> bytes:
    """One SSE event (the data is one line of JSON, so needs no splitting)."""
    return b"event: %s\nid: %d\ndata: %s\n\n" % (event.encode(), event_id, data)


def _key(status: JobStatus) -> tuple[object, ...]:
    """What makes two snapshots different events."""
    return (status.state, status.progress, status.message, status.attempts,
            status.cancel_requested)  # fmt: skip


async def job_events(broker: Broker, first: JobStatus, start_id: int = 0) -> AsyncIterator[bytes]:
    """The stream's bytes, from the status ``first`` until the job is in a terminal state."""
    yield _RETRY
    status: JobStatus | None = first
    last: tuple[object, ...] | None = None
    last_state = None
    event_id = start_id
    poll = FIRST_POLL
    quiet_since = time.monotonic()
    while status is not None:
        key = _key(status)
        if key != last:
            event_id += 1
            name = status.state.value if status.state != last_state else "progress"
            yield format_event(name, _encode(status), event_id)
            last, last_state = key, status.state
            poll, quiet_since = FIRST_POLL, time.monotonic()
        elif time.monotonic() - quiet_since >= KEEPALIVE:
            yield b": keep-alive\n\n"
            quiet_since = time.monotonic()
        if status.state.terminal:
            return
        # Returns the status as soon as the job ends; None when the interval passed first.
        ended = await broker.wait(status.id, poll)
        status = ended if ended is not None else await broker.status(status.id)
        poll = min(poll * 2, MAX_POLL)
