"""The event bus of the Redis broker: the model of ``memory_events.py`` on a Redis Stream.

One stream per broker prefix is the log; a group is a consumer group of it (its position)
plus a few keys of our own for its events in flight (running under a lease, retrying, dead),
all under the hash tag ``{<prefix>:events}``, so that every operation is one Lua script
(``redis_events.lua``) on one slot: the same code on a single server and on a Cluster.
Waiting consumers are woken by a message on ``<prefix>:events``, through the broker's one
subscriber per loop (as idle workers are on the work channels).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
from redis.exceptions import RedisError

from dromos.brokers._notify import Notifier
from dromos.brokers.base import (
    BrokerOptions,
    EventDeadLetter,
    EventDelivery,
    EventOutcome,
    EventRecord,
    GroupStats,
)
from dromos.brokers.memory_events import poison_error
from dromos.brokers.redis_due import due_arg
from dromos.errors import BrokerError
from dromos.job import JobError

if TYPE_CHECKING:
    from dromos.brokers.redis import _LoopState

__all__ = ["RedisEventBus"]

_json = msgspec.json.Encoder()
_pack = msgspec.msgpack.Encoder().encode  # a settle's outcomes: one argument per batch
_errors = msgspec.json.Decoder(list[JobError])
_patterns = msgspec.json.Decoder(tuple[str, ...])
# The poison error is made here (by ``poison_error``, as the other brokers make it) and
# completed by the claim script, which alone knows the numbers: it replaces these markers.
_RECOVERIES_MARK, _ATTEMPT_MARK = 1234567891, 1987654321
_POISON = _json.encode(poison_error(_RECOVERIES_MARK, _ATTEMPT_MARK))
_LAST_SEQ = 2**64 - 1  # the highest sequence part of a stream id
_RECHECK = 1.0  # seconds between two looks at the server while waiting for a push
_MAX_RETENTION = 1e12  # seconds: longer is "forever" (keeps the ms within a Lua number)


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _outcomes(outcomes: Sequence[EventOutcome]) -> bytes:
    """A settle's outcomes as the scripts take them: one MessagePack array for the batch (the
    client encodes one argument instead of four per event)."""
    return _pack(
        [
            (o.key, o.attempt, "", "") if o.error is None else (
                o.key, o.attempt, _json.encode(o.error).decode(),
                "" if o.retry_at is None else due_arg(o.retry_at, o.retry_in),
            )
            for o in outcomes
        ]
    )  # fmt: skip


def _deliveries(flat: list[Any]) -> list[EventDelivery]:
    """A claim script's reply (5 values per delivery) as deliveries."""
    return [
        EventDelivery(
            key=flat[i].decode(),
            topic=flat[i + 1].decode(errors="replace"),
            payload=bytes(flat[i + 2]),
            attempt=int(flat[i + 3]),
            tries=int(flat[i + 4]),
        )
        for i in range(0, len(flat), 5)
    ]


def _start_id(start: str | float) -> str:
    """Where a new group starts: the stream id it has "already read".

    ``latest``: the last id ever added (``$``); ``earliest``: before everything (``0``); a
    Unix time: just before the first id of its millisecond, so the group gets the events
    published at or after it (to the ms: stream ids have no finer time).
    """
    if start == "latest":
        return "$"
    if start == "earliest":
        return "0"
    ms = math.floor(float(start) * 1000)
    return f"{ms - 1}-{_LAST_SEQ}" if ms > 0 else "0"


