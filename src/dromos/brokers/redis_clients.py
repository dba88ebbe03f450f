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

On a single server the broker's scripts skip redis-py's command layer:
:meth:`TurnTakingRedis.send` writes them on a connection kept aside (see ``_SyncClient`` in
``redis.py`` for why).
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

__all__ = [
    "IN_FLIGHT",
    "KEPT",
    "MAX_CONNECTIONS",
    "TurnTakingCluster",
    "TurnTakingRedis",
    "checkout",
]

IN_FLIGHT = 256  # commands of one client out at once; more than one server needs to stay busy
MAX_CONNECTIONS = 1024  # the pool's bound (per node of a Cluster): turns, pipelines, scripts
KEPT = 16  # connections a client keeps aside for its scripts, at most: the rest go back


def checkout(pool: Any) -> Any:
    """A connection of a sync ``pool`` (redis-py before 5.3 wants a command name, later ones
    warn when given one); for an asyncio pool, a coroutine of one."""
    try:
        return pool.get_connection()
    except TypeError:
        return pool.get_connection("EVALSHA")


class _Turns:
    """Mixin over a redis-py asyncio client: ``execute_command`` waits for a turn."""

    _turns: asyncio.Semaphore | None = None

    def _turn(self) -> asyncio.Semaphore:
        turns = self._turns
        if turns is None:  # made on first use, in the loop that uses this client
            turns = self._turns = asyncio.Semaphore(IN_FLIGHT)
        return turns

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        async with self._turn():
            return await super().execute_command(*args, **options)  # type: ignore[misc]


class TurnTakingRedis(_Turns, aioredis.Redis):  # type: ignore[misc]
    """``redis.asyncio.Redis`` whose commands wait for a turn rather than fail."""

    _kept: list[Any] | None = None  # checked out of the pool: its close disconnects them too

    async def send(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """``commands`` in one write on a connection kept aside, in a turn, and their replies
        in order, an error reply as its exception. Raises ``ConnectionError`` or
        ``TimeoutError`` when the connection failed (it is dropped; nothing is retried)."""
        if self._kept is None:
            self._kept = []
        kept, pool = self._kept, self.connection_pool
        async with self._turn():
            conn = kept.pop() if kept else await checkout(pool)
            replies: list[Any] = []
            try:
                await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
                for _ in commands:
                    try:
                        replies.append(await conn.read_response())
                    except ResponseError as exc:  # read whole: the connection stays sound
                        replies.append(exc)
            except BaseException as exc:  # lost, or interrupted mid-reply: never reuse it
                await conn.disconnect(nowait=True)
                await pool.release(conn)
                if isinstance(exc, OSError):
                    raise RedisConnectionError(str(exc)) from exc
                raise
            if len(kept) < KEPT:
                kept.append(conn)
            else:
                await pool.release(conn)
            return replies


class TurnTakingCluster(_Turns, RedisCluster):  # type: ignore[misc]
    """``redis.asyncio.RedisCluster`` whose commands wait for a turn rather than fail."""
