"""The broker's asyncio Redis clients: commands beyond a bound wait their turn, none fails.

redis-py's asyncio pool raises ``MaxConnectionsError`` ("Too many connections") once all its
``max_connections`` are in use, instead of waiting for one to come back. A process with more
broker calls in flight than that (a gateway under load: thousands of status reads and
``Prefer: wait`` requests at once) then failed most of them. redis-py's
``BlockingConnectionPool`` waits instead, but costs some 20 us more per command (a condition
and a timeout on every checkout), on every command of every worker.

These clients take a turn first: at most :data:`IN_FLIGHT` commands of one client are out at
once, the others wait in order on a semaphore (about 1 us when nobody waits), and the pool,
larger than that, always has a connection for them and room for the pipelines, which borrow
theirs apart. One client serves one event loop, as the broker keeps one per loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

__all__ = ["IN_FLIGHT", "MAX_CONNECTIONS", "TurnTakingCluster", "TurnTakingRedis"]

IN_FLIGHT = 256  # commands of one client out at once; more than one server needs to stay busy
MAX_CONNECTIONS = 1024  # the pool's bound (per node of a Cluster): turns, pipelines, scripts


class _Turns:
    """Mixin over a redis-py asyncio client: ``execute_command`` waits for a turn."""

    _turns: asyncio.Semaphore | None = None

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        turns = self._turns
        if turns is None:  # made on first use, in the loop that uses this client
            turns = self._turns = asyncio.Semaphore(IN_FLIGHT)
        async with turns:
            return await super().execute_command(*args, **options)  # type: ignore[misc]


class TurnTakingRedis(_Turns, aioredis.Redis):  # type: ignore[misc]
    """``redis.asyncio.Redis`` whose commands wait for a turn rather than fail."""


class TurnTakingCluster(_Turns, RedisCluster):  # type: ignore[misc]
    """``redis.asyncio.RedisCluster`` whose commands wait for a turn rather than fail."""