class RedisEventBus:
    """Mixed into ``RedisBroker``: the bus methods of ``Broker`` (see the module docstring)."""

    options: BrokerOptions
    prefix: str
    _safe_url: str
    _sync: Any  # RedisBroker's blocking client (None until opened)

    if TYPE_CHECKING:  # RedisBroker's plumbing

        async def _state(self) -> _LoopState: ...

        async def _subscribe(self, channels: Sequence[str]) -> bool: ...

        async def _unsubscribe(self, channels: Sequence[str]) -> None: ...

    def _init_bus(self) -> None:
        self._bus_tag = f"{{{self.prefix}:events}}"
        self._bus_channel = f"{self.prefix}:events"
        self._bus = Notifier()  # woken by RedisBroker's reader on a message on _bus_channel

    async def _bus_call(self, script: str, *args: Any) -> Any:
        state = await self._state()
        tag = self._bus_tag
        call = state.scripts[script](keys=[f"{tag}:log"], args=[tag, *args])
        try:
            # Shielded, as RedisBroker._call: a cancelled caller must not leave the
            # connection half-read.
            return await asyncio.shield(call)
        except RedisError as exc:
            raise BrokerError(f"Redis at {self._safe_url} failed {script}: {exc}") from exc

    def _retention_ms(self) -> int:
        return _ms(min(self.options.event_retention, _MAX_RETENTION))

    def _publish_args(self, events: Sequence[EventRecord]) -> list[Any]:
        args: list[Any] = [self._retention_ms(), self._bus_channel]
        for event in events:
            args += [event.topic, event.payload]
        return args

    async def publish(self, events: Sequence[EventRecord]) -> None:
        if events:
            await self._bus_call("events_publish", *self._publish_args(events))

    def publish_blocking(self, events: Sequence[EventRecord]) -> bool:
        # From the caller's thread on the plain client, as enqueue_blocking: no portal hop.
        sync = self._sync
        if sync is None:
            return False
        tag = self._bus_tag
        try:
            sync.publish(keys=[f"{tag}:log"], args=[tag, *self._publish_args(events)])
        except RedisError as exc:
            raise BrokerError(f"Redis at {self._safe_url} failed events_publish: {exc}") from exc
        return True

    async def join_group(self, group: str, patterns: Sequence[str], start: str | float) -> None:
        listed = _json.encode(list(patterns))
        await self._bus_call("events_join", group, listed, _start_id(start))

    async def leave_group(self, group: str) -> None:
        await self._bus_call("events_leave", group)

    async def claim_events(self, group: str, limit: int, lease: float) -> list[EventDelivery]:
        if limit <= 0:
            return []
        return _deliveries(
            await self._bus_call("events_claim", *self._claim_args(group, limit, lease))
        )

    def _claim_args(self, group: str, limit: int, lease: float) -> list[Any]:
        # At most this many new entries are read per claim, matching or not: a claim of a
        # group that matches little never runs long (a short claim is claimed again soon).
        scan = max(4 * limit, 256)
        return [group, limit, _ms(lease), self.options.max_recoveries, _POISON, scan,
                self._retention_ms()]  # fmt: skip

    async def settle_events(self, group: str, outcomes: Sequence[EventOutcome]) -> int:
        if not outcomes:
            return 0
        return int(
            await self._bus_call("events_settle", group, self._bus_channel, _outcomes(outcomes))
        )

    async def settle_and_claim_events(
        self, group: str, outcomes: Sequence[EventOutcome], limit: int, lease: float
    ) -> list[EventDelivery]:
        if not outcomes:
            return await self.claim_events(group, limit, lease)
        if limit <= 0:
            await self.settle_events(group, outcomes)
            return []
        args = self._claim_args(group, limit, lease)
        flat = await self._bus_call(
            "events_settle_claim", *args, self._bus_channel, _outcomes(outcomes)
        )
        return _deliveries(flat)

    async def wait_for_events(self, groups: Sequence[str], timeout: float) -> None:
        """Return when a claim of one of ``groups`` may find events, or after ``timeout``."""
        state = await self._state()
        channel = self._bus_channel
        # Stays subscribed, as the work channels do: an idle consumer waits again and again.
        if channel not in state.channels and not await self._subscribe([channel]):
            await self._unsubscribe([channel])  # so that the next wait subscribes again
            raise BrokerError(f"Redis at {self._safe_url} did not confirm SUBSCRIBE {channel}")
        deadline = time.time() + timeout
        with self._bus.listen([channel]) as listener:  # before the checks: no lost wake-up
            while True:
                now = time.time()
                due = await asyncio.shield(self._bus_due(groups))  # see _bus_call
                if due <= now or now >= deadline:
                    return
                # A bounded wait, then a fresh look: a push lost while the subscriber
                # reconnected costs at most _RECHECK.
                if await listener.wait(min(deadline, due, now + _RECHECK) - now):
                    return
                if time.time() >= min(deadline, due):
                    return

    async def _bus_due(self, groups: Sequence[str]) -> float:
        """0 if a claim of ``groups`` may find events now, else when one of their leases or
        retries comes due (inf: none)."""
        if not groups:
            return math.inf
        due = int(await self._bus_call("events_due", *groups))
        return math.inf if due < 0 else due / 1000

    async def event_groups(self) -> list[GroupStats]:
        flat = await self._bus_call("events_groups")
        return [
            GroupStats(
                group=flat[i].decode(),
                patterns=_patterns.decode(flat[i + 1]),
                lag=int(flat[i + 2]),
                running=int(flat[i + 3]),
                retrying=int(flat[i + 4]),
                dead=int(flat[i + 5]),
            )
            for i in range(0, len(flat), 6)
        ]

    async def event_dead_letters(self, group: str, limit: int = 100) -> list[EventDeadLetter]:
        if limit <= 0:
            return []
        flat = await self._bus_call("events_dead", group, limit)
        return [
            EventDeadLetter(
                group=group,
                key=flat[i].decode(),
                topic=flat[i + 1].decode(errors="replace"),
                payload=bytes(flat[i + 2]),
                attempts=int(flat[i + 3]),
                errors=_errors.decode(flat[i + 4]),
                failed_at=datetime.fromtimestamp(int(flat[i + 5]) / 1000, UTC),
            )
            for i in range(0, len(flat), 6)
        ]

    async def replay_events(self, group: str, keys: Sequence[str] | None = None) -> int:
        if keys is not None and not keys:
            return 0  # none named: none replayed (None names them all)
        args = [group, self._bus_channel, *(keys or ())]
        return int(await self._bus_call("events_replay", *args))
