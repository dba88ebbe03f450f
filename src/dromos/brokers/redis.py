"""``redis://`` (and ``rediss://``, and Redis Cluster): jobs, status and results in Redis.

Design: each queue is a handful of sorted sets and one hash per job, all under the queue's
hash tag ``{prefix:queue}``; every operation is one Lua script (``redis.lua``, which opens
with the map of its keys) run atomically on that one slot, so the same code serves a single
server and a Cluster. Batches are one script call per queue: one round trip for many jobs.
Leases and due times use the server's clock (``TIME`` inside the scripts).

Pushes instead of polls: scripts publish on ``<prefix>:work:<queue>`` when jobs become ready
and on ``<prefix>:done:<queue>`` when jobs end (one message per batch, carrying each job's
status, so that a waiting caller needs no read after it); idle workers and waiting callers
subscribe (and re-check now and then, in case a message was missed during a reconnect).

URL: ``redis://[:password@]host:port[/db]?prefix=NAME``; ``rediss://`` for TLS; a Cluster is
given by the URL of any of its nodes (detected with ``INFO cluster``). Connection errors are
retried with backoff by the client; scripts are safe to repeat (enqueue is idempotent by job
id, settle is fenced). Durability is what the server's AOF settings give
(``appendfsync always`` for no loss).
"""

from __future__ import annotations

import asyncio
import heapq
import math
import os
import re
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from dromos._loop import cancel_and_wait, close_per_loop
from dromos.batch import BatchStatus
from dromos.brokers._notify import Notifier
from dromos.brokers.base import (
    DEPENDS_ON_HEADER,
    BatchRecord,
    Broker,
    BrokerOptions,
    Delivery,
    EnqueueRequest,
    Gone,
    HeartbeatReply,
    Lease,
    Missing,
    Outcome,
    ProgressUpdate,
    QueueStats,
    Recorded,
    RelayBatch,
    RelayJob,
    Waited,
    WebhookDue,
    dependencies,
    job_status,
    webhook_attempt_json,
    webhook_attempts,
)
from dromos.brokers.redis_clients import (
    IN_FLIGHT,
    KEPT,
    MAX_CONNECTIONS,
    TurnTakingCluster,
    TurnTakingRedis,
    checkout,
)
from dromos.brokers.redis_due import due_arg
from dromos.brokers.redis_events import RedisEventBus
from dromos.brokers.redis_parking import RedisParking
from dromos.brokers.redis_retry import RETRIES, async_retry, sync_retry
from dromos.brokers.redis_scripts import scripts
from dromos.errors import BrokerError, ConfigurationError, DependencyNotFound
from dromos.job import JobError, JobState, JobStatus, WebhookAttempt
from dromos.task import MAX_PRIORITY

__all__ = ["RedisBroker"]

_S = JobState
_json = msgspec.json.Encoder()
_pack = msgspec.msgpack.Encoder().encode  # the per-job values of a batch: one argument


def _text(data: bytes) -> msgspec.Raw:
    """``data`` as a MessagePack str, byte for byte.

    Redis's Lua cmsgpack cannot read the bin type that bytes become, and decoding a payload
    to ``str`` first would cost a copy and a UTF-8 check for nothing.
    """
    n = len(data)
    if n < 32:
        head = bytes((0xA0 | n,))
    elif n < 0x100:
        head = bytes((0xD9, n))
    elif n < 0x10000:
        head = b"\xda" + n.to_bytes(2, "big")
    else:
        head = b"\xdb" + n.to_bytes(4, "big")
    return msgspec.Raw(head + data)


_errors = msgspec.json.Decoder(list[JobError])
_NO_MESSAGE = "\0"
_STATE_SETS = {
    "scheduled": _S.SCHEDULED,
    "waiting": _S.SCHEDULED,  # dependents waiting for their dependencies
    "ready": _S.QUEUED,
    "running": _S.RUNNING,
    "retrying": _S.RETRYING,
    "succeeded": _S.SUCCEEDED,
    "failed": _S.FAILED,
    "cancelled": _S.CANCELLED,
}
_DUE_SETS = ("scheduled", "retrying")  # scored by eta (ms): a due member shows queued
_RECHECK = 1.0  # seconds between re-checks while waiting for a push
_REMEMBERED = 100_000  # job ids whose queue an instance remembers (see RedisBroker._enqueued)
_LEASES = "__leases__"  # the "queue" whose hash tag the named leases share
_PRIORITY_UNIT = 2**40  # ready score = -priority * _PRIORITY_UNIT + seq (see redis.lua)
_NO_DEPENDENCY = re.compile(r"DROMOS_NO_DEPENDENCY (\S+)")  # the enqueue script's refusal


def _ms(moment: float) -> int:
    return int(moment * 1000)


def _retries(value: str | None) -> int:
    """The URL's ``retries=``: how often a lost connection or a timeout is retried (with
    backoff) before the call fails; 0 fails at once, as a health check may want."""
    if value is None:
        return RETRIES
    if not (value.isascii() and value.isdigit()):
        raise ConfigurationError(f"retries= must be a whole number >= 0, not {value!r}")
    return int(value)


def _seconds(value: bytes | None) -> float | None:
    """A stored time in ms as Unix seconds."""
    return None if value is None else int(value) / 1000


# The fields a done message carries per job, in redis.lua's STATUS_FIELDS order (a job's
# id and queue are in its key, not in its hash).
_STATUS_FIELDS = (
    "task", "state", "progress", "message", "attempt", "priority", "result", "errors",
    "created_at", "eta", "started_at", "finished_at", "cancel",
)  # fmt: skip
_done_message = msgspec.msgpack.Decoder(list[str | list[str | bool] | bool])
_notice = msgspec.msgpack.Decoder(list[str | bool])  # a status pushed to a blocking caller
# A work channel's message other than "1": jobs handed to an idle worker ({its idle entry,
# then id attempt failures payload per job}), or {entry} alone (stop_claiming's fence).
_handed_message = msgspec.msgpack.Decoder(list[str | int])
_FENCE_WAIT = 2.0  # seconds stop_claiming waits for its fence (else the leases run out)


def _carried(values: list[str | bool]) -> dict[str, bytes]:
    """A job's fields as a done message carries them (``False`` for a field not set)."""
    return {
        name: value.encode()
        for name, value in zip(_STATUS_FIELDS, values, strict=True)
        if isinstance(value, str)
    }


def _status(f: dict[str, bytes], job_id: str, queue: str) -> JobStatus:
    """A job's status from its hash fields (names decoded, values as stored; a count not
    written yet is 0)."""
    return job_status(
        job_id=job_id, task=f["task"].decode(), queue=queue,
        state=JobState(f["state"].decode()), progress=float(f.get("progress", b"0")),
        message=f["message"].decode() if "message" in f else None,
        attempts=int(f.get("attempt", b"0")), priority=int(f.get("priority", b"0")),
        result=f.get("result"),
        errors=_errors.decode(f["errors"]) if "errors" in f else [],
        created_at=_seconds(f.get("created_at")), eta=_seconds(f.get("eta")),
        started_at=_seconds(f.get("started_at")), finished_at=_seconds(f.get("finished_at")),
        cancel_requested=f.get("cancel") == b"1", webhooks=f.get("webhooks"),
    )  # fmt: skip


