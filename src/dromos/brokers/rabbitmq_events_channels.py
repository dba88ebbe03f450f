"""The event bus's channels on RabbitMQ: per event loop, two channels of its own on the
transport's connection (``docs/design/rabbitmq.md`` §9).

A publisher channel with confirms (events, declarations) and a consumer channel (the groups'
consumers and gets), apart from the jobs' channels, so that a job's multiple ack never acks an
event and an error on one side never closes the other's channel. After a loss (the connection,
or one of them closed by an error), a new pair is opened on the next use; what the old pair
held was requeued by the server. Also here: the declaration of the exchange and the log, and
publishing with confirms.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.abc import AbstractChannel as RawChannel

from dromos.brokers.base import Broker
from dromos.brokers.rabbitmq_confirms import Deadline, publish_confirmed
from dromos.brokers.rabbitmq_event_messages import Delivered
from dromos.brokers.rabbitmq_events_log import EventLog, LogNames
from dromos.brokers.rabbitmq_transport import AmqpTransport, Name
from dromos.errors import BrokerError

__all__ = ["Channels", "EventChannels", "close_quietly"]

_RPC_TIMEOUT = 30.0
_T = TypeVar("_T")


@dataclass(eq=False)
class Channels:
    """The event bus's channels on one connection of one loop, and what they carry."""

    connection: AbstractConnection
    channels: tuple[AbstractChannel, AbstractChannel]  # kept: the two below are theirs
    pub: RawChannel  # publisher confirms: publishes and declarations
    con: RawChannel  # consumers and gets: delivery tags apart from the jobs'
    alive: bool = True  # False once dropped: its deliveries are the server's again
    consuming: dict[str, str] = field(default_factory=dict)  # group -> consumer tag
    buffers: dict[str, dict[int, Delivered]] = field(default_factory=dict)  # by arrival (tag)
    held: dict[str, dict[str, Delivered]] = field(default_factory=dict)  # group -> key -> event
    left: set[str] = field(default_factory=set)  # groups whose consumer was cancelled
    declared: bool = False  # the exchange and the log, on this connection
    timer: asyncio.TimerHandle | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)  # lease timers' hand-backs
    pulse: asyncio.Event = field(default_factory=asyncio.Event)
    resume: list[str] = field(default_factory=list)  # groups to consume again (a new set)

    def usable(self) -> bool:
        return not (self.connection.is_closed or self.pub.is_closed or self.con.is_closed)


class EventChannels:
    """The channels of every loop that uses the bus (see the module docstring)."""

    def __init__(
        self, transport: AmqpTransport, store: Broker, names: LogNames, log: EventLog
    ) -> None:
        self.transport, self.store, self.names, self.log = transport, store, names, log
        self._loops: dict[asyncio.AbstractEventLoop, Channels] = {}
        self._opening: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}

    async def ready(self) -> Channels:
        """This loop's channels on the transport's live connection, made anew after a loss
        (the server requeued whatever the old ones held), with the groups consumed before in
        ``resume``."""
        connection = await self.transport.connection()
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is not None and state.connection is connection and state.usable():
            return state
        async with self._opening.setdefault(loop, asyncio.Lock()):  # one set per loop
            state = self._loops.get(loop)
            if state is not None and state.connection is connection and state.usable():
                return state
            return await self._open(connection, state)

    async def _open(self, connection: AbstractConnection, state: Channels | None) -> Channels:
        loop = asyncio.get_running_loop()
        groups = list(state.consuming) if state is not None else []
        if state is not None:
            self.drop(state)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=False)
            consumer = await connection.channel(publisher_confirms=False)
            pub = await channel.get_underlay_channel()
            con = await consumer.get_underlay_channel()
            await con.basic_qos(prefetch_count=self.transport.settings.prefetch)
        except Exception as exc:
            raise self.error("opening the event channels", exc) from exc
        state = self._loops[loop] = Channels(connection, (channel, consumer), pub, con)
        for closing in (channel, consumer):  # a lost channel's deliveries are requeued
            closing.close_callbacks.add(lambda *_, lost=state: self.forget(lost))
        state.resume = groups
        return state

    @staticmethod
    def forget(state: Channels) -> None:
        """What a closed channel carried is the server's again: nothing is held here."""
        state.alive = False
        if state.timer is not None:
            state.timer.cancel()
        state.buffers.clear()
        state.held.clear()
        state.pulse.set()

    def drop(self, state: Channels) -> None:
        """Forget a loop's channels and close them: the server requeues what they held."""
        self.forget(state)
        state.consuming.clear()
        if not state.pub.is_closed or not state.con.is_closed:
            for raw in (state.pub, state.con):
                task = asyncio.ensure_future(close_quietly(raw))
                task.add_done_callback(lambda t: t.cancelled() or t.exception())
        for loop, known in list(self._loops.items()):
            if known is state:
                del self._loops[loop]

    def lost(self, state: Channels, exc: BaseException, doing: str) -> BrokerError:
        self.drop(state)
        return self.error(doing, exc)

    def error(self, doing: str, exc: BaseException) -> BrokerError:
        why = str(exc) or type(exc).__name__
        return BrokerError(f"RabbitMQ at {self.transport.settings.safe_url}: {doing} failed: {why}")

    async def declare(self, state: Channels) -> None:
        """The exchange and the log stream bound to it, once per connection."""
        if state.declared:
            return
        names = self.names
        self.transport.declared |= {Name("exchange", names.exchange), Name("queue", names.log)}
        try:
            await state.pub.exchange_declare(
                exchange=names.exchange, exchange_type="topic", durable=True,
                timeout=_RPC_TIMEOUT,
            )  # fmt: skip
            await state.pub.queue_declare(
                names.log, durable=True, arguments=self.log.arguments(), timeout=_RPC_TIMEOUT
            )
            await state.pub.queue_bind(names.log, names.exchange, "#", timeout=_RPC_TIMEOUT)
        except Exception as exc:
            raise self.lost(state, exc, "declaring the event exchange") from exc
        # Registered in the store, as the groups' queues are: a teardown (or an operator)
        # finds every name the bus declared, whichever process declared it.
        await self.store.names_add("exchange", {names.exchange: ()})
        await self.store.names_add("queue", {names.log: ()})
        state.declared = True

    async def close(self) -> None:
        """Forget every loop's channels (the transport closes the connection under them)."""
        for state in list(self._loops.values()):
            self.drop(state)

    def current(self) -> Channels | None:
        """This loop's channels if it has them (a settle needs no new ones)."""
        return self._loops.get(asyncio.get_running_loop())

    async def confirmed(
        self,
        state: Channels,
        items: list[_T],
        publish: Callable[[RawChannel, _T], Coroutine[Any, Any, Any]],
        deadline: Deadline | None = None,
    ) -> tuple[list[_T], BaseException | None]:
        """Publish through the window with confirms, as the jobs' transport does: (the items
        not confirmed by ``deadline``, a fresh one by default, the last error); a lost
        channel raises."""
        if deadline is None:
            deadline = Deadline(asyncio.get_running_loop(), self.transport.settings)
        failed, last = await publish_confirmed(
            items, lambda item: publish(state.pub, item), deadline, (Exception,)
        )
        if last is not None and not state.usable():
            raise self.lost(state, last, "publishing events")
        return failed, last


async def close_quietly(raw: RawChannel) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(raw.close(), 5.0)
