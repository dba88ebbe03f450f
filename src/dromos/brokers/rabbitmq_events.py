"""The event bus of the RabbitMQ broker: a topic exchange, one quorum queue per consumer group
(``docs/design/rabbitmq.md`` §9; the state store keeps what RabbitMQ cannot).

- **Names**: ``<ns>.events``, a durable topic exchange (routing key = the topic; dromos
  patterns are AMQP's: ``*`` one word, ``#`` zero or more); per group the quorum queue
  ``<ns>.g.<group>``, bound with each of the group's patterns; ``<ns>.events.log``, a stream
  bound with ``#`` whose ``x-max-age`` is ``event_retention``: the log a group that starts at
  ``earliest`` or at a time is filled from (:mod:`~dromos.brokers.rabbitmq_events_log`).
- **The registry** of groups and their patterns is the store's (``names_add``/``names_list``):
  a claim for a group nobody joined finds nothing and declares nothing.
- **Publish** with confirms through the jobs' window and deadline
  (:mod:`~dromos.brokers.rabbitmq_confirms`: ``publish_timeout`` without a confirm, or
  ``publish_limit`` in all), through reconnection. Not atomic: a batch that failed half-way
  may have delivered some events (at least once per event).
- **Claims**: a consumer per group on a channel of the event bus's own (its delivery tags are
  apart from the jobs'), deliveries buffered in arrival order; a claim takes them and, when
  the buffer runs short, ``basic.get`` s more. A claimed event is leased by being unacked,
  plus a local lease timer: at its end the event is nacked back to its queue, RabbitMQ counts
  the return (``x-delivery-count``) and hands it to whichever consumer. Its key is the event
  id; its attempt is ``x-dromos-attempt`` (deliveries before it was last parked) +
  ``x-delivery-count`` + 1, and its tries that less ``x-dromos-base`` (its attempt at its last
  replay). An event returned more than ``max_recoveries`` times is dead-lettered as
  ``Poison``.
- **Settles**: store first, ack second (a crash between makes a duplicate, never a loss):
  handled → ack; to retry → parked in the store with its due time, then acked; dead → parked
  dead, then acked. The relay part (:meth:`RabbitMQEvents.relay`, run by the broker's relay
  and by claims and waits) republishes due retries to their group's queue with
  ``x-dromos-attempt``, ``x-dromos-errors`` and ``x-dromos-topic``, then unparks them.

What this instance sees alone: ``running`` and the unclaimed part of ``lag`` count the events
*this* process holds or buffers (other processes' unacked events are not visible without the
management API). An event a consumer buffered without claiming it comes back with its
delivery count raised when that consumer stops: it counts as a recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from aiormq.abc import AbstractChannel as RawChannel
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from dromos.brokers.base import (
    Broker,
    BrokerOptions,
    EventDeadLetter,
    EventDelivery,
    EventOutcome,
    EventRecord,
    GroupStats,
    Parked,
)
from dromos.brokers.memory_events import poison_error
from dromos.brokers.rabbitmq_confirms import Deadline
from dromos.brokers.rabbitmq_event_messages import (
    Delivered,
    delivered,
    delivery_tag,
    to_exchange,
    to_group,
)
from dromos.brokers.rabbitmq_events_channels import Channels, EventChannels, close_quietly
from dromos.brokers.rabbitmq_events_log import EventLog, LogNames
from dromos.brokers.rabbitmq_transport import AmqpTransport, Name
from dromos.errors import BrokerError

__all__ = ["RabbitMQEvents"]

log = logging.getLogger("dromos.rabbitmq")

_RELAY_LIMIT = 500  # parked retries per relay pass
_RELAY_HOLD = 30.0  # seconds a relay pass holds what it took (another takes it after)
_RELAY_POLL = 1.0  # seconds: the longest a process goes without looking for due retries
_RPC_TIMEOUT = 30.0
_JOIN_LEASE = 60.0  # seconds a join may hold its group's join lease (filling from the log)
_JOIN_WAIT = 90.0  # seconds a join waits for another process's join of the same group
_T = TypeVar("_T")


class RabbitMQEvents:
    """The bus methods of :class:`~dromos.brokers.rabbitmq.RabbitMQBroker` (see the module
    docstring): RabbitMQ through ``transport``, the registry and parked events in ``store``."""

    def __init__(self, transport: AmqpTransport, store: Broker, options: BrokerOptions) -> None:
        self.transport, self.store, self.options = transport, store, options
        prefix = transport.settings.prefix
        self.names = LogNames(prefix)
        self.log = EventLog(transport.settings, self.names, options.event_retention)
        self._groups: dict[str, tuple[str, ...]] = {}  # registry cache: known groups only
        self.channels = EventChannels(transport, store, self.names, self.log)
        # group -> ids of a backfill's window (may have come through the binding too) -> how
        # the first copy claimed came: "" (none yet), "log" or "binding"
        self._window: dict[str, dict[str, str]] = {}
        self._next_due: float | None = None  # loop time of the earliest parked retry known
        self._last_pass = -_RELAY_POLL

    async def _ready(self) -> Channels:
        """This loop's channels (see :class:`EventChannels`), consuming again, after a loss,
        the groups consumed before."""
        state = await self.channels.ready()
        while state.resume:
            with contextlib.suppress(BrokerError):  # a group gone meanwhile: its claims say so
                await self._consume(state, state.resume.pop())
        return state

    async def close(self) -> None:
        """Forget every loop's channels (the transport closes the connection under them)."""
        await self.channels.close()

    # -- publishing -----------------------------------------------------------------------------
    async def publish(self, events: Sequence[EventRecord]) -> None:
        if not events:
            return
        settings = self.transport.settings
        deadline = Deadline(asyncio.get_running_loop(), settings)  # across every attempt
        pending = list(events)
        delay = 0.1
        last: BaseException | None = None
        while True:
            try:
                state = await self._ready()
                await self.channels.declare(state)
                pending, last = await self.channels.confirmed(
                    state, pending, self._exchange_publisher, deadline
                )
                if not pending:
                    return
            except BrokerError as exc:
                last = exc
            if deadline.passed():
                raise BrokerError(
                    f"RabbitMQ at {settings.safe_url}: publishing {len(pending)} of "
                    f"{len(events)} event(s) failed (the last {settings.publish_timeout:g} s "
                    f"without a confirm or {settings.publish_limit:g} s in all): "
                    f"{last or 'not confirmed'}"
                )
            await asyncio.sleep(min(delay, deadline.remaining()))
            delay = min(delay * 2, 5.0)

    def _exchange_publisher(self, pub: RawChannel, event: EventRecord) -> Coroutine[Any, Any, Any]:
        return to_exchange(pub, self.names.exchange, event)

    # -- groups ---------------------------------------------------------------------------------
    async def _patterns(self, group: str) -> tuple[str, ...] | None:
        known = self._groups.get(group)
        if known is None:
            self._groups.update(await self.store.names_list("group"))
            known = self._groups.get(group)
        return known

    async def join_group(self, group: str, patterns: Sequence[str], start: str | float) -> None:
        # One process at a time joins a group: the first fills a new group's queue from the
        # log, and registers the group only once that is done; a second process joining in
        # between would not see it registered and fill the queue again (every event twice).
        # A named lease in the store serializes them (given up at the end, or run out if
        # its holder died).
        name, holder = f"rabbitmq-join:{self.names.group(group)}", uuid.uuid4().hex
        deadline = time.monotonic() + _JOIN_WAIT
        while await self.store.hold_lease(name, holder, _JOIN_LEASE) is None:
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"group {group!r}: another process has been joining it for over "
                    f"{_JOIN_WAIT:.0f} s (lease {name!r} in the state store)"
                )
            await asyncio.sleep(0.05)
        try:
            await self._join(group, patterns, start)
        finally:
            await self.store.drop_lease(name, holder)

    async def _join(self, group: str, patterns: Sequence[str], start: str | float) -> None:
        registered = await self.store.names_list("group")
        state = await self._ready()
        await self.channels.declare(state)
        queue = self.names.group(group)
        old = registered.get(group)
        self.transport.declared.add(Name("queue", queue))
        backfill = old is None and start != "latest"
        before = await self.log.mark(state.connection) if backfill else ""
        try:
            await state.pub.queue_declare(
                queue, durable=True, arguments={"x-queue-type": "quorum"}, timeout=_RPC_TIMEOUT
            )
            for pattern in sorted(set(patterns) - set(old or ())):
                await state.pub.queue_bind(
                    queue, self.names.exchange, pattern, timeout=_RPC_TIMEOUT
                )
            for pattern in sorted(set(old or ()) - set(patterns)):
                await state.pub.queue_unbind(
                    queue, self.names.exchange, pattern, timeout=_RPC_TIMEOUT
                )
        except Exception as exc:
            raise self.channels.lost(state, exc, f"declaring the queue of group {group!r}") from exc
        if backfill:
            window = await self.log.backfill(state.connection, queue, patterns, start, before)
            self._window.setdefault(group, {}).update(dict.fromkeys(window, ""))
        await self.store.names_add("group", {group: tuple(patterns)})
        await self.store.names_add("queue", {queue: ()})
        self._groups[group] = tuple(patterns)

    async def leave_group(self, group: str) -> None:
        queue = self.names.group(group)
        self._groups.pop(group, None)
        state = await self._ready()
        tag = state.consuming.pop(group, None)
        state.left.add(group)
        state.buffers.pop(group, None)
        state.held.pop(group, None)  # deleted with the queue: never to be acked
        self._window.pop(group, None)
        try:
            if tag is not None:
                await state.con.basic_cancel(tag, timeout=_RPC_TIMEOUT)
            await state.pub.queue_delete(queue, timeout=_RPC_TIMEOUT)
        except Exception as exc:
            raise self.channels.lost(state, exc, f"deleting the queue of group {group!r}") from exc
        self.transport.declared.discard(Name("queue", queue))
        await self.store.drop_group(group)
        await self.store.names_drop("queue", [queue])

    # -- consuming ------------------------------------------------------------------------------
    async def _consume(self, state: Channels, group: str) -> None:
        if group in state.consuming:
            return
        state.left.discard(group)
        try:
            ok = await state.con.basic_consume(
                self.names.group(group), self._on_delivery(state, group), timeout=_RPC_TIMEOUT
            )
        except Exception as exc:
            self._groups.pop(group, None)  # deleted by another process, maybe: ask again
            raise self.channels.lost(state, exc, f"consuming group {group!r}") from exc
        state.consuming[group] = str(ok.consumer_tag)

    def _on_delivery(
        self, state: Channels, group: str
    ) -> Callable[[DeliveredMessage], Coroutine[Any, Any, None]]:
        async def buffer(raw: DeliveredMessage) -> None:
            # No await before it is buffered: aiormq runs this before it hands a later get's
            # answer to its caller, so a get is a barrier (as for jobs, see the transport).
            if state.alive and group not in state.left:
                state.buffers.setdefault(group, {})[delivery_tag(raw)] = delivered(raw)
                state.pulse.set()

        return buffer

    async def claim_events(self, group: str, limit: int, lease: float) -> list[EventDelivery]:
        if limit <= 0 or await self._patterns(group) is None:
            return []
        await self.relay()
        state = await self._ready()
        await self._expire(state)
        await self._consume(state, group)
        buffer = state.buffers.setdefault(group, {})
        held = state.held.setdefault(group, {})
        loop = asyncio.get_running_loop()
        out: list[EventDelivery] = []
        poison: list[Delivered] = []
        duplicates: list[Delivered] = []
        while len(out) < limit:
            got = None
            if len(buffer) <= limit - len(out):  # the get comes after every push before it
                try:
                    got = await state.con.basic_get(self.names.group(group), timeout=_RPC_TIMEOUT)
                except Exception as exc:
                    self._groups.pop(group, None)
                    raise self.channels.lost(state, exc, f"claiming events of {group!r}") from exc
                if isinstance(got.delivery, Basic.GetOk):
                    buffer[delivery_tag(got)] = delivered(got)
                else:
                    got = None
            for tag in sorted(buffer)[: limit - len(out)]:
                event = buffer.pop(tag)
                if event.returns > self.options.max_recoveries:
                    poison.append(event)
                elif event.key in held or self._twice(group, event):
                    duplicates.append(event)  # a copy of one held or taken here: dropped
                else:
                    event.lease_end = loop.time() + lease
                    held[event.key] = event
                    tries = event.attempt - event.base
                    out.append(EventDelivery(event.key, event.topic, event.payload,
                                             event.attempt, tries))  # fmt: skip
            if got is None:
                break
        if poison:
            dead = [
                Parked(e.key, e.topic, e.payload, e.attempt - 1,
                       [*e.errors, poison_error(e.returns, e.attempt - 1)], None)
                for e in poison
            ]  # fmt: skip
            try:
                await self.store.park_events(group, dead)
            except Exception:
                await self._nack(state, poison)  # back to the queue: decided again next time
                await self._ack(state, duplicates)
                raise
        await self._ack(state, [*poison, *duplicates])
        self._arm(state)
        return out

    def _twice(self, group: str, event: Delivered) -> bool:
        """Whether ``event`` is the second copy of an event of the group's backfill window:
        one came from the log, one through the binding (a retry's copy is neither)."""
        window = self._window.get(group)
        if not window or event.key not in window or event.via is None:
            return False
        first = window[event.key]
        if not first:
            window[event.key] = event.via
            return False
        if first == event.via:
            return False  # the same copy again (its lease ended)
        del window[event.key]
        return True

    async def _ack(self, state: Channels, events: Sequence[Delivered]) -> None:
        try:
            for event in events:
                await state.con.basic_ack(event.tag, wait=False)
        except Exception as exc:  # the channel is gone: the server requeued them
            log.debug("acking events failed: %s", exc)

    async def _nack(self, state: Channels, events: Sequence[Delivered]) -> None:
        try:
            for event in events:
                await state.con.basic_nack(event.tag, requeue=True, wait=False)
        except Exception as exc:  # the channel is gone: the server requeued them
            log.debug("handing back events failed: %s", exc)

    def _arm(self, state: Channels) -> None:
        """The local lease timer: wake at the earliest lease end among the held events."""
        if state.timer is not None:
            state.timer.cancel()
            state.timer = None
        ends = [e.lease_end for held in state.held.values() for e in held.values()]
        if ends:
            loop = asyncio.get_running_loop()
            state.timer = loop.call_at(min(ends), self._expire_later, state)

    def _expire_later(self, state: Channels) -> None:
        task = asyncio.ensure_future(self._expire(state))
        state.tasks.add(task)  # kept until done: a task nobody refers to may be collected
        task.add_done_callback(state.tasks.discard)

    async def _expire(self, state: Channels) -> None:
        """Hand back the held events whose lease ended: nacked to their queue (RabbitMQ counts
        the return), to whichever consumer; a settle of them is then ignored."""
        now = asyncio.get_running_loop().time()
        ended = [
            held.pop(key)
            for held in state.held.values()
            for key in [k for k, e in held.items() if e.lease_end <= now]
        ]
        await self._nack(state, ended)
        if ended:
            self._arm(state)
            state.pulse.set()

    async def settle_events(self, group: str, outcomes: Sequence[EventOutcome]) -> int:
        state = self.channels.current()
        if state is None or not state.usable():
            return 0  # lost with the channel: the server requeued them
        held = state.held.get(group, {})
        applied: list[Delivered] = []
        parked: list[Parked] = []
        for outcome in outcomes:
            event = held.get(outcome.key)
            if event is None or event.attempt != outcome.attempt or event in applied:
                continue
            applied.append(event)
            if outcome.error is not None:
                errors = [*event.errors, outcome.error]
                parked.append(Parked(event.key, event.topic, event.payload, event.attempt,
                                     errors, outcome.retry_at, outcome.retry_in,
                                     base=event.base))  # fmt: skip
        if parked:  # the store first: a crash before the ack makes a duplicate, not a loss
            await self.store.park_events(group, parked)
            retries = [p.due for p in parked if p.due is not None]
            if retries:  # the relay's next pass, and a waiter's next look
                self._due_at(min(retries) - time.time())
                state.pulse.set()
        for event in applied:
            held.pop(event.key, None)
        await self._ack(state, applied)
        self._arm(state)
        return len(applied)

    async def wait_for_events(self, groups: Sequence[str], timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        known = [g for g in groups if await self._patterns(g) is not None]
        while True:
            state = await self._ready()
            for group in known:
                await self._consume(state, group)
            if any(state.buffers.get(g) for g in known):
                return
            state.pulse.clear()
            left = deadline - loop.time()
            if left <= 0:
                return
            wait = min(left, _RELAY_POLL)
            if self._next_due is not None:
                wait = max(0.0, min(wait, self._next_due - loop.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.pulse.wait(), wait)
            if await self.relay():
                return  # republished retries: the next claim may find them

    # -- the relay part -------------------------------------------------------------------------
    def _due_at(self, seconds: float) -> None:
        at = asyncio.get_running_loop().time() + max(seconds, 0.0)
        self._next_due = at if self._next_due is None else min(self._next_due, at)

    async def relay(self) -> int:
        """Republish the parked retries that came due (any group's) to their group's queue,
        then unpark them; how many. Runs when a retry this instance knows of is due, else at
        most every second (retries parked by other processes). A failure is logged: what was
        taken comes back after the hold."""
        now = asyncio.get_running_loop().time()
        due = self._next_due is not None and self._next_due <= now
        if not due and now - self._last_pass < _RELAY_POLL:
            return 0
        self._last_pass, self._next_due = now, None
        try:
            return await self._relay_pass()
        except (BrokerError, NotImplementedError) as exc:
            log.warning("republishing parked events failed: %s", exc)
            self._due_at(_RELAY_POLL)
            return 0

    async def _relay_pass(self) -> int:
        batch = await self.store.events_due(_RELAY_LIMIT, _RELAY_HOLD)
        if batch.next_due is not None:
            self._due_at(batch.next_due - batch.now)
        if not batch.entries:
            return 0
        if len(batch.entries) >= _RELAY_LIMIT:
            self._due_at(0.0)
        state = await self._ready()
        by_group: dict[str, list[Parked | EventDeadLetter]] = {}
        for group, entry in batch.entries:
            by_group.setdefault(group, []).append(entry)
        for group, entries in by_group.items():
            failed, _ = await self.channels.confirmed(
                state, entries, to_group(self.names.group(group))
            )
            await self.store.unpark(group, [p.key for p in entries if p not in failed])
        return len(batch.entries)

    # -- inspection and dead letters --------------------------------------------------------------
    async def event_groups(self) -> list[GroupStats]:
        groups = await self.store.names_list("group")
        counts = await self.store.parked_counts()
        state = await self._ready()
        ready = await self._ready_counts(state, sorted(groups))
        out = []
        for group in sorted(groups):
            retrying, dead = counts.get(group, (0, 0))
            out.append(GroupStats(
                group=group, patterns=groups[group],
                lag=ready.get(group, 0) + len(state.buffers.get(group, ())),
                running=len(state.held.get(group, ())), retrying=retrying, dead=dead,
            ))  # fmt: skip
        return out

    async def _ready_counts(self, state: Channels, groups: list[str]) -> dict[str, int]:
        """Messages ready on each group's queue (``queue.declare`` passive), on a channel of
        its own: a queue deleted meanwhile closes that one, not the consumers'."""
        counts: dict[str, int] = {}
        channel = None
        try:
            for group in groups:
                if channel is None or channel.is_closed:
                    channel = await (await state.connection.channel()).get_underlay_channel()
                try:
                    ok = await channel.queue_declare(
                        self.names.group(group), passive=True, timeout=_RPC_TIMEOUT
                    )
                    counts[group] = int(ok.message_count or 0)
                except Exception as exc:  # no such queue (left elsewhere): nothing ready
                    log.debug("counting group %s: %s", group, exc)
        finally:
            if channel is not None:
                await close_quietly(channel)
        return counts

    async def event_dead_letters(self, group: str, limit: int = 100) -> list[EventDeadLetter]:
        return await self.store.parked_dead(group, limit)

    async def replay_events(self, group: str, keys: Sequence[str] | None = None) -> int:
        if await self._patterns(group) is None:
            return 0
        replayed = 0
        wanted = None if keys is None else set(keys)
        while True:
            dead = await self.store.parked_dead(group, _RELAY_LIMIT if wanted is None else 10**9)
            if wanted is not None:
                dead = [d for d in dead if d.key in wanted]
            if not dead:
                return replayed
            state = await self._ready()
            failed, last = await self.channels.confirmed(
                state, dead, to_group(self.names.group(group))
            )
            if failed:
                raise BrokerError(
                    f"replaying {len(failed)} event(s) of {group!r}: not confirmed ({last})"
                )
            await self.store.unpark(group, [d.key for d in dead])
            replayed += len(dead)
            if wanted is not None:
                return replayed