def _fields_status(fields: dict[bytes, bytes], job_id: str, queue: str) -> JobStatus | None:
    """:func:`_status` from a read of the job's hash (``None``: no such job)."""
    return _status({k.decode(): v for k, v in fields.items()}, job_id, queue) if fields else None


class _LoopState:
    """What one event loop holds: a client, and a subscriber feeding the notifiers."""

    def __init__(self, client: Any, subscriber: aioredis.Redis) -> None:
        self.client = client
        self.subscriber = subscriber
        self.pubsub = subscriber.pubsub()
        self.channels: dict[str, int] = {}
        self.reader: asyncio.Task[None] | None = None
        self.scripts: dict[str, Any] = {}
        # For idle workers (see RedisBroker.wait_for_work): pushes counted per work channel
        # whose subscription the server confirmed (those in ``listening``), and per queue what
        # the loop's last claim said comes due next: (push count when it was sent, seconds).
        self.pushes: dict[str, int] = {}
        self.listening: set[str] = set()
        self.due: dict[str, tuple[int, float]] = {}


def _evalsha(script: Any, keys: list[str], args: list[Any]) -> tuple[Any, ...]:
    return ("EVALSHA", script.sha, len(keys), *keys, *args)


def _forgotten(reply: Any) -> bool:
    """Whether the server forgot the script (the client's own call loads it again), for a
    reply read apart from the client; raises any other error reply."""
    if isinstance(reply, NoScriptError):
        return True
    if isinstance(reply, RedisError):
        raise reply
    return False


