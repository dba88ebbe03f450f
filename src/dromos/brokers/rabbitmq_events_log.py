"""The event log of the RabbitMQ broker: the names of the event bus, and the stream that lets
a new group start at ``earliest`` or at a time (``docs/design/rabbitmq.md`` §9.3).

A group's quorum queue only receives what is published after it was bound. So every event
also goes to ``<ns>.events.log``, a stream bound to the exchange with ``#`` and trimmed by
``x-max-age`` = ``event_retention``. A group joining at ``earliest`` or at a time gets its
past from there: a marker is appended to the stream, the queue is bound, a second marker is
appended, and the stream is read from the start asked for up to the second marker, each event
whose topic matches the group's patterns (and, for a time, that was published at or after it)
republished to the group's queue. An event between the two markers may have reached the queue
through the binding as well: the ids of that window are returned, and the joining process's
claims drop the second copy of such an event (a copy claimed in another process is delivered
twice: at least once, documented). The publish time is the ``x-dromos-published`` header
(the publisher's clock), else the AMQP timestamp.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from aio_pika.abc import AbstractConnection
from aiormq.abc import AbstractChannel as RawChannel
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from dromos.brokers.rabbitmq_event_messages import ATTEMPT, BACKFILLED, PUBLISHED, TOPIC
from dromos.brokers.rabbitmq_url import AmqpSettings, amqp_name
from dromos.errors import BrokerError, ConfigurationError
from dromos.events.topics import matches_any
from dromos.message import new_job_id

__all__ = ["EventLog", "LogNames"]

_MARKER = "x-dromos-marker"
_SEGMENT = 8_000_000  # bytes per stream segment: trimming keeps at most one more
_READ_AHEAD = 500  # stream deliveries in flight (a stream consumer needs a prefetch)
_CHUNK = 256  # republished events in flight
_MAX_NAME = 255
_T = TypeVar("_T")


@dataclass(frozen=True)
class LogNames:
    """The names of the event bus, all under ``prefix``."""

    prefix: str

    @property
    def exchange(self) -> str:  # topic exchange, routing key = the event's topic
        return f"{self.prefix}.events"

    @property
    def log(self) -> str:  # stream bound with '#': every event, for starts in the past
        return f"{self.prefix}.events.log"

    def group(self, group: str) -> str:  # quorum queue of one consumer group
        name = f"{self.prefix}.g.{amqp_name(group)}"
        if len(name.encode()) > _MAX_NAME:
            raise ConfigurationError(
                f"group {group!r} is too long for RabbitMQ: {name!r} is over 255 bytes"
            )
        return name


class EventLog:
    """The stream ``<ns>.events.log``: its arguments, and the backfill of a new group."""

    def __init__(self, settings: AmqpSettings, names: LogNames, retention: float) -> None:
        self.settings, self.names, self.retention = settings, names, retention

    def arguments(self) -> dict[str, Any]:
        return {
            "x-queue-type": "stream",
            "x-max-age": f"{max(1, math.ceil(min(self.retention, 1e11)))}s",
            "x-stream-max-segment-size-bytes": _SEGMENT,
        }

    async def mark(self, connection: AbstractConnection) -> str:
        """Append a marker to the log (before a new group's queue is bound); its id."""
        return await self._on_channel(connection, "marking the event log", self._mark)

    async def backfill(
        self,
        connection: AbstractConnection,
        queue: str,
        patterns: Sequence[str],
        start: object,
        bound_after: str,
    ) -> set[str]:
        """Republish to ``queue`` the logged events that match ``patterns`` from ``start``
        (``"earliest"`` or a Unix time) up to now. ``bound_after`` is the marker appended just
        before the queue was bound: the events after it may have reached the queue through
        its bindings too; their ids are returned (the window the claims deduplicate)."""
        since = None if start == "earliest" else float(str(start))

        async def fill(raw: RawChannel) -> set[str]:
            return await self._backfill(raw, queue, patterns, since, bound_after)

        return await self._on_channel(connection, f"filling {queue} from the event log", fill)

    async def _on_channel(
        self,
        connection: AbstractConnection,
        doing: str,
        work: Callable[[RawChannel], Coroutine[Any, Any, _T]],
    ) -> _T:
        try:
            channel = await connection.channel(publisher_confirms=True)
            raw = await channel.get_underlay_channel()
        except Exception as exc:
            raise self._error(doing, exc) from exc
        try:
            async with asyncio.timeout(max(30.0, self.settings.publish_timeout * 3)):
                return await work(raw)
        except BrokerError:
            raise
        except Exception as exc:
            raise self._error(doing, exc) from exc
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(raw.close(), 5.0)

    async def _mark(self, raw: RawChannel) -> str:
        marker = f"marker-{new_job_id()}"
        confirm = await raw.basic_publish(
            b"", exchange="", routing_key=self.names.log,
            properties=Basic.Properties(message_id=marker, delivery_mode=2,
                                        headers={_MARKER: 1}),
        )  # fmt: skip
        if not isinstance(confirm, Basic.Ack):
            raise BrokerError(f"appending a marker to {self.names.log} was refused")
        return marker

    async def _backfill(
        self,
        raw: RawChannel,
        queue: str,
        patterns: Sequence[str],
        since: float | None,
        bound_after: str,
    ) -> set[str]:
        marker = await self._mark(raw)
        await raw.basic_qos(prefetch_count=_READ_AHEAD)
        inbox: asyncio.Queue[DeliveredMessage] = asyncio.Queue()
        # A timestamp offset is whole seconds, and a stream attaches at a chunk: start a second
        # early and skip by the publish time.
        offset: Any = "first"
        if since is not None:
            offset = datetime.fromtimestamp(max(0, math.floor(since) - 1), UTC)
        await raw.basic_consume(self.names.log, inbox.put, arguments={"x-stream-offset": offset})
        batch: list[DeliveredMessage] = []
        window: set[str] = set()
        binding = False  # past the marker of the binding: in the window
        while True:
            message = await inbox.get()
            delivery = message.delivery
            if isinstance(delivery, Basic.Deliver):
                await raw.basic_ack(int(delivery.delivery_tag or 0), wait=False)
            properties = message.header.properties
            headers = properties.headers or {}
            if properties.message_id == marker:
                break
            binding = binding or properties.message_id == bound_after
            topic = str(getattr(delivery, "routing_key", "") or "")
            if _MARKER in headers or not matches_any(patterns, topic):
                continue
            if since is not None and _published(headers, properties) < since:
                continue
            batch.append(message)
            if binding:
                window.add(str(properties.message_id or ""))
            if len(batch) >= _CHUNK:
                await self._republish(raw, queue, batch)
                batch = []
        await self._republish(raw, queue, batch)
        return window

    async def _republish(self, raw: RawChannel, queue: str, batch: list[DeliveredMessage]) -> None:
        if not batch:
            return
        confirms = await asyncio.gather(*(
            raw.basic_publish(
                m.body, exchange="", routing_key=queue,
                properties=Basic.Properties(
                    message_id=m.header.properties.message_id, delivery_mode=2,
                    content_type=m.header.properties.content_type,
                    headers={TOPIC: str(getattr(m.delivery, "routing_key", "")), ATTEMPT: 0,
                             BACKFILLED: 1},
                ),
            )
            for m in batch
        ))  # fmt: skip
        if not all(isinstance(c, Basic.Ack) for c in confirms):
            raise BrokerError(f"copying events into {queue}: RabbitMQ refused some")

    def _error(self, doing: str, exc: BaseException) -> BrokerError:
        why = str(exc) or type(exc).__name__
        return BrokerError(f"RabbitMQ at {self.settings.safe_url}: {doing} failed: {why}")


def _published(headers: dict[str, Any], properties: Basic.Properties) -> float:
    value = headers.get(PUBLISHED)
    if isinstance(value, int) and not isinstance(value, bool):
        return value / 1000
    stamp = properties.timestamp
    if isinstance(stamp, datetime):
        return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()
    return math.inf  # no time known: kept
