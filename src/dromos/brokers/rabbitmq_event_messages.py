"""What an event message on RabbitMQ carries, both ways (``docs/design/rabbitmq.md`` §9.2).

Published by a producer: the CloudEvent as the body, ``message_id`` = the event id, the topic
as the routing key, ``x-dromos-published`` (Unix ms). Put back on a group's queue by dromos (a
retry, a replay, a backfill from the log): the topic in ``x-dromos-topic``, the deliveries so
far in ``x-dromos-attempt``, the error history in ``x-dromos-errors`` (JSON), and
``x-dromos-backfilled`` on a copy from the log. RabbitMQ adds ``x-delivery-count`` (returns of
this message: lease ends, lost consumers) to a message of a quorum queue.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from aiormq.abc import AbstractChannel as RawChannel
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from dromos.brokers.base import EventDeadLetter, EventRecord, Parked
from dromos.job import JobError
from dromos.message import new_job_id

__all__ = [
    "ATTEMPT",
    "BACKFILLED",
    "ERRORS",
    "PUBLISHED",
    "TOPIC",
    "Delivered",
    "delivered",
    "delivery_tag",
    "errors_header",
    "to_exchange",
    "to_group",
]

ATTEMPT, ERRORS, TOPIC = "x-dromos-attempt", "x-dromos-errors", "x-dromos-topic"
BASE = "x-dromos-base"  # the attempt at the last replay: tries are attempt - base
BACKFILLED = "x-dromos-backfilled"  # on an event copied from the log to a group's queue
# Unix ms of the publish, by the publisher's clock: an integer, as AMQP tables carry floats in
# single precision (seconds since 1970 would lose minutes).
PUBLISHED = "x-dromos-published"
_MAX_ERRORS_HEADER = 60_000  # bytes: a content header must fit in one frame (128 KiB)
_errors = msgspec.json.Decoder(list[JobError])
_encode = msgspec.json.Encoder().encode


def errors_header(errors: Sequence[JobError]) -> str:
    """The error history as a header: JSON, tracebacks dropped (all but the last, then all,
    then the oldest entries) while it is larger than a header frame allows."""
    text = _encode(list(errors)).decode()
    trimmed = list(errors)
    while len(text) > _MAX_ERRORS_HEADER and trimmed:
        if any(e.traceback for e in trimmed[:-1]):
            trimmed = [msgspec.structs.replace(e, traceback=None) for e in trimmed[:-1]] + [
                trimmed[-1]
            ]
        elif trimmed[-1].traceback:
            trimmed[-1] = msgspec.structs.replace(trimmed[-1], traceback=None)
        else:
            trimmed = trimmed[1:]
        text = _encode(trimmed).decode()
    return text


@dataclass(eq=False)
class Delivered:
    """A delivered event, buffered until claimed, then held until settled or its lease ends."""

    key: str
    topic: str
    payload: bytes
    attempt: int
    base: int  # the attempt at the event's last replay (0: never replayed)
    returns: int  # x-delivery-count: lease ends and consumer losses so far
    via: str | None  # "binding" (published), "log" (backfilled), None (a retry or replay)
    errors: list[JobError]
    tag: int
    lease_end: float = 0.0  # loop time


def to_exchange(pub: RawChannel, exchange: str, event: EventRecord) -> Coroutine[Any, Any, Any]:
    """Publish an event to the topic exchange, its topic as the routing key."""
    properties = Basic.Properties(
        message_id=event.id, delivery_mode=2, content_type="application/json",
        timestamp=datetime.now(UTC), headers={PUBLISHED: int(time.time() * 1000)},
    )  # fmt: skip
    return pub.basic_publish(
        event.payload, exchange=exchange, routing_key=event.topic,
        properties=properties,
    )  # fmt: skip


def to_group(
    queue: str,
) -> Callable[[RawChannel, Parked | EventDeadLetter], Coroutine[Any, Any, Any]]:
    """How a parked event goes back on its group's queue (default exchange): a retry
    with the deliveries it had, a replayed dead letter with a fresh retry budget (its
    attempts go on, the fencing token, and become its base)."""

    def publish(pub: RawChannel, p: Parked | EventDeadLetter) -> Coroutine[Any, Any, Any]:
        attempt, base = (p.attempt, p.base) if isinstance(p, Parked) else (p.attempts,) * 2
        headers: dict[str, Any] = {
            ATTEMPT: attempt,
            BASE: base,
            TOPIC: p.topic,
            ERRORS: errors_header(p.errors),
        }
        properties = Basic.Properties(
            message_id=p.key, delivery_mode=2, content_type="application/json",
            headers=headers,
        )  # fmt: skip
        return pub.basic_publish(p.payload, exchange="", routing_key=queue, properties=properties)

    return publish


def delivery_tag(raw: DeliveredMessage) -> int:
    delivery = raw.delivery
    if isinstance(delivery, Basic.Deliver | Basic.GetOk):
        return int(delivery.delivery_tag or 0)
    raise TypeError(f"not a delivery: {delivery!r}")


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def delivered(raw: DeliveredMessage) -> Delivered:
    """An event as its message says: a message without an id gets a key of its own (its
    payload, dead-lettered by the runner with the decoder's reason, keeps it apart)."""
    properties = raw.header.properties
    headers = dict(properties.headers or {})
    delivery = raw.delivery
    topic = headers.get(TOPIC)
    via = "log" if headers.get(BACKFILLED) else "binding" if topic is None else None
    if not isinstance(topic, str | bytes):
        topic = getattr(delivery, "routing_key", "") or ""
    returns = _int(headers.get("x-delivery-count"))
    errors: list[JobError] = []
    stored = headers.get(ERRORS)
    if isinstance(stored, str | bytes) and stored:
        with contextlib.suppress(msgspec.DecodeError):
            errors = _errors.decode(stored)
    return Delivered(
        key=str(properties.message_id or "") or f"amqp-{new_job_id()}",
        topic=topic.decode() if isinstance(topic, bytes) else topic,
        payload=raw.body, attempt=_int(headers.get(ATTEMPT)) + returns + 1,
        base=_int(headers.get(BASE)), returns=returns,
        via=via, errors=errors, tag=delivery_tag(raw),
    )  # fmt: skip
