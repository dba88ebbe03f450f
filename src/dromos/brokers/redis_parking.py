"""Event parking and the names registry of the Redis store (``memory_parking.py`` is the
reference). Every key shares the hash tag ``{<prefix>:amqp}``, so each operation is one Lua
script of ``redis_parking.lua`` (which maps the keys) on one slot: the same on a Cluster.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
from redis.exceptions import RedisError

from dromos.brokers.base import EventDeadLetter, EventsDue, Parked
from dromos.brokers.redis_due import due_arg
from dromos.errors import BrokerError
from dromos.job import JobError

if TYPE_CHECKING:
    from dromos.brokers.redis import _LoopState

__all__ = ["RedisParking"]

_errors = msgspec.json.Decoder(list[JobError])
_json = msgspec.json.Encoder()


class _Entry(msgspec.Struct, array_like=True):
    """An entry as the scripts keep it, opaque to them: [topic, payload, attempt, errors JSON,
    base] (one parked before base was kept has four values: base 0)."""

    topic: str
    payload: bytes
    attempt: int
    errors: str
    base: int = 0


_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder(_Entry).decode


def _entry(p: Parked) -> bytes:
    errors = _json.encode(p.errors).decode()
    return _pack(_Entry(p.topic, p.payload, p.attempt, errors, p.base))


def _parked(key: str, blob: bytes, due: float | None) -> Parked:
    e = _unpack(blob)
    return Parked(key, e.topic, e.payload, e.attempt, _errors.decode(e.errors), due, base=e.base)


class RedisParking:
    """Mixed into ``RedisBroker``: the parking methods of ``Broker``."""

    prefix: str
    _safe_url: str

    if TYPE_CHECKING:  # RedisBroker's plumbing

        async def _state(self) -> _LoopState: ...

    @property
    def _amqp_tag(self) -> str:
        return f"{{{self.prefix}:amqp}}"

    async def _park_call(self, script: str, *args: Any) -> Any:
        state = await self._state()
        tag = self._amqp_tag
        call = state.scripts[script](keys=[f"{tag}:due"], args=[tag, *args])
        try:
            # Shielded, as RedisBroker._call: a cancelled caller must not leave the
            # connection half-read.
            return await asyncio.shield(call)
        except RedisError as exc:
            raise BrokerError(f"Redis at {self._safe_url} failed {script}: {exc}") from exc

    async def _names_command(self, *command: Any) -> Any:
        state = await self._state()
        try:
            return await state.client.execute_command(*command)
        except RedisError as exc:
            raise BrokerError(f"Redis at {self._safe_url} failed {command[0]}: {exc}") from exc

    async def names_add(self, kind: str, names: Mapping[str, Sequence[str]]) -> None:
        if names:
            pairs = [x for n, p in names.items() for x in (f"{kind}:{n}", json.dumps(list(p)))]
            await self._names_command("HSET", f"{self._amqp_tag}:names", *pairs)

    async def names_list(self, kind: str) -> dict[str, tuple[str, ...]]:
        flat = await self._names_command("HGETALL", f"{self._amqp_tag}:names")
        pairs = flat.items() if isinstance(flat, dict) else zip(flat[::2], flat[1::2], strict=True)
        start = f"{kind}:"
        out = {}
        for field, patterns in pairs:
            name = field.decode() if isinstance(field, bytes) else str(field)
            if name.startswith(start):
                out[name[len(start) :]] = tuple(json.loads(patterns))
        return out

    async def names_drop(self, kind: str, names: Sequence[str]) -> None:
        if names:
            await self._names_command(
                "HDEL", f"{self._amqp_tag}:names", *(f"{kind}:{n}" for n in names)
            )

    async def park_events(self, group: str, parked: Sequence[Parked]) -> None:
        if parked:
            args: list[Any] = [group]
            for p in parked:
                args += [p.key, _entry(p), "" if p.due is None else due_arg(p.due, p.due_in)]
            await self._park_call("park_events", *args)

    async def events_due(self, limit: int, hold: float) -> EventsDue:
        out = await self._park_call("park_due", max(limit, 0), int(hold * 1000))
        now, ahead = int(out[0]) / 1000, int(out[1])
        entries = [
            (out[i].decode(), _parked(out[i + 1].decode(), out[i + 2], now + hold))
            for i in range(2, len(out), 3)
        ]
        return EventsDue(entries, None if ahead < 0 else ahead / 1000, now)

    async def unpark(self, group: str, keys: Sequence[str]) -> None:
        if keys:
            await self._park_call("park_unpark", group, *keys)

    async def parked_counts(self) -> dict[str, tuple[int, int]]:
        out = await self._park_call("park_counts")
        return {
            out[i].decode(): (int(out[i + 1]) - int(out[i + 2]), int(out[i + 2]))
            for i in range(0, len(out), 3)
        }

    async def parked_dead(self, group: str, limit: int) -> list[EventDeadLetter]:
        out = await self._park_call("park_dead", group, max(limit, 0))
        letters = []
        for i in range(0, len(out), 3):
            if not out[i + 1]:
                continue  # an entry deleted under its index: nothing to show
            p = _parked(out[i].decode(), out[i + 1], None)
            letters.append(EventDeadLetter(
                group=group, key=p.key, topic=p.topic, payload=p.payload, attempts=p.attempt,
                errors=p.errors, failed_at=datetime.fromtimestamp(int(out[i + 2]) / 1000, UTC),
            ))  # fmt: skip
        return letters

    async def drop_group(self, group: str) -> None:
        await self._park_call("park_drop", group)
