"""The AMQP half of the RabbitMQ broker designed in ``docs/design/rabbitmq.md``.

Nothing of the state store is here: this module only moves messages. It is used by nothing
yet; the broker (``rabbitmq.py``, step 5 of the design's plan) builds on it.

- **URL** (:func:`parse_url`): ``amqp://user:pass@host:port/vhost?prefix=dromos&
  publish_timeout=10&prefetch=16`` (``amqps://`` for TLS). Every name begins with the prefix.
- **One connection per event loop** (like ``RedisBroker``'s per-loop state), with a
  publisher channel with confirms, and a consumer channel per band of each queue consumed,
  with ``basic.qos(prefetch)`` (a channel each, so that the barrier's gets run at once).
  Declarations are lazy and cached per connection.
- **Names** (§2): the ``<ns>.jobs`` direct exchange; per dromos queue three quorum queues
  ``<ns>.q.<queue>.high|normal|low`` (priority > 0, = 0, < 0), bound with the routing key
  ``<queue>.<band>``, dead-lettering at least once to the ``<ns>.dlx`` fanout and its
  ``<ns>.dead`` queue after 20 deliveries.
- **Publish** (:meth:`AmqpTransport.publish`): a batch is published pipelined (256 in
  flight), every confirm awaited; a nack, a return (unroutable) or a lost connection retries
  what was not confirmed, through reconnection, until ``publish_timeout`` passed without a
  confirm, then :class:`BrokerError`.
- **Consume** (§4.2): deliveries go into a local buffer in arrival order. The claim's helpers:
  :meth:`~AmqpTransport.barrier` (one ``basic.get`` per band whose buffer is short: its answer
  comes after every delivery sent before it), :meth:`~AmqpTransport.take` (the buffered
  messages ordered by priority, then job id), :meth:`~AmqpTransport.ack`,
  :meth:`~AmqpTransport.nack_all` (shutdown) and :meth:`~AmqpTransport.wait`.
- **Reconnection** (§8): any loss of the connection, of a channel, or a consumer cancelled by
  the server, drops the connection whole; one task per loop rebuilds it (backoff 0.1 s doubling
  to 5 s, ±20 % jitter) and consumes again. The buffer is dropped at the loss (the server
  requeued those messages); a claim under way raises :class:`BrokerError`. Not
  ``connect_robust``: its hidden re-declarations and re-consumption would keep stale buffers
  and delivery tags.

The hot paths (publish, consume, get, ack) use aio-pika's underlying aiormq channel: its
consumer callback runs in the task aiormq creates per delivery, before the reader handles
the next frame's waiters, which the barrier needs (aio-pika's own ``consume`` adds a second
task in between); and a publish needs no per-message wrapper object there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import aio_pika
import pamqp.exceptions
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.abc import AbstractChannel as RawChannel
from aiormq.abc import DeliveredMessage
from aiormq.exceptions import AMQPError
from pamqp.commands import Basic

from dromos._loop import cancel_and_wait, close_per_loop
from dromos.brokers.rabbitmq_confirms import Deadline, publish_confirmed
from dromos.brokers.rabbitmq_url import (
    BANDS,
    AmqpNames,
    AmqpSettings,
    Name,
    band_of,
    checked_prefetch,
    parse_url,
)
from dromos.errors import BrokerError

__all__ = [
    "BANDS",
    "AmqpNames",
    "AmqpSettings",
    "AmqpTransport",
    "Message",
    "Name",
    "Outgoing",
    "band_of",
    "parse_url",
]

log = logging.getLogger("dromos.rabbitmq")

_DECLARED: dict[str, set[Name]] = {}  # prefix -> the names declared under it (teardown)
_BAND_PRIORITY = {"high": 1, "normal": 0, "low": -1}  # for a message without the header
PRIORITY_HEADER = "x-dromos-priority"
_DELIVERY_LIMIT = 20
_CONNECT_TIMEOUT = 10.0
_RPC_TIMEOUT = 30.0  # a declaration, consume or get that takes longer means a dead link
_BACKOFF_FIRST, _BACKOFF_MAX, _JITTER = 0.1, 5.0, 0.2
# Errors that mean "this connection or channel is gone or refused": retried or reported as
# BrokerError. ChannelInvalidStateError is a RuntimeError.
_FAILURES: tuple[type[BaseException], ...] = (
    AMQPError,
    ConnectionError,
    OSError,
    RuntimeError,
    TimeoutError,
    pamqp.exceptions.PAMQPException,
)


class Outgoing(NamedTuple):
    """A job message to publish: its band follows from ``priority``."""

    job_id: str  # the AMQP message_id
    queue: str  # the dromos queue
    priority: int  # sent as the x-dromos-priority header (-4,095 to 4,095)
    body: bytes  # the envelope, as it is


@dataclass(eq=False)
class Message:
    """A delivered job message, buffered until taken, then held until acked."""

    queue: str  # the dromos queue
    band: str
    job_id: str  # message_id ("" if the producer set none)
    priority: int  # x-dromos-priority, or the band's default (1, 0, -1) without it
    body: bytes
    headers: dict[str, Any]
    redelivered: bool
    tag: int = field(repr=False)  # the delivery tag on its consumer channel
    link: object = field(repr=False)  # the connection it came on: acks of a lost one are moot
    consumer: object = field(default=None, repr=False)  # its channel (a _Consumer)

    @property
    def held_key(self) -> tuple[str, str, int]:
        """Delivery tags count per channel, and each band has its own."""
        return (self.queue, self.band, self.tag)


def _priority(headers: dict[str, Any], band: str) -> int:
    value = headers.get(PRIORITY_HEADER)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return _BAND_PRIORITY[band]


def _delivery_tag(raw: DeliveredMessage) -> int:
    delivery = raw.delivery
    if isinstance(delivery, Basic.Deliver | Basic.GetOk):
        return int(delivery.delivery_tag or 0)
    raise TypeError(f"not a delivery: {delivery!r}")


# -- per loop ---------------------------------------------------------------------------------
class _Consumer:
    """The channel of one band of one queue, with its consumer: a channel each, so that the
    barrier's ``basic.get`` of every band run at once (aiormq answers one RPC at a time per
    channel, and a get orders only the deliveries of its own channel)."""

    def __init__(self, raw: RawChannel) -> None:
        self.raw = raw
        self.tag: str | None = None  # the consumer tag, once consuming
        self.unacked: set[int] = set()  # delivery tags not yet acked or nacked
        self.cancelled = False  # being cancelled (nack_all): its deliveries are not buffered


class _Link:
    """One connection with its channels; replaced whole at any loss."""

    def __init__(self, connection: AbstractConnection) -> None:
        self.connection = connection
        self.publisher: AbstractChannel | None = None
        self.pub: RawChannel | None = None  # the publisher's aiormq channel (confirms)
        self.declared: set[str] = set()  # names declared on this connection
        self.consumers: dict[tuple[str, str], _Consumer] = {}  # (queue, band) -> its channel
        self.declaring = asyncio.Lock()
        self.lost = False


class _LoopState:
    """What one event loop holds: the current link, the buffer, and the rebuild task."""

    def __init__(self) -> None:
        self.link: _Link | None = None
        self.up = asyncio.Event()  # set while ``link`` is usable
        self.rebuilding: asyncio.Task[None] | None = None
        self.last_error: BaseException | None = None
        self.consuming: set[str] = set()  # dromos queues to consume again after a loss
        self.buffers: dict[tuple[str, str], dict[int, Message]] = {}  # arrival order
        self.held: dict[tuple[str, str, int], Message] = {}  # taken, not yet acked
        self.waiting = 0  # callers waiting for a link: the rebuild goes on while any do
        self.losses = 0
        self.closed = False
        self.closing: set[asyncio.Task[None]] = set()  # connections being closed after a loss
        self.pulse: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake(self) -> None:
        """Wake every :meth:`AmqpTransport.wait` of this loop (a delivery or a loss)."""
        if not self.pulse.done():
            self.pulse.set_result(None)
        self.pulse = asyncio.get_running_loop().create_future()


class AmqpTransport:
    """Connections, declarations, confirmed publishes and the consumer buffer; see the
    module docstring. ``prefetch`` overrides the URL's (a worker's own prefetch)."""

    def __init__(self, url: str, *, prefetch: int | None = None) -> None:
        self.settings = parse_url(url)
        if prefetch is not None:
            self.settings = replace(self.settings, prefetch=checked_prefetch(prefetch))
        self.names = AmqpNames(self.settings.prefix)
        self._named: set[str] = set()  # dromos queues whose names were checked (check_names)
        # Everything declared under this prefix by any transport of this process, for teardown.
        self.declared: set[Name] = _DECLARED.setdefault(self.settings.prefix, set())
        self._loops: dict[asyncio.AbstractEventLoop, _LoopState] = {}

    def check_names(self, queues: Iterable[str]) -> None:
        """Raise ConfigurationError now for a queue whose names cannot exist on the server
        (over 255 bytes), before anything is stored or sent: a failed declaration would
        otherwise end the background connection and leave callers waiting it out."""
        for queue in queues:
            if queue not in self._named:
                self.names.check(queue)
                self._named.add(queue)

    # -- errors and state -------------------------------------------------------------------
    def _error(self, doing: str, exc: BaseException | None) -> BrokerError:
        why = (str(exc) or type(exc).__name__) if exc is not None else "no answer"
        if self.settings.password:
            why = why.replace(self.settings.password, "***")
        return BrokerError(f"RabbitMQ at {self.settings.safe_url}: {doing} failed: {why}")

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            state = self._loops[loop] = _LoopState()
        return state

    def losses(self) -> int:
        """How many times this loop's connection was lost (for tests and logs)."""
        return self._state().losses

    # -- connection -------------------------------------------------------------------------
    async def _link(self, state: _LoopState, deadline: float) -> _Link:
        """The loop's link, waiting for the rebuild until ``deadline`` (loop time)."""
        link = state.link
        if link is not None:
            return link
        state.waiting += 1
        try:
            async with asyncio.timeout_at(deadline):
                while state.link is None:
                    self._rebuild(state)
                    await state.up.wait()
        except TimeoutError:
            raise self._error("connecting", state.last_error) from state.last_error
        finally:
            state.waiting -= 1
        return state.link

    def _rebuild(self, state: _LoopState, *, after_loss: bool = False) -> None:
        if state.rebuilding is None and not state.closed:
            state.rebuilding = asyncio.create_task(self._rebuilding(state, after_loss))

    async def _rebuilding(self, state: _LoopState, after_loss: bool) -> None:
        """Connect until it works: while somebody waits or consumes, backing off (§8)."""
        delay = _BACKOFF_FIRST
        try:
            if after_loss:
                await asyncio.sleep(_jittered(delay))
            while not state.closed and state.link is None:
                try:
                    link = await self._connect(state)
                    if link.lost:  # lost again while it was being set up
                        raise ConnectionError("connection lost while opening")
                except _FAILURES as exc:
                    state.last_error = exc
                    log.warning("%s", self._error("connecting", exc))
                    if not (state.waiting or state.consuming):
                        return  # nobody needs it now; the next caller starts again
                    delay = min(delay * 2, _BACKOFF_MAX)
                    await asyncio.sleep(_jittered(delay))
                    continue
                if state.closed:
                    await _close_quietly(link)
                    return
                state.link = link
                state.up.set()
                state.wake()
        finally:
            state.rebuilding = None

    async def _connect(self, state: _LoopState) -> _Link:
        connection = await aio_pika.connect(self.settings.url, timeout=_CONNECT_TIMEOUT)
        link = _Link(connection)
        try:
            connection.close_callbacks.add(self._on_close(state, link, "connection"))
            publisher = await connection.channel(publisher_confirms=True, on_return_raises=True)
            publisher.close_callbacks.add(self._on_close(state, link, "channel"))
            link.publisher = publisher
            link.pub = await publisher.get_underlay_channel()
            for queue in sorted(state.consuming):
                await self._ensure_consumers(state, link, queue)
        except BaseException:
            await _close_quietly(link)
            raise
        return link

    def _on_close(self, state: _LoopState, link: _Link, what: str) -> Callable[..., None]:
        """aio-pika's close callback for the link's connection or a channel of it."""

        def closed(_sender: object, reason: object = None, *_: object) -> None:
            # Closed by a cancellation: the event loop is ending (``asyncio.run`` cancels the
            # connection's reader), or a caller gave up on an RPC. Nothing to warn about and
            # no task to start on a loop that may be closing: a later call on this loop, if
            # any, connects again.
            self._lost(state, link, what, quietly=isinstance(reason, asyncio.CancelledError))

        return closed

    def _lost(self, state: _LoopState, link: _Link, what: str, *, quietly: bool = False) -> None:
        """A connection, channel or consumer is gone: drop the link and the buffer, rebuild
        (``quietly``: drop them only, without a warning or a task)."""
        if link.lost:
            return
        link.lost = True
        if not link.connection.is_closed and not quietly:
            task = asyncio.get_running_loop().create_task(_close_quietly(link))
            state.closing.add(task)
            task.add_done_callback(state.closing.discard)
        if state.link is not link:
            return  # a link being built: its _connect fails and the rebuild goes on
        state.link = None
        state.up.clear()
        state.losses += 1
        state.buffers.clear()  # the server requeues every unacked message of the connection
        state.held.clear()
        state.wake()
        if quietly:
            log.debug("RabbitMQ at %s: %s closed by a cancellation", self.settings.safe_url, what)
        elif not state.closed:
            log.warning("RabbitMQ at %s: %s lost; reconnecting", self.settings.safe_url, what)
            self._rebuild(state, after_loss=True)

    async def close(self) -> None:
        """Close the connection of every loop that used this transport (each on its loop).

        Unacked messages are requeued by the server; the buffer is gone.
        """
        states, self._loops = self._loops, {}
        await close_per_loop(states, self._close_state)

    @staticmethod
    async def _close_state(state: _LoopState) -> None:
        state.closed = True
        if state.rebuilding is not None:
            await cancel_and_wait([state.rebuilding])
        link, state.link = state.link, None
        state.up.clear()
        state.buffers.clear()
        state.held.clear()
        state.wake()
        if link is not None:
            link.lost = True
            await _close_quietly(link)
        await asyncio.gather(*state.closing, return_exceptions=True)

    # -- declarations -----------------------------------------------------------------------
    def _queue_arguments(self) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": self.names.dlx,
            "x-delivery-limit": _DELIVERY_LIMIT,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",  # which at-least-once dead-lettering needs
        }

    async def _declare(self, link: _Link, queues: Iterable[str]) -> None:
        """Declare the exchanges and the three band queues of ``queues``, once per link."""
        missing = sorted(set(queues) - link.declared)
        if not missing:
            return
        names = self.names
        async with link.declaring:
            channel = link.publisher
            assert channel is not None
            if names.jobs not in link.declared:
                self.declared |= {
                    Name("exchange", names.jobs), Name("exchange", names.dlx),
                    Name("queue", names.dead),
                }  # fmt: skip
                await channel.declare_exchange(
                    names.jobs, aio_pika.ExchangeType.DIRECT, durable=True, timeout=_RPC_TIMEOUT
                )
                await channel.declare_exchange(
                    names.dlx, aio_pika.ExchangeType.FANOUT, durable=True, timeout=_RPC_TIMEOUT
                )
                dead = await channel.declare_queue(
                    names.dead, durable=True, arguments={"x-queue-type": "quorum"},
                    timeout=_RPC_TIMEOUT,
                )  # fmt: skip
                await dead.bind(names.dlx, routing_key="", timeout=_RPC_TIMEOUT)
                link.declared.add(names.jobs)
            for queue in missing:
                if queue in link.declared:
                    continue
                for band in BANDS:
                    name = names.queue(queue, band)
                    self.declared.add(Name("queue", name))
                    declared = await channel.declare_queue(
                        name, durable=True, arguments=self._queue_arguments(),
                        timeout=_RPC_TIMEOUT,
                    )  # fmt: skip
                    await declared.bind(
                        names.jobs, routing_key=names.routing_key(queue, band),
                        timeout=_RPC_TIMEOUT,
                    )  # fmt: skip
                link.declared.add(queue)

    async def delete_names(self, names: Iterable[Name]) -> None:
        """Delete these queues, then these exchanges, on a connection of its own (a missing
        one is no error). For teardown: close the transports that consume them first (a
        deleted queue cancels its consumers, and their reconnection would declare it again)."""
        ordered = sorted(set(names), key=lambda n: (n.kind != "queue", n.name))
        if not ordered:
            return
        try:
            connection = await aio_pika.connect(self.settings.url, timeout=_CONNECT_TIMEOUT)
        except _FAILURES as exc:
            raise self._error("deleting names", exc) from exc
        async with connection:
            channel = await connection.channel(publisher_confirms=False)
            for name in ordered:
                try:
                    if name.kind == "queue":
                        await channel.queue_delete(name.name, timeout=_RPC_TIMEOUT)
                    else:
                        await channel.exchange_delete(name.name, timeout=_RPC_TIMEOUT)
                except AMQPError as exc:
                    raise self._error(f"deleting {name.kind} {name.name}", exc) from exc
                self.declared.discard(name)

    # -- publishing -------------------------------------------------------------------------
    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Publish job messages with confirms; return once every one is confirmed.

        Pipelined: up to 256 publishes in flight, each freed slot taken by the next message
        at once. What was not confirmed (a nack, a return, a lost connection) is published
        again, reconnecting with backoff. It fails with :class:`BrokerError` once
        ``publish_timeout`` passed without a confirm (since the call, then since the last
        confirm) or at ``publish_limit``: a big batch on a slow but working broker is not
        failed for its size (a thousand enqueues coalesced under load took 5 s), while a
        stuck one fails as soon as one message would. A message whose confirm was lost may
        reach the queue twice.
        """
        if not messages:
            return
        self.check_names({m.queue for m in messages})
        state = self._state()
        loop = asyncio.get_running_loop()
        deadline = Deadline(loop, self.settings)
        pending = list(messages)
        delay = _BACKOFF_FIRST
        last: BaseException | None = None
        while True:
            link: _Link | None = None
            try:
                link = await self._link(state, deadline.at)
                await self._declare(link, {m.queue for m in pending})
                pending, last = await self._publish_once(link, pending, deadline)
                if not pending:
                    return
            except BrokerError as exc:  # no link before the deadline
                last = exc.__cause__ or last
            except _FAILURES as exc:
                last = exc
            if link is not None:
                link.declared.clear()  # a return may mean a queue deleted behind the cache
            remaining = deadline.at - loop.time()
            if remaining <= 0:
                raise self._error(
                    f"publishing ({len(pending)} of {len(messages)} messages unconfirmed, the "
                    f"last {self.settings.publish_timeout:g} s without a confirm or "
                    f"{self.settings.publish_limit:g} s in all)",
                    last,
                ) from last
            if link is not None and not link.lost:  # a refusal, not a loss: back off here
                await asyncio.sleep(min(_jittered(delay), remaining))
                delay = min(delay * 2, _BACKOFF_MAX)

    async def _publish_once(
        self, link: _Link, messages: list[Outgoing], deadline: Deadline
    ) -> tuple[list[Outgoing], BaseException | None]:
        """Publish through the window, then await the confirms: (the messages not confirmed,
        the last error); see :func:`publish_confirmed`."""
        channel = link.pub
        assert channel is not None
        return await publish_confirmed(
            messages, lambda m: self._publish_one(channel, m), deadline, _FAILURES
        )

    def _publish_one(self, channel: RawChannel, message: Outgoing) -> Awaitable[Any]:
        band = band_of(message.priority)
        properties = Basic.Properties(
            message_id=message.job_id,
            delivery_mode=2,  # persistent
            content_type="application/json",
            headers={PRIORITY_HEADER: message.priority, "x-dromos-sent": 1},
        )
        return channel.basic_publish(
            message.body,
            exchange=self.names.jobs,
            routing_key=self.names.routing_key(message.queue, band),
            properties=properties,
            mandatory=True,  # unroutable comes back as a return: a failure, not a silent drop
        )

    # -- consuming --------------------------------------------------------------------------
    async def consume(self, queues: Iterable[str], *, timeout: float | None = None) -> None:
        """Make sure this loop consumes every band of ``queues`` (again after any loss).

        Waits for a connection up to ``timeout`` (default: ``publish_timeout``).
        """
        wanted = set(queues)
        self.check_names(wanted)
        state = self._state()
        state.consuming |= wanted
        wait = self.settings.publish_timeout if timeout is None else timeout
        deadline = asyncio.get_running_loop().time() + wait
        link = await self._link(state, deadline)
        # Shielded: a caller given up on (a waiter woken for another reason) must not cancel
        # a consume RPC half-way, which makes aiormq close the channel, and with it the link.
        subscribing = asyncio.ensure_future(self._consume_on(state, link, sorted(wanted)))
        subscribing.add_done_callback(_retrieved)
        await asyncio.shield(subscribing)

    async def _consume_on(self, state: _LoopState, link: _Link, queues: list[str]) -> None:
        try:
            for queue in queues:
                await self._ensure_consumers(state, link, queue)
        except _FAILURES as exc:
            # An RPC that failed or timed out closes its channel (aiormq): the link is lost.
            # (A quorum queue whose leader is not known yet, just after a node restart, can
            # leave a consume unanswered; the rebuilt link asks again.)
            self._lost(state, link, "the consumer channel")
            raise self._error(f"consuming {queues}", exc) from exc

    async def _ensure_consumers(self, state: _LoopState, link: _Link, queue: str) -> None:
        def consuming(band: str) -> bool:
            consumer = link.consumers.get((queue, band))
            return consumer is not None and consumer.tag is not None

        if all(map(consuming, BANDS)):
            return
        await self._declare(link, [queue])
        async with link.declaring:  # one consume per band, also when two callers ask at once
            for band in BANDS:
                key = (queue, band)
                consumer = link.consumers.get(key)
                if consumer is None:
                    consumer = link.consumers[key] = await self._channel(state, link)
                if consumer.tag is not None:
                    continue
                consumer.cancelled = False
                ok = await consumer.raw.basic_consume(
                    self.names.queue(queue, band), self._on_delivery(state, link, consumer, key),
                    timeout=_RPC_TIMEOUT,
                )  # fmt: skip
                consumer.tag = str(ok.consumer_tag)

    async def _channel(self, state: _LoopState, link: _Link) -> _Consumer:
        """A consumer channel whose consumers each hold up to the prefetch (per consumer,
        ``global=False``): the prefetch when it opens (the broker sizes it from the first
        claim); a later change applies to channels opened after it."""
        channel = await link.connection.channel(publisher_confirms=False)
        channel.close_callbacks.add(self._on_close(state, link, "channel"))
        raw = await channel.get_underlay_channel()
        await raw.basic_qos(prefetch_count=self.settings.prefetch, timeout=_RPC_TIMEOUT)
        if hasattr(raw, "on_consumer_cancel_callbacks"):
            raw.on_consumer_cancel_callbacks.add(
                lambda _: self._lost(state, link, "consumer cancelled by the server")
            )
        return _Consumer(raw)

    def _on_delivery(
        self, state: _LoopState, link: _Link, consumer: _Consumer, key: tuple[str, str]
    ) -> Callable[[DeliveredMessage], Coroutine[Any, Any, None]]:
        async def delivered(raw: DeliveredMessage) -> None:
            # No await before the message is buffered: aiormq starts this task before its
            # reader handles a later frame, which is what makes the barrier hold (see barrier).
            if link.lost:
                return  # the server requeued it with the rest of that connection's
            tag = _delivery_tag(raw)
            consumer.unacked.add(tag)
            if not consumer.cancelled:
                state.buffers.setdefault(key, {})[tag] = self._message(raw, key, link, consumer)
                state.wake()

        return delivered

    @staticmethod
    def _message(
        raw: DeliveredMessage, key: tuple[str, str], link: _Link, consumer: _Consumer
    ) -> Message:
        properties = raw.header.properties
        headers = dict(properties.headers or {})
        queue, band = key
        return Message(
            queue=queue, band=band, job_id=str(properties.message_id or ""),
            priority=_priority(headers, band), body=raw.body, headers=headers,
            redelivered=bool(getattr(raw.delivery, "redelivered", False)),
            tag=_delivery_tag(raw), link=link, consumer=consumer,
        )  # fmt: skip

    async def barrier(self, queues: Sequence[str], limit: int) -> None:
        """After this, the buffer holds every message of ``queues`` that was ready for this
        consumer before the call (§4.2 step 3).

        One ``basic.get`` per band whose buffer holds no more than ``limit``, on that band's
        consumer channel, all at once: the queue answers it after every delivery it sent
        this channel before, and aiormq has started every delivery's callback (which buffers
        at once) before the get's answer reaches its caller. A message got is buffered too.
        A loss raises BrokerError.
        """
        state = self._state()
        await self.consume(queues)
        link = state.link
        if link is None:
            raise self._error("claiming", state.last_error)

        async def get(key: tuple[str, str], consumer: _Consumer) -> None:
            raw = await consumer.raw.basic_get(
                self.names.queue(*key), no_ack=False, timeout=_RPC_TIMEOUT
            )
            if isinstance(raw.delivery, Basic.GetOk) and not link.lost:
                tag = _delivery_tag(raw)
                consumer.unacked.add(tag)
                message = self._message(raw, key, link, consumer)
                state.buffers.setdefault(key, {})[tag] = message

        gets = []
        for queue in queues:
            for band in BANDS:
                key = (queue, band)
                consumer = link.consumers.get(key)
                if consumer is None or link.lost:
                    raise self._error("claiming", state.last_error or ConnectionError("lost"))
                if len(state.buffers.get(key, ())) <= limit:
                    gets.append(get(key, consumer))
        results = await asyncio.gather(*gets, return_exceptions=True)
        try:
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        except _FAILURES as exc:
            self._lost(state, link, "the consumer channel")  # its channel is closed now
            raise self._error("claiming (the connection was lost)", exc) from exc
        if link.lost:
            raise self._error("claiming", state.last_error or ConnectionError("connection lost"))

    def candidates(self, queues: Iterable[str]) -> list[Message]:
        """The buffered messages of ``queues``, by priority (higher first), then job id
        (UUIDv7: enqueue order). No body is decoded."""
        state = self._state()
        found = [
            m for q in set(queues) for b in BANDS for m in state.buffers.get((q, b), {}).values()
        ]
        found.sort(key=lambda m: (-m.priority, m.job_id))
        return found

    async def take(
        self, queues: Sequence[str], limit: int, *, barrier: bool = True
    ) -> list[Message]:
        """The barrier (unless the caller just passed one), then up to ``limit`` candidates,
        moved from the buffer to the held messages (each to :meth:`ack`, or back with
        :meth:`restore`)."""
        if barrier:
            await self.barrier(queues, limit)
        state = self._state()
        taken = self.candidates(queues)[: max(limit, 0)]
        for message in taken:
            del state.buffers[(message.queue, message.band)][message.tag]
            state.held[message.held_key] = message
        return taken

    def restore(self, messages: Iterable[Message]) -> None:
        """Put held messages back into the buffer (a claim whose store write failed)."""
        state = self._state()
        for message in messages:
            if state.held.pop(message.held_key, None) is message:
                state.buffers.setdefault((message.queue, message.band), {})[message.tag] = message

    async def ack(self, messages: Iterable[Message]) -> int:
        """Ack these messages, pipelined (written, no reply awaited); the number acked.

        A message of a lost connection is skipped: the server requeued it already (its job's
        claim decides what a redelivery does).
        """
        state = self._state()
        link = state.link
        if link is None:
            return 0
        acking: dict[_Consumer, set[int]] = {}
        for message in messages:
            consumer = message.consumer
            if message.link is not link or not isinstance(consumer, _Consumer):
                continue
            if message.tag not in consumer.unacked:
                continue
            state.held.pop(message.held_key, None)
            state.buffers.get((message.queue, message.band), {}).pop(message.tag, None)
            acking.setdefault(consumer, set()).add(message.tag)
        acked = 0
        for consumer, tags in acking.items():
            # One ack with multiple=True covers the lowest run of unacked tags, when it is ours.
            run = 0
            for tag in sorted(consumer.unacked):
                if tag not in tags:
                    break
                run = tag
            try:
                if run:
                    await consumer.raw.basic_ack(run, multiple=True, wait=False)
                for tag in sorted(t for t in tags if t > run):
                    await consumer.raw.basic_ack(tag, wait=False)
            except _FAILURES:
                continue  # the channel is gone: the server requeued them
            consumer.unacked -= tags
            acked += len(tags)
        return acked

    async def nack_all(self) -> int:
        """For shutdown: stop consuming, and requeue every unacked message of this loop
        (buffered or held); the number dropped from the buffer. Consuming starts again with
        the next barrier, take, wait or consume."""
        state = self._state()
        link = state.link
        state.consuming.clear()
        dropped = sum(map(len, state.buffers.values())) + len(state.held)
        if link is None:
            state.buffers.clear()
            state.held.clear()
            return dropped
        for consumer in link.consumers.values():
            consumer.cancelled = True  # deliveries until the cancel-ok: not buffered
        state.buffers.clear()
        state.held.clear()
        for consumer in link.consumers.values():
            try:
                if consumer.tag is not None:
                    await consumer.raw.basic_cancel(consumer.tag, timeout=_RPC_TIMEOUT)
                    consumer.tag = None
                if consumer.unacked:
                    # Everything up to the highest tag: all of this channel's unacked messages.
                    await consumer.raw.basic_nack(
                        max(consumer.unacked), multiple=True, requeue=True
                    )
                    consumer.unacked.clear()
            except _FAILURES:
                pass  # the channel is gone: the server requeued everything it had sent
        return dropped

    async def wait(self, queues: Sequence[str], timeout: float) -> bool:
        """Until the buffer of ``queues`` is non-empty (True), or ``timeout`` (False).

        Consumes ``queues`` first. A loss of the connection also returns (False), so that
        the caller's next claim meets it.
        """
        state = self._state()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            await self.consume(queues, timeout=max(timeout, 0.0))
        except BrokerError:
            return False
        link = state.link
        keys = [(q, b) for q in queues for b in BANDS]
        while True:
            pulse = state.pulse
            if any(state.buffers.get(k) for k in keys):
                return True
            remaining = deadline - loop.time()
            if remaining <= 0 or state.link is not link:
                return False
            await asyncio.wait({pulse}, timeout=remaining)

    # -- for the event bus (rabbitmq_events.py) ---------------------------------------------
    async def connection(self, timeout: float | None = None) -> AbstractConnection:
        """This loop's connection, once up: waits for a rebuild until ``timeout`` (default
        ``publish_timeout``), then :class:`BrokerError`.

        The event bus opens channels of its own on it, so that its declarations, consumers
        and delivery tags never touch the jobs' channels (a multiple ack of jobs must not ack
        an event); the loss of the connection closes them too, and it rebuilds them on the
        next connection.
        """
        state = self._state()
        wait = self.settings.publish_timeout if timeout is None else timeout
        link = await self._link(state, asyncio.get_running_loop().time() + wait)
        return link.connection


def _retrieved(task: asyncio.Future[None]) -> None:
    """Mark a shielded task's error as seen: its caller may be gone (it was cancelled)."""
    if not task.cancelled():
        task.exception()


def _jittered(delay: float) -> float:
    return delay * random.uniform(1 - _JITTER, 1 + _JITTER)


async def _close_quietly(link: _Link) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(link.connection.close(), 5.0)