class _SyncClient:
    """A blocking client for :meth:`RedisBroker.enqueue_blocking` and ``publish_blocking``
    (thread-safe: it pools).

    Same retries as the asyncio clients; the scripts are already loaded by then (and
    redis-py's Script loads it again after a server restart).

    :meth:`run` sends a script on a connection of its own, without redis-py's command layer:
    on a single server, a blocking ``enqueue()`` spent more in that layer (the pool's
    checkout and return, its retry and metrics wrappers, a poll of the socket before each
    command) than the server spent running the script: 200-240 us a call against 140-160 us
    for the same ``EVALSHA`` sent and read on a connection held (``/tmp`` probe, a script
    that returns 1). Anything unusual (no connection kept, a lost connection, a server that
    forgot the script) goes through the client as before, with its retries.
    """

    def __init__(
        self, url: str, cluster: bool | None, sources: dict[str, str], retries: int
    ) -> None:
        import redis

        self._pool: Any = None  # the single server's pool (on a Cluster, redis-py routes)
        self._kept: list[Any] = []  # connections kept aside for run(), by this process:
        self._pid = os.getpid()  # a child forked later must not share their sockets
        retry = sync_retry(retries)
        # Threads beyond the pool's size wait for a connection (redis-py's plain pool
        # refuses the 101st: a threaded web server's enqueues failed).
        blocking = redis.BlockingConnectionPool
        if cluster:
            self.client: Any = redis.RedisCluster.from_url(
                url, retry=retry, max_connections=IN_FLIGHT, connection_pool_class=blocking
            )
        else:
            errors = [RedisConnectionError, RedisTimeoutError]
            pool = blocking.from_url(
                url, max_connections=IN_FLIGHT, retry=retry, retry_on_error=errors
            )
            self.client = redis.Redis(connection_pool=pool)
            self.client.auto_close_connection_pool = True  # close() closes the pool too
            self._pool = pool
        self.enqueue = self.client.register_script(sources["enqueue"])
        self.publish = self.client.register_script(sources["events_publish"])
        self.await_ = self.client.register_script(sources["await"])
        self.unawait = self.client.register_script(sources["unawait"])

    @property
    def single(self) -> bool:
        """A single server (not a Cluster): :meth:`send` serves it."""
        return self._pool is not None

    def run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """``script(keys=keys, args=args)``, through :meth:`send` on a single server; the
        client's own path (its retries, and loading the script again) when that fails."""
        if self._pool is None:
            return script(keys=keys, args=args)
        try:
            [reply] = self.send([_evalsha(script, keys, args)])
        except (RedisConnectionError, RedisTimeoutError):
            return script(keys=keys, args=args)
        return script(keys=keys, args=args) if _forgotten(reply) else reply

    def send(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """``commands`` in one write on a connection kept aside (list ``pop`` and ``append``
        are atomic: no lock), and their replies in order, an error reply as its exception.
        Raises ``ConnectionError`` or ``TimeoutError`` when the connection failed (it is
        dropped, and nothing is retried here). Single server only."""
        if self._pid != os.getpid():  # forked: the pool starts afresh here, and so do we
            self._kept, self._pid = [], os.getpid()
        try:
            conn = self._kept.pop()
        except IndexError:
            conn = checkout(self._pool)
        replies: list[Any] = []
        try:
            conn.send_packed_command(conn.pack_commands(commands))
            for _ in commands:
                try:
                    replies.append(conn.read_response())
                except ResponseError as exc:  # read whole: the connection stays sound
                    replies.append(exc)
        except BaseException as exc:  # lost, or interrupted mid-reply: never reuse it
            conn.disconnect()
            self._pool.release(conn)
            if isinstance(exc, OSError):
                raise RedisConnectionError(str(exc)) from exc
            raise
        if len(self._kept) < KEPT:
            self._kept.append(conn)
        else:
            self._pool.release(conn)
        return replies


class RedisBroker(RedisEventBus, RedisParking, Broker):
    """Jobs in Redis (single server or Cluster); see the module docstring."""

    schemes = ("redis", "rediss")

    def __init__(self, url: str, options: BrokerOptions | None = None) -> None:
        super().__init__(options)
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        self.prefix = query.pop("prefix", "dromos")
        if not self.prefix or any(c in self.prefix for c in "{}"):
            raise ConfigurationError("prefix= must be a non-empty name without { or }")
        self._retries = _retries(query.pop("retries", None))
        self.url = urlunsplit(parts._replace(query=urlencode(query)))
        host = parts.netloc.rpartition("@")[2]  # host:port, without the credentials
        self._safe_url = urlunsplit(parts._replace(netloc=host, query=""))
        self._sources: dict[str, str] = {}  # the scripts, once the server's kind is known
        self._loops: dict[asyncio.AbstractEventLoop, _LoopState] = {}
        self._creating: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
        self._cluster: bool | None = None
        self._queues: set[str] = set()
        self._held: dict[str, str] = {}  # job id -> queue, for the jobs this instance leased
        self._work = Notifier()
        self._done = Notifier()
        self._confirmed = Notifier()  # keyed by channel: the server confirmed the subscription
        self._done_prefix = f"{self.prefix}:done:"
        self._sync: _SyncClient | None = None  # for enqueue_blocking; made when opened
        # job id -> queue of the jobs this instance enqueued lately, so that waiting for one
        # needs no lookup first (bounded: forgotten all at once past _REMEMBERED).
        self._enqueued: dict[str, str] = {}
        # job id -> status values a done message carried, for a caller waiting for that job
        # (taken by its wait(); only ids somebody waits for are kept).
        self._statuses: dict[str, list[str | bool]] = {}
        self._hooks: dict[str, str] = {}  # job id -> queue of the webhook deliveries leased
        self._batch_homes: dict[str, str] = {}  # batch id -> the queue whose tag its key has
        self._relayed: dict[str, str] = {}  # job id -> queue of the jobs relay_due handed out
        # Idle workers (redis.lua's hand_over): the entries this instance made for the
        # workers that claim through it while listening ("<worker>#<instance>": a name given
        # to workers in two processes is two entries, so a job handed to one runs in one),
        # and the jobs handed to them not yet taken by their next claim.
        self._instance = uuid.uuid4().hex[:12]
        self._claimers: set[tuple[str, str]] = set()  # (queue, entry)
        self._handed: dict[tuple[str, str], list[Delivery]] = {}  # (queue, worker) -> jobs
        self._fenced = Notifier()  # keyed by (queue, entry): its stop_claiming fence arrived
        self._init_bus()

    # -- plumbing ---------------------------------------------------------------------------
    def _tag(self, queue: str) -> str:
        return f"{{{self.prefix}:{queue}}}"

    def _work_channel(self, queue: str) -> str:
        return f"{self.prefix}:work:{queue}"

    def _done_channel(self, queue: str) -> str:
        return f"{self.prefix}:done:{queue}"

    async def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is not None:
            return state
        # One state per loop, also when many coroutines ask at once on first use.
        async with self._creating.setdefault(loop, asyncio.Lock()):
            return self._loops.get(loop) or await self._new_state(loop)

    async def _new_state(self, loop: asyncio.AbstractEventLoop) -> _LoopState:
        retry = async_retry(self._retries)
        errors = [RedisConnectionError, RedisTimeoutError, ConnectionResetError]
        subscriber = aioredis.Redis.from_url(
            self.url, retry=retry, retry_on_error=errors, health_check_interval=10
        )
        try:
            if self._cluster is None:
                info = await subscriber.info("cluster")
                self._cluster = bool(info.get("cluster_enabled"))
        except RedisError as exc:
            await subscriber.aclose()
            raise BrokerError(f"cannot reach Redis at {self._safe_url}: {exc}") from exc
        cluster = bool(self._cluster)
        self._sources = self._sources or {
            **scripts(cluster, relay=self.options.relay),
            **scripts(cluster, "redis_events.lua"),  # the event bus (RedisEventBus)
            **scripts(cluster, "redis_parking.lua"),  # event parking (RedisParking)
        }
        client: Any = (
            TurnTakingCluster.from_url(self.url, retry=retry, max_connections=MAX_CONNECTIONS)
            if self._cluster
            else TurnTakingRedis.from_url(
                self.url, retry=retry, retry_on_error=errors, max_connections=MAX_CONNECTIONS
            )
        )
        state = _LoopState(client, subscriber)
        for name, source in self._sources.items():
            state.scripts[name] = client.register_script(source)
            # Loaded up front (on every primary of a Cluster): concurrent first calls would all
            # miss with NOSCRIPT at once, which redis-py's async Cluster does not survive.
            await client.script_load(source)
        self._loops[loop] = state
        if self._sync is None:
            self._sync = _SyncClient(self.url, self._cluster, self._sources, self._retries)
        return state

    async def _call(self, script: str, queue: str, *args: Any) -> Any:
        state = await self._state()
        tag = self._tag(queue)
        keys, argv = [f"{tag}:ready"], [tag, *args]
        sent = state.scripts[script]
        call = sent(keys=keys, args=argv) if self._cluster else self._run(state, sent, keys, argv)
        try:
            # Shielded: a caller cancelled mid-command (a worker stopping) must not leave the
            # connection half-read; the command finishes on its own and its reply is dropped.
            return await asyncio.shield(call)
        except RedisError as exc:
            raise BrokerError(f"Redis at {self._safe_url} failed {script}: {exc}") from exc

    @staticmethod
    async def _run(state: _LoopState, script: Any, keys: list[str], args: list[Any]) -> Any:
        """``script(keys=keys, args=args)`` on a single server, through the client's
        :meth:`~dromos.brokers.redis_clients.TurnTakingRedis.send`, as ``_SyncClient.run``."""
        try:
            [reply] = await state.client.send([_evalsha(script, keys, args)])
        except (RedisConnectionError, RedisTimeoutError):
            return await script(keys=keys, args=args)
        return await script(keys=keys, args=args) if _forgotten(reply) else reply

    async def _known_queues(self) -> set[str]:
        state = await self._state()
        members = await state.client.smembers(f"{self.prefix}:queues")
        self._queues |= {m.decode() for m in members}
        return self._queues

    async def _register(self, queues: Iterable[str]) -> None:
        new = set(queues) - self._queues
        if new:
            state = await self._state()
            await state.client.sadd(f"{self.prefix}:queues", *sorted(new))
            self._queues |= new

    async def _queue_of(self, job_ids: Iterable[str]) -> dict[str, str]:
        """The queue of each job: known for jobs this instance leased, else looked up."""
        found = {j: self._held[j] for j in job_ids if j in self._held}
        missing = list(dict.fromkeys(j for j in job_ids if j not in found))
        if missing:
            state = await self._state()
            queues = sorted(await self._known_queues())
            try:
                async with state.client.pipeline(transaction=False) as pipe:  # one round trip
                    for job_id in missing:
                        for queue in queues:
                            pipe.exists(f"{self._tag(queue)}:job:{job_id}")
                    hits = iter(await pipe.execute())
            except RedisError as exc:
                raise BrokerError(f"Redis at {self._safe_url} failed a lookup: {exc}") from exc
            for job_id in missing:
                for queue in queues:
                    if next(hits) and job_id not in found:
                        found[job_id] = queue
        return found

    async def _homes(self, job_ids: Sequence[str]) -> dict[str, str]:
        """:meth:`_queue_of`, first from what this instance knows: the jobs it enqueued,
        leased, or handed to a relay."""
        found: dict[str, str] = {}
        for job_id in job_ids:
            hint = self._enqueued.get(job_id) or self._relayed.get(job_id)
            if hint is not None:
                found[job_id] = hint
        return found | await self._queue_of([j for j in job_ids if j not in found])

    def _by_queue(self, queues: dict[str, str], items: Sequence[Any]) -> dict[str, list[Any]]:
        groups: dict[str, list[Any]] = {}
        for item in items:
            queue = queues.get(item.job_id)
            if queue is not None:
                groups.setdefault(queue, []).append(item)
        return groups

    async def open(self) -> None:
        await self._state()

    async def close(self) -> None:
        """Close the connections of every loop that used this broker (each on its own loop)."""
        sync, self._sync = self._sync, None
        if sync is not None:
            sync.client.close()  # its pool's close reaches the connections kept aside too
        states, self._loops = self._loops, {}
        self._creating = {}
        await close_per_loop(states, self._close_state)

    @staticmethod
    async def _close_state(state: _LoopState) -> None:
        if state.reader is not None:
            await cancel_and_wait([state.reader])
        await state.pubsub.aclose()  # type: ignore[no-untyped-call]
        await state.subscriber.aclose()
        await state.client.aclose()

    # -- pushes -----------------------------------------------------------------------------
    async def _subscribe(self, channels: Sequence[str]) -> bool:
        """Subscribe (counted per channel); False if the server did not confirm in time."""
        state = await self._state()
        new = [c for c in channels if state.channels.get(c, 0) == 0]
        for channel in channels:
            state.channels[channel] = state.channels.get(channel, 0) + 1
        if new:
            # Wait for the server's confirmation (it confirms in order: the last one will do),
            # so that a check made after this cannot miss a message published meanwhile.
            with self._confirmed.listen(new[-1:]) as confirmed:
                await state.pubsub.subscribe(*new)
                self._start_reader(state)
                return await confirmed.wait(_RECHECK)
        self._start_reader(state)
        return True

    def _start_reader(self, state: _LoopState) -> None:
        """The loop's one reader of pushes, started once its connection exists: a reader
        started before the first SUBSCRIBE would race it for the connection."""
        if state.reader is None or state.reader.done():
            state.reader = asyncio.create_task(self._read(state))

    async def _unsubscribe(self, channels: Sequence[str]) -> None:
        state = await self._state()
        gone = []
        for channel in channels:
            state.channels[channel] -= 1
            if state.channels[channel] <= 0:
                del state.channels[channel]
                gone.append(channel)
        if gone:
            await state.pubsub.unsubscribe(*gone)

    async def _read(self, state: _LoopState) -> None:
        while True:
            try:
                message = await state.pubsub.get_message(timeout=1.0)
            except Exception:  # the reader must outlive anything: without it, no pushes
                # Pushes may be lost while the client reconnects and resubscribes: no claim's
                # report of what comes due can be trusted until the next claim.
                state.due.clear()
                await asyncio.sleep(0.5)
                continue
            if message is None:
                continue
            channel = message["channel"].decode()
            if message["type"] != "message":
                if message["type"] == "subscribe":
                    self._confirmed.notify((channel,))
            elif channel.startswith(self._done_prefix):
                self._ended(message["data"])
            elif channel == self._bus_channel:
                self._bus.notify((channel,))
            elif message["data"] == b"1":
                state.pushes[channel] = state.pushes.get(channel, 0) + 1
                self._work.notify((channel[len(f"{self.prefix}:work:") :],))
            else:
                self._handed_over(channel[len(f"{self.prefix}:work:") :], message["data"])

    def _handed_over(self, queue: str, data: bytes) -> None:
        """Jobs handed to an idle worker: kept for its next claim if it is one of ours (the
        other workers on the channel ignore them: nothing was left ready for them)."""
        try:
            items = _handed_message.decode(data)
        except msgspec.DecodeError:
            return  # not ours (another version?)
        entry = items[0]
        if not isinstance(entry, str) or (queue, entry) not in self._claimers:
            return
        if len(items) == 1:
            self._fenced.notify(((queue, entry),))
            return
        handed = self._handed.setdefault((queue, entry.rpartition("#")[0]), [])
        for i in range(1, len(items) - 3, 4):
            job_id, attempt, failures, payload = (str(v) for v in items[i : i + 4])
            self._held[job_id] = queue
            handed.append(Delivery(job_id, int(attempt), int(failures), payload.encode()))
        self._work.notify((queue,))

    def _ended(self, data: bytes) -> None:
        """A done message: keep the statuses it carries for their waiters, then wake them."""
        try:
            items = _done_message.decode(data)
        except msgspec.DecodeError:
            return  # not ours (another version?): waiters re-check on their own
        ids = [i for i in items[0::2] if isinstance(i, str)]
        for job_id, values in zip(ids, items[1::2], strict=False):
            if isinstance(values, list) and self._done.has(job_id):
                if len(self._statuses) >= _REMEMBERED:  # waiters that left before taking theirs
                    self._statuses.clear()
                self._statuses[job_id] = values
        self._done.notify(ids)

    # -- producing ------------------------------------------------------------------------
    async def enqueue(self, requests: Sequence[EnqueueRequest]) -> list[str]:
        groups, batches = self._batches(requests, await self._dependencies(requests))
        await self._register(groups)
        return self._stored(requests, groups, await self._enqueue(batches))

    async def _dependencies(self, requests: Sequence[EnqueueRequest]) -> dict[int, list[Any]]:
        """What the enqueue script needs of each job with dependencies (by request index):
        its queue's done channel, the retention times, then each dependency's tag and id.

        A dependency's queue is learned here (the script needs its tag): one the broker does
        not know refuses the call before anything is sent. A Cluster keeps a dependent and its
        dependencies in one slot, so it refuses a dependency in another queue.
        """
        wanted = {i: deps for i, r in enumerate(requests) if (deps := dependencies(r.message))}
        if not wanted:
            return {}
        await self._state()  # learns whether the server is a Cluster
        ids = {d for deps in wanted.values() for d in deps}
        hints = {j: q for j in ids if (q := self._enqueued.get(j) or self._held.get(j))}
        where = hints | await self._queue_of([j for j in ids if j not in hints])
        opts = self.options
        out: dict[int, list[Any]] = {}
        for index, deps in wanted.items():
            queue = requests[index].message.queue
            args: list[Any] = [
                self._done_channel(queue),
                _ms(opts.result_ttl),
                _ms(opts.dead_letter_ttl),
            ]
            for dep in deps:
                if dep not in where:
                    raise DependencyNotFound(dep)
                if self._cluster and where[dep] != queue:
                    raise ConfigurationError(
                        f"on a Redis Cluster a job and its dependencies must be in one queue "
                        f"(a dependent is counted down in its dependency's slot): {dep} is in "
                        f"{where[dep]!r}, not {queue!r}"
                    )
                args += [self._tag(where[dep]), dep]
            out[index] = args
        return out

    def enqueue_blocking(self, requests: Sequence[EnqueueRequest]) -> list[str] | None:
        # A blocking caller sends the script from its own thread on a plain client: handing
        # the call to the portal's loop and back costs more than the round trip itself.
        sync = self._sync
        if sync is None or any(DEPENDS_ON_HEADER in r.message.headers for r in requests):
            return None  # dependencies are looked up first, on the loop
        groups, batches = self._batches(requests)
        try:
            new = set(groups) - self._queues
            if new:
                sync.client.sadd(f"{self.prefix}:queues", *sorted(new))
                self._queues |= new
            if len(batches) == 1 or self._cluster:
                stored = [
                    sync.run(sync.enqueue, [f"{self._tag(q)}:ready"], [self._tag(q), *args])
                    for q, args in batches
                ]
            else:
                with sync.client.pipeline(transaction=True) as pipe:
                    for q, args in batches:
                        tag = self._tag(q)
                        sync.enqueue(keys=[f"{tag}:ready"], args=[tag, *args], client=pipe)
                    stored = pipe.execute()
        except RedisError as exc:
            raise BrokerError(f"Redis at {self._safe_url} failed enqueue: {exc}") from exc
        return self._stored(requests, groups, stored)

    def wait_blocking(self, job_id: str, timeout: float | None) -> Waited:
        # A blocking caller waits in its own thread: redis.lua's await counts it as a waiter
        # and, in the same write, BLPOP waits for the status that the script ending the
        # job pushes (T:notify:<id>). Handing result() to the portal's loop and back costs two
        # thread wake-ups and a status read, as much as the round trip it waits for. Served
        # on a single server, for the jobs whose queue this instance knows (it enqueued or
        # leased them), with a timeout above zero; the portal's wait() serves the rest.
        sync = self._sync
        queue = self._enqueued.get(job_id) or self._held.get(job_id)
        if (
            sync is None
            or not sync.single
            or queue is None
            or (timeout is not None and timeout <= 0)
        ):
            return False
        tag = self._tag(queue)
        key = f"{tag}:notify:{job_id}"
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            registered = False
            while True:
                left = _RECHECK if deadline is None else min(_RECHECK, deadline - time.monotonic())
                if left <= 0:
                    if registered:  # uncounted: else the count would be another waiter's
                        sync.unawait(keys=[key], args=[tag, job_id])
                    return None
                commands: list[tuple[Any, ...]] = []
                if not registered:
                    commands.append(("EVALSHA", sync.await_.sha, 1, key, tag, job_id))
                commands.append(("BLPOP", key, max(left, 0.001)))
                replies = sync.send(commands)
                if not registered and isinstance(replies[0], NoScriptError):
                    # after a server restart or SCRIPT FLUSH (the BLPOP waited in vain)
                    sync.client.script_load(sync.await_.script)
                    continue
                if not registered and isinstance(replies[0], RedisError):
                    raise replies[0]
                registered = True
                popped = replies[-1]
                if isinstance(popped, RedisError):
                    raise popped
                if popped is not None:
                    break
        except RedisError:
            return False  # the portal's wait() tries, and reports, on its own
        notice = popped[1]
        if notice == b"":
            return None  # no such job
        if notice == b"r":  # the result was too long to carry: read it
            fields = sync.client.hgetall(f"{tag}:job:{job_id}")
            return _fields_status(fields, job_id, queue)
        return _status(_carried(_notice.decode(notice)), job_id, queue)

    def _batches(
        self, requests: Sequence[EnqueueRequest], deps: dict[int, list[Any]] | None = None
    ) -> tuple[dict[str, list[int]], list[tuple[str, list[Any]]]]:
        """The requests' indexes per queue, and the enqueue script's arguments per queue
        (``deps``: :meth:`_dependencies`)."""
        groups: dict[str, list[int]] = {}
        for index, req in enumerate(requests):
            groups.setdefault(req.message.queue, []).append(index)
        batches: list[tuple[str, list[Any]]] = []
        for queue, indexes in groups.items():
            jobs = []
            for index in indexes:
                req = requests[index]
                msg = req.message
                job: tuple[Any, ...] = (
                    msg.id,
                    msg.task,
                    max(-MAX_PRIORITY, min(MAX_PRIORITY, msg.priority)),
                    due_arg(None if msg.eta is None else msg.eta.timestamp(), req.delay),
                    _text(req.payload),
                    _ms(msg.created_at.timestamp()),
                    msg.headers.get("idempotency_key", ""),
                    max(1, _ms(req.idempotency_window)),
                    msg.headers.get("callback_url", ""),
                )
                if deps and index in deps:
                    job += (deps[index],)
                jobs.append(job)
            batches.append((queue, [self._work_channel(queue), _pack(jobs)]))
        return groups, batches

    def _stored(
        self, requests: Sequence[EnqueueRequest], groups: dict[str, list[int]], stored: list[Any]
    ) -> list[str]:
        """The ids the scripts returned (an existing job's for a known idempotency key)."""
        ids = [r.message.id for r in requests]
        if len(self._enqueued) > _REMEMBERED:
            self._enqueued.clear()
        for (queue, indexes), got in zip(groups.items(), stored, strict=True):
            for index, job_id in zip(indexes, got, strict=True):
                ids[index] = job_id = job_id.decode()
                self._enqueued[job_id] = queue
        return ids

    # -- batches ----------------------------------------------------------------------------
    async def enqueue_batch(
        self, batch: BatchRecord, requests: Sequence[EnqueueRequest]
    ) -> list[str]:
        await self._state()  # learns whether the server is a Cluster
        cb = batch.callback
        queues = {r.message.queue for r in requests} | ({cb.message.queue} if cb else set())
        if self._cluster and len(queues) > 1:
            raise ConfigurationError(
                "on a Redis Cluster the jobs of a batch and its on_complete callback must all "
                f"go to one queue (its count lives in that queue's slot), not {sorted(queues)}"
            )
        groups, batches = self._batches(requests, await self._dependencies(requests))
        home = requests[0].message.queue  # the first group's: it creates the record
        key = self._batch_key(home, batch.id)
        callback: tuple[Any, ...] = ("",) + ("",) * 6
        if cb is not None:
            msg = cb.message
            callback = (
                msg.id, self._tag(msg.queue), msg.task, msg.priority,
                _text(cb.payload), self._work_channel(msg.queue),
                msg.headers.get("callback_url", ""),
            )  # fmt: skip
        ids = ",".join(r.message.id for r in requests)
        record = _pack((batch.id, batch.total, _ms(self.options.result_ttl), ids, *callback))
        for index, (_, args) in enumerate(batches):
            args += [key, record if index == 0 else ""]
        await self._register(queues)
        stored = self._stored(requests, groups, await self._enqueue(batches))
        if len(self._batch_homes) > _REMEMBERED:
            self._batch_homes.clear()
        self._batch_homes[batch.id] = home
        return stored

    def _batch_key(self, queue: str, batch_id: str) -> str:
        return f"{self._tag(queue)}:batch:{batch_id}"

    async def _batch_fields(self, batch_id: str, *fields: str) -> list[bytes | None] | None:
        """Fields of the batch's hash, found under its queue's tag; None if there is none."""
        client = (await self._state()).client
        home = self._batch_homes.get(batch_id)
        queues = [home] if home is not None else []
        queues += [q for q in sorted(await self._known_queues()) if q != home]
        for queue in queues:
            got = await client.hmget(self._batch_key(queue, batch_id), ["id", *fields])
            if got[0] is not None:
                self._batch_homes[batch_id] = queue
                return list(got[1:])
        return None

    async def batch_status(self, batch_id: str) -> BatchStatus | None:
        names = ("total", "succeeded", "failed", "cancelled", "cb_id", "finished_at")
        got = await self._batch_fields(batch_id, *names)
        if got is None:
            return None
        total, succeeded, failed, cancelled, callback, finished = got
        ended = _seconds(finished)
        return BatchStatus(
            id=batch_id, total=int(total or 0), succeeded=int(succeeded or 0),
            failed=int(failed or 0), cancelled=int(cancelled or 0),
            callback_id=None if callback is None else callback.decode(),
            finished_at=None if ended is None else datetime.fromtimestamp(ended, UTC),
        )  # fmt: skip

    async def batch_jobs(self, batch_id: str) -> list[str] | None:
        got = await self._batch_fields(batch_id, "jobs")
        if got is None:
            return None
        return got[0].decode().split(",") if got[0] else []

    async def _enqueue(self, batches: list[tuple[str, list[Any]]]) -> list[Any]:
        """One script call per queue; several queues in one MULTI/EXEC (all or none), except
        on a Cluster, where queues live in different slots and each is all or none alone."""
        try:
            if len(batches) == 1 or self._cluster:
                return [await self._call("enqueue", queue, *args) for queue, args in batches]
            state = await self._state()
            script = state.scripts["enqueue"]
            try:
                async with state.client.pipeline(transaction=True) as pipe:
                    for queue, args in batches:
                        tag = self._tag(queue)
                        await script(keys=[f"{tag}:ready"], args=[tag, *args], client=pipe)
                    return list(await pipe.execute())
            except RedisError as exc:
                raise BrokerError(f"Redis at {self._safe_url} failed enqueue: {exc}") from exc
        except BrokerError as exc:
            # The script found a dependency gone since _dependencies looked (its retention
            # passed meanwhile): it wrote nothing.
            missing = _NO_DEPENDENCY.search(str(exc.__cause__))
            if missing is None:
                raise
            raise DependencyNotFound(missing.group(1)) from None

    # -- consuming ------------------------------------------------------------------------
    async def claim(
        self, queues: Sequence[str], limit: int, lease: float, worker: str = ""
    ) -> list[Delivery]:
        if len(queues) == 1:
            handed = self._handed.pop((queues[0], worker), None)
            if handed:  # handed over while this worker waited: leased already
                if len(handed) > limit:
                    self._handed[(queues[0], worker)] = handed[limit:]
                return handed[:limit]
            return await self._claim_one(queues[0], limit, lease, worker, None, idle=True)
        # Several queues: priorities compare across them. Ready each queue, then take from the
        # queue with the best head down to the next queue's head priority, and repeat.
        for queue in queues:
            await self._claim_one(queue, 0, lease, worker, None)
        out: list[Delivery] = []
        pending = list(queues)
        client = (await self._state()).client
        while len(out) < limit and pending:
            heads = {}
            for queue in pending:
                head = await client.zrange(f"{self._tag(queue)}:ready", 0, 0, withscores=True)
                if head:
                    heads[queue] = -math.floor(head[0][1] / _PRIORITY_UNIT)
            if not heads:
                break
            order = sorted(heads, key=lambda q: -heads[q])
            floor = heads[order[1]] if len(order) > 1 else None
            got = await self._claim_one(order[0], limit - len(out), lease, worker, floor)
            if not got:
                pending.remove(order[0])
            out += got
        return out

    async def _claim_one(
        self,
        queue: str,
        limit: int,
        lease: float,
        worker: str,
        floor: int | None,
        *,
        idle: bool = False,
    ) -> list[Delivery]:
        """Lease up to ``limit`` jobs of one queue (only of priority >= ``floor``, if given).

        ``idle``: the worker serves this queue alone; if it listens on the work channel, a
        short claim enters it in the queue's idle workers, to whom enqueue hands new jobs.
        """
        opts = self.options
        top = "+inf" if floor is None else repr(-floor * _PRIORITY_UNIT + _PRIORITY_UNIT - 1)
        # Pushes seen on the queue's work channel before this claim ran: if none arrives
        # before the worker waits, the claim's own report of what comes due is still true.
        state = await self._state()
        channel = self._work_channel(queue)
        listening = channel in state.listening
        snapshot = state.pushes.get(channel, 0) if listening else None
        entry = ""
        if idle and listening and worker and not opts.relay:
            entry = self._idle_entry(worker)
            self._claimers.add((queue, entry))
        flat = await self._call(
            "claim", queue, limit, _ms(lease), worker, opts.max_recoveries,
            _ms(opts.dead_letter_ttl), self._done_channel(queue), top, entry,
        )  # fmt: skip
        if floor is None and snapshot is not None:
            due = int(flat[0])
            state.due[queue] = (snapshot, math.inf if due < 0 else due / 1000)
        out = []
        for i in range(1, len(flat), 4):
            job_id = flat[i].decode()
            self._held[job_id] = queue
            out.append(Delivery(job_id, int(flat[i + 1]), int(flat[i + 2]), flat[i + 3]))
        return out

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        state = await self._state()
        # Work channels stay subscribed: an idle worker waits on them again and again.
        new = [self._work_channel(q) for q in queues if self._work_channel(q) not in state.channels]
        if new:
            if not await self._subscribe(new):
                # Refused (an ACL, say) or lost: without pushes the worker would only wake
                # on its timeout. Undo, so that the next wait subscribes again, and say so.
                await self._unsubscribe(new)
                raise BrokerError(f"Redis at {self._safe_url} did not confirm SUBSCRIBE {new}")
            state.listening.update(new)
        with self._work.listen(queues) as listener:  # before the checks: no lost wake-up
            if any(key[0] in queues for key, jobs in self._handed.items() if jobs):
                return  # jobs handed over: the next claim takes them
            now = time.time()
            hints = [state.due.get(q) for q in queues]  # kept: a handed-over claim asks no server
            if all(
                h is not None and h[0] == state.pushes.get(self._work_channel(q), 0)
                for q, h in zip(queues, hints, strict=True)
            ):
                # The last claim of every queue said what comes due, and no push came since
                # it ran: nothing to ask the server.
                due = min(h[1] for h in hints if h is not None)
            else:
                due = await asyncio.shield(self._next_due(state, queues))  # see _call
            await listener.wait(max(0.0, min(now + timeout, due) - now))

    async def _next_due(self, state: _LoopState, queues: Sequence[str]) -> float:
        """0 if a queue has ready jobs, else when the next delayed job or lease comes due."""
        due = math.inf
        for queue in queues:
            tag = self._tag(queue)
            async with state.client.pipeline(transaction=False) as pipe:  # one round trip
                pipe.zcard(f"{tag}:ready")
                for name in ("scheduled", "retrying", "running"):
                    pipe.zrange(f"{tag}:{name}", 0, 0, withscores=True)
                ready, *firsts = await pipe.execute()
            if ready:
                return 0.0
            for first in firsts:
                if first:
                    due = min(due, first[0][1] / 1000)
        return due

    def _idle_entry(self, worker: str) -> str:
        return f"{worker}#{self._instance}"

    async def stop_claiming(self, queues: Sequence[str], worker: str) -> None:
        """Take the worker out of the idle workers, and hand back what was handed to it.

        After the script no enqueue hands it a job; its fence message, published after every
        job handed to it, tells when the last of them has arrived. Without the fence (the
        subscriber is down), jobs still on their way wait for their lease to run out.
        """
        entry = self._idle_entry(worker)
        leases = []
        for queue in queues:
            if (queue, entry) not in self._claimers:
                continue
            with self._fenced.listen(((queue, entry),)) as fenced:
                await self._call("stop_claiming", queue, entry, self._work_channel(queue))
                await fenced.wait(_FENCE_WAIT)
            self._claimers.discard((queue, entry))
            leases += [Lease(d.job_id, d.attempt) for d in self._handed.pop((queue, worker), [])]
        if leases:
            await self.release(leases)

    async def settle(self, outcomes: Sequence[Outcome]) -> int:
        if not outcomes:
            return 0
        queues = await self._queue_of([o.job_id for o in outcomes])
        applied = 0
        opts = self.options
        for queue, group in self._by_queue(queues, outcomes).items():
            packed = _pack([
                (
                    o.job_id, str(o.attempt), o.state.value, _text(o.result or b"null"),
                    _text(_json.encode(o.error)) if o.error is not None else "",
                    due_arg(o.eta, o.delay),
                )
                for o in group
            ])  # fmt: skip
            applied += await self._call(
                "settle", queue, _ms(opts.result_ttl), _ms(opts.dead_letter_ttl),
                self._done_channel(queue), self._work_channel(queue), packed,
            )  # fmt: skip
        for o in outcomes:
            self._held.pop(o.job_id, None)
        return applied

    async def extend(self, leases: Sequence[Lease], lease: float) -> HeartbeatReply:
        # Jobs handed over but not taken yet (their worker is busy up to its concurrency and
        # takes them when a slot frees) are leased to it too: their leases are kept with the
        # others', and one lost meanwhile is dropped rather than run a second time.
        waiting = {d.job_id: d.attempt for jobs in self._handed.values() for d in jobs}
        if waiting:
            leases = [*leases, *(Lease(i, a) for i, a in waiting.items())]
        queues = await self._queue_of([h.job_id for h in leases])
        lost = {h.job_id for h in leases if h.job_id not in queues}
        cancel: set[str] = set()
        for queue, group in self._by_queue(queues, leases).items():
            args: list[Any] = [_ms(lease)]
            for h in group:
                args += [h.job_id, h.attempt]
            gone, stop = await self._call("extend", queue, *args)
            lost |= {j.decode() for j in gone}
            cancel |= {j.decode() for j in stop}
        if waiting and lost & waiting.keys():
            for key, jobs in list(self._handed.items()):
                self._handed[key] = [d for d in jobs if d.job_id not in lost]
        return HeartbeatReply(frozenset(lost), frozenset(cancel))

    async def release(
        self, leases: Sequence[Lease], eta: float | None = None, *, delay: float | None = None
    ) -> None:
        queues = await self._queue_of([h.job_id for h in leases])
        for queue, group in self._by_queue(queues, leases).items():
            args: list[Any] = [self._work_channel(queue), due_arg(eta, delay)]
            for h in group:
                args += [h.job_id, h.attempt]
            await self._call("release", queue, *args)
        for h in leases:
            self._held.pop(h.job_id, None)

    async def progress(self, updates: Sequence[ProgressUpdate]) -> None:
        queues = await self._queue_of([u.job_id for u in updates])
        for queue, group in self._by_queue(queues, updates).items():
            args: list[Any] = []
            for u in group:
                message = _NO_MESSAGE if u.message is None else u.message
                args += [u.job_id, u.attempt, repr(u.progress), message]
            await self._call("progress", queue, *args)

    # -- status and control -----------------------------------------------------------------
    async def status(self, job_id: str) -> JobStatus | None:
        client = (await self._state()).client

        async def read(queue: str) -> JobStatus | None:
            key = f"{self._tag(queue)}:job:{job_id}"
            fields = await asyncio.shield(client.hgetall(key))  # see _call
            return _fields_status(fields, job_id, queue)

        hint = self._enqueued.get(job_id) or self._held.get(job_id)
        if hint is not None and (found := await read(hint)) is not None:
            return found  # the usual case: one read, no listing of the queues
        for queue in sorted(await self._known_queues()):
            if queue != hint and (found := await read(queue)) is not None:
                return found
        return None

    async def wait(self, job_id: str, timeout: float | None) -> JobStatus | None:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        queue = self._enqueued.get(job_id) or self._held.get(job_id)
        if queue is None:
            status = await self.status(job_id)
            if status is None or status.state.terminal:
                return status
            queue = status.queue
        # The queue's done channel stays subscribed, as the work channels do: a caller that
        # waits for one job usually waits for more, and one subscription serves them all.
        channel = self._done_channel(queue)
        if channel not in (await self._state()).channels:
            await self._subscribe([channel])
        with self._done.listen((job_id,)) as listener:  # before the status read
            try:
                while True:
                    carried = self._statuses.pop(job_id, None)
                    found = (
                        _status(_carried(carried), job_id, queue)
                        if carried is not None
                        else await self.status(job_id)
                    )
                    if found is None or found.state.terminal:
                        return found
                    left = None if deadline is None else deadline - loop.time()
                    if left is not None and left <= 0:
                        return None
                    await listener.wait(_RECHECK if left is None else min(left, _RECHECK))
            finally:
                self._statuses.pop(job_id, None)

    async def cancel(self, job_id: str) -> JobState | None:
        queue = (await self._queue_of([job_id])).get(job_id)
        if queue is None:
            return None
        args = [job_id, _ms(self.options.result_ttl), self._done_channel(queue)]
        state = await self._call("cancel", queue, *args)
        return None if state is None else JobState(state.decode())

    async def jobs(
        self,
        *,
        state: JobState | None = None,
        task: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[JobStatus]:
        client = (await self._state()).client
        queues = [queue] if queue is not None else sorted(await self._known_queues())
        found: list[JobStatus] = []
        for name in queues:
            tag = self._tag(name)
            upper = f"({before}" if before is not None else "+"
            matched = 0
            while matched < limit:
                ids = await client.zrevrangebylex(f"{tag}:all", upper, "-", start=0, num=200)
                if not ids:
                    break
                async with client.pipeline(transaction=False) as pipe:
                    for job_id in ids:
                        pipe.hgetall(f"{tag}:job:{job_id.decode()}")
                    rows = await pipe.execute()
                for job_id, fields in zip(ids, rows, strict=True):
                    status = _fields_status(fields, job_id.decode(), name)
                    if status is None:
                        continue  # its retention ended; purge drops the id
                    if (state is None or status.state is state) and (
                        task is None or status.task == task
                    ):
                        found.append(status)
                        matched += 1
                upper = f"({ids[-1].decode()}"
        found.sort(key=lambda s: s.id, reverse=True)
        return found[:limit]

    async def queues(self) -> list[QueueStats]:
        client = (await self._state()).client
        stats = []
        now = _ms(time.time())  # the clock statuses are shown by (status_of)
        for queue in sorted(await self._known_queues()):
            tag = self._tag(queue)
            async with client.pipeline(transaction=False) as pipe:
                for name in _STATE_SETS:
                    pipe.zcard(f"{tag}:{name}")
                for name in _DUE_SETS:  # due already: their statuses show queued
                    pipe.zcount(f"{tag}:{name}", "-inf", now)
                replies = await pipe.execute()
            counts: dict[str, int] = {}
            sizes = replies[: len(_STATE_SETS)]
            for job_state, n in zip(_STATE_SETS.values(), sizes, strict=True):
                if n:
                    counts[job_state.value] = counts.get(job_state.value, 0) + int(n)
            for name, n in zip(_DUE_SETS, replies[len(_STATE_SETS) :], strict=True):
                if n:
                    counts[name] -= int(n)
                    counts[_S.QUEUED.value] = counts.get(_S.QUEUED.value, 0) + int(n)
            stats.append(QueueStats(queue, {k: v for k, v in counts.items() if v}))
        return [s for s in stats if s.counts]

    async def replay(self, job_ids: Sequence[str] | None = None) -> list[str]:
        moved: list[str] = []
        if job_ids is None:
            for queue in sorted(await self._known_queues()):
                got = await self._call("replay", queue, self._work_channel(queue))
                moved += [j.decode() for j in got]
            return moved
        queues = await self._queue_of(job_ids)
        groups: dict[str, list[str]] = {}
        for job_id in job_ids:
            if job_id in queues:
                groups.setdefault(queues[job_id], []).append(job_id)
        for queue, ids in groups.items():
            got = await self._call("replay", queue, self._work_channel(queue), *ids)
            moved += [j.decode() for j in got]
        return moved

    async def webhooks_due(self, limit: int, lease: float) -> list[WebhookDue]:
        out: list[WebhookDue] = []
        for queue in sorted(await self._known_queues()):
            if len(out) >= limit:
                break
            flat = await self._call("webhooks_due", queue, limit - len(out), _ms(lease))
            for i in range(0, len(flat), 4):
                job_id = flat[i].decode()
                self._hooks[job_id] = queue
                attempts = len(webhook_attempts(flat[i + 3]))
                out.append(
                    WebhookDue(job_id, flat[i + 1].decode(), int(flat[i + 2]) / 1000, attempts)
                )
        return out

    async def webhook_attempted(
        self,
        job_id: str,
        attempt: WebhookAttempt,
        retry_at: float | None,
        *,
        retry_in: float | None = None,
    ) -> None:
        queue = self._hooks.pop(job_id, None) or (await self._queue_of([job_id])).get(job_id)
        if queue is not None:
            retry = "" if retry_at is None else due_arg(retry_at, retry_in)
            await self._call(
                "webhook_attempted", queue, job_id, webhook_attempt_json(attempt), retry
            )

    # -- named leases: a key of their own slot ({<prefix>:__leases__}), set with PX ----------
    async def hold_lease(self, name: str, holder: str, ttl: float) -> float | None:
        seen = await self._call("hold_lease", _LEASES, name, holder, max(1, _ms(ttl)))
        return None if seen is None else int(seen) / 1000

    async def drop_lease(self, name: str, holder: str) -> None:
        await self._call("drop_lease", _LEASES, name, holder)

    # -- rate limits: each key its own slot ({<prefix>:__rate__:<key>}), expiring when idle --
    async def throttle(
        self, key: str, limit: int, period: float, hold: float = float("inf")
    ) -> float:
        bound = "" if math.isinf(hold) else _ms(hold)
        waited = await self._call("throttle", f"__rate__:{key}", limit, max(1, _ms(period)), bound)
        return int(waited) / 1000

    async def purge(self) -> int:
        gone = 0
        for queue in sorted(await self._known_queues()):
            gone += await self._call("purge", queue)
        return gone

    # -- relay mode (a store under the RabbitMQ broker, docs/design/rabbitmq.md §3) ----------
    # T:unsent (redis.lua) holds each queue's queued jobs not yet published, scored by until
    # when they are held (0: not held); the scripts that make a job queued add it there.
    def _relay_mode(self, primitive: str) -> None:
        if not self.options.relay:
            raise ConfigurationError(
                f"{primitive} needs a store opened in relay mode (BrokerOptions(relay=True)): "
                "only then are its ready jobs marked unsent"
            )

    async def enqueue_unsent(
        self, requests: Sequence[EnqueueRequest], hold: float
    ) -> list[Recorded]:
        self._relay_mode("enqueue_unsent")
        if not requests:
            return []
        groups, batches = self._batches(requests, await self._dependencies(requests))
        for _, args in batches:
            args += ["", "", _ms(hold)]  # no batch; the hold
        await self._register(groups)
        stored = await self._enqueue(batches)
        if len(self._enqueued) > _REMEMBERED:
            self._enqueued.clear()
        out: list[Recorded | None] = [None] * len(requests)
        for (queue, indexes), flat in zip(groups.items(), stored, strict=True):
            for n, index in enumerate(indexes):
                job_id = flat[3 * n].decode()
                due = int(flat[3 * n + 2])
                self._enqueued[job_id] = queue
                out[index] = Recorded(job_id, flat[3 * n + 1] == 1, None if due < 0 else due / 1000)
        return [r for r in out if r is not None]

    async def mark_sent(self, job_ids: Sequence[str]) -> None:
        homes = await self._homes(job_ids)
        for queue, ids in self._ids_by_queue(homes, job_ids).items():
            await self._call("mark_sent", queue, *ids)

    def _ids_by_queue(self, homes: dict[str, str], job_ids: Sequence[str]) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for job_id in job_ids:
            if job_id in homes:
                groups.setdefault(homes[job_id], []).append(job_id)
        return groups

    async def relay_due(self, limit: int, hold: float) -> RelayBatch:
        self._relay_mode("relay_due")
        queues = sorted(await self._known_queues())
        if not queues:
            seconds, micros = await (await self._state()).client.time()
            return RelayBatch([], None, seconds + micros / 1e6)
        opts = self.options
        replies = await asyncio.gather(*(
            self._call(
                "relay_due", queue, limit, _ms(hold), opts.max_recoveries,
                _ms(opts.dead_letter_ttl), self._done_channel(queue),
            )
            for queue in queues
        ))  # fmt: skip
        # Each queue answers on its own server's clock (a Cluster's nodes may disagree): its
        # due time is kept as a delay from its own now, and the batch says the first one's.
        now = int(replies[0][0]) / 1000
        delays: list[float] = []
        taken: list[list[RelayJob]] = []
        for queue, flat in zip(queues, replies, strict=True):
            due = int(flat[1])
            if due >= 0:
                delays.append(max(0, due - int(flat[0])) / 1000)
            jobs = [
                RelayJob(flat[i].decode(), queue, int(flat[i + 1]), flat[i + 2])
                for i in range(2, len(flat), 3)
            ]
            taken.append(jobs)
        # Each queue's jobs come in its ready order; across queues, the higher priority first,
        # then the older job (ids are UUIDv7: they sort by enqueue time).
        merged = list(heapq.merge(*taken, key=lambda j: (-j.priority, j.job_id)))
        jobs, extra = merged[:limit], merged[limit:]
        if extra:  # held beyond the limit: unsent again, for the next pass, which is now
            delays.append(0.0)
            homes = {j.job_id: j.queue for j in extra}
            for queue, flat in zip(queues, replies, strict=True):
                ids = [j.job_id for j in extra if homes[j.job_id] == queue]
                if ids:
                    await self._call("relay_unhold", queue, int(flat[0]) + _ms(hold), *ids)
        if len(self._relayed) > _REMEMBERED:
            self._relayed.clear()
        for job in jobs:
            self._relayed[job.job_id] = job.queue
        return RelayBatch(jobs, now + min(delays) if delays else None, now)

    async def claim_ids(
        self, job_ids: Sequence[str], lease: float, worker: str = ""
    ) -> list[Delivery | Gone | Missing]:
        out: list[Delivery | Gone | Missing] = [Missing(j) for j in job_ids]
        homes = await self._homes(job_ids)
        places: dict[str, list[int]] = {}  # queue -> the positions of its ids in job_ids
        for index, job_id in enumerate(job_ids):
            if job_id in homes:
                places.setdefault(homes[job_id], []).append(index)
        opts = self.options
        for queue, indexes in places.items():
            flat = await self._call(
                "claim_ids", queue, _ms(lease), worker, opts.max_recoveries,
                _ms(opts.dead_letter_ttl), self._done_channel(queue),
                *(job_ids[i] for i in indexes),
            )  # fmt: skip
            for n, index in enumerate(indexes):
                job_id, kind = job_ids[index], flat[4 * n].decode()
                if kind == "leased":
                    self._held[job_id] = queue
                    attempt, failures = int(flat[4 * n + 1]), int(flat[4 * n + 2])
                    out[index] = Delivery(job_id, attempt, failures, flat[4 * n + 3])
                elif kind != "missing":
                    out[index] = Gone(job_id, JobState(kind))
        return out

    async def withdraw(self, job_ids: Sequence[str], reason: str) -> None:
        self._relay_mode("withdraw")
        error = _json.encode(JobError(type="EnqueueFailed", message=reason, attempt=0))
        homes = await self._homes(job_ids)
        ttl = _ms(self.options.result_ttl)
        for queue, ids in self._ids_by_queue(homes, job_ids).items():
            await self._call("withdraw", queue, ttl, self._done_channel(queue), error, *ids)
