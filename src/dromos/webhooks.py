"""Completion webhooks: a CloudEvent per ended job, signed as Standard Webhooks say, delivered
from the broker's outbox with retries.

A job enqueued with ``callback_url`` gets an outbox entry in the same broker write that ends
it (see :meth:`dromos.brokers.base.Broker.webhooks_due`), so the delivery exists before anybody
tries it. Workers run a :class:`Deliverer`: it leases due deliveries, POSTs the event, and
records each attempt on the job (``JobStatus.webhooks``). A refused or failed attempt is tried
again on :data:`DEFAULT_BACKOFF` (then every last interval) until ``retry_for`` has passed since
the job ended (24 h by default). Every attempt of one delivery carries the same ``webhook-id``,
so that a receiver can drop duplicates: delivery is at least once, like jobs.

Receivers check a delivery with :func:`verify` (Python), or in any language: HMAC-SHA256 of
``{webhook-id}.{webhook-timestamp}.{body}`` with the secret's base64-decoded bytes (what
follows ``whsec_``), base64-encoded, must equal one of the ``v1,<signature>`` entries of
``webhook-signature``; reject timestamps more than 5 minutes away.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec

from dromos._loop import finish
from dromos.errors import ConfigurationError, DromosError
from dromos.job import JobState, JobStatus, WebhookAttempt

if TYPE_CHECKING:
    import httpx
    from standardwebhooks import Webhook

    from dromos.brokers.base import Broker, WebhookDue

__all__ = [
    "DEFAULT_BACKOFF",
    "EVENT_TYPES",
    "Deliverer",
    "WebhookSettings",
    "WebhookVerificationError",
    "check_url",
    "event_body",
    "sign",
    "verify",
]

log = logging.getLogger("dromos.webhooks")

#: Seconds between attempts, as the Standard Webhooks guidance suggests: 5 s, 5 min, 30 min,
#: 2 h, 5 h, 10 h, then every 10 h until ``retry_for`` has passed since the job ended.
DEFAULT_BACKOFF: tuple[float, ...] = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0)

#: The CloudEvents ``type`` of each terminal state.
EVENT_TYPES = {
    JobState.SUCCEEDED: "dromos.job.succeeded",
    JobState.FAILED: "dromos.job.failed",
    JobState.CANCELLED: "dromos.job.cancelled",
}


class WebhookVerificationError(DromosError):
    """A delivery's signature, headers or timestamp do not check out: drop it."""


def check_url(url: str, hosts: Sequence[str] | None = None) -> str | None:
    """Why ``url`` cannot be a ``callback_url`` (None if it can): http(s) only, allowlist."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an absolute http:// or https:// URL"
    if hosts is not None and parts.hostname.lower() not in hosts:
        return f"host {parts.hostname!r} is not in the webhook allowlist"
    return None


class WebhookSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How an app delivers webhooks (``App(webhook_...=)`` or ``DROMOS_WEBHOOK_*``)."""

    secret: str | None = None
    """The signing secret, ``whsec_`` + base64 (``DROMOS_WEBHOOK_SECRET``)."""
    hosts: tuple[str, ...] | None = None
    """Allowed callback hosts, lower case; ``None`` allows any (``DROMOS_WEBHOOK_HOSTS``)."""
    retry_for: float = 86400.0
    """Seconds after the job ended during which failed deliveries are tried again."""
    backoff: tuple[float, ...] = DEFAULT_BACKOFF
    """Seconds before each retry; the last one repeats."""
    timeout: float = 10.0
    """Seconds an attempt may take, in all (connect, send, answer)."""

    @property
    def lease(self) -> float:
        """Seconds a deliverer holds the deliveries it attempts: twice an attempt's longest,
        plus 10 s for the broker's writes. One held by a worker that died mid-attempt is
        tried again after that long (it was 60 s whatever the timeout)."""
        return 2 * self.timeout + 10.0

    @classmethod
    def from_env(
        cls, secret: str | None, hosts: Sequence[str] | None, **more: Any
    ) -> WebhookSettings:
        secret = os.environ.get("DROMOS_WEBHOOK_SECRET") or secret
        env_hosts = os.environ.get("DROMOS_WEBHOOK_HOSTS")
        if env_hosts:
            hosts = [h.strip() for h in env_hosts.split(",") if h.strip()]
        if secret is not None:
            try:
                _signer(secret)
            except Exception as exc:
                raise ConfigurationError(
                    "webhook secret must be 'whsec_' followed by base64 (Standard Webhooks)"
                ) from exc
        allowed = None if hosts is None else tuple(h.lower() for h in hosts)
        return cls(secret=secret, hosts=allowed, **more)

    def next_attempt(self, attempts: int, since: float, now: float) -> float | None:
        """When to try again after ``attempts`` failed ones; None once ``retry_for`` is over."""
        delay = self.backoff[min(attempts, len(self.backoff)) - 1] if self.backoff else 60.0
        at = now + delay
        return at if at <= since + self.retry_for else None


def _signer(secret: str) -> Webhook:
    """The Standard Webhooks signer, imported on first use: the package (its API client with
    it) weighs about 6 MiB, which a worker that never delivers a webhook should not carry."""
    from standardwebhooks import Webhook

    return Webhook(secret)


def event_id(status: JobStatus) -> str:
    """The delivery's id (CloudEvents ``id`` and ``webhook-id``): one per ending of a job."""
    return f"{status.id}.{status.attempts}"


def event_body(status: JobStatus, source: str) -> bytes:
    """The CloudEvents 1.0 structured JSON body for an ended job."""
    from cloudevents.core.bindings.http import to_structured_event
    from cloudevents.core.v1.event import CloudEvent

    data = {
        "id": status.id,
        "task": status.task,
        "queue": status.queue,
        "state": status.state.value,
        "attempts": status.attempts,
        "result": status.result,
        "error": msgspec.to_builtins(status.error),
        "finished_at": msgspec.to_builtins(status.finished_at),
    }
    attributes = {
        "id": event_id(status),
        "source": source,
        "type": EVENT_TYPES[status.state],
        "subject": status.id,
        "time": status.finished_at or datetime.now(UTC),
        "datacontenttype": "application/json",
    }
    return bytes(to_structured_event(CloudEvent(attributes, data)).body)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    signature = _signer(secret).sign(msg_id, moment, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def verify(body: bytes | str, headers: Mapping[str, str], secret: str) -> dict[str, Any]:
    """Check a delivery and return its CloudEvent as a dict; raise if it does not check out.

    ``headers`` may be any mapping (a framework's request headers); names are matched without
    regard to case. Timestamps more than 5 minutes off are refused (replays).
    """
    from standardwebhooks.webhooks import WebhookVerificationError as Invalid

    try:
        event: dict[str, Any] = _signer(secret).verify(body, {k: v for k, v in headers.items()})
    except Invalid as exc:
        raise WebhookVerificationError(str(exc)) from exc
    except (ValueError, TypeError) as exc:  # malformed headers, not base64, not JSON
        raise WebhookVerificationError(f"malformed delivery: {exc}") from exc
    return event


class Deliverer:
    """Attempts the due deliveries of one broker; run by every worker (see ``Worker``)."""

    def __init__(self, broker: Broker, settings: WebhookSettings, source: str) -> None:
        self.broker = broker
        self.settings = settings
        self.source = source
        self.lease = settings.lease
        self._client: httpx.AsyncClient | None = None
        self._poked: asyncio.Event | None = None

    def poke(self) -> None:
        """A delivery may have come due (this process ended a job with a callback): look now.

        Call from the loop that runs :meth:`run`. Without pokes, it looks every ``interval``.
        """
        if self._poked is not None:
            self._poked.set()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def run_once(self, limit: int = 16) -> int:
        """Attempt up to ``limit`` due deliveries at once; return how many were attempted."""
        due = await self.broker.webhooks_due(limit, self.lease)
        if due:
            await asyncio.gather(*(self._deliver(d) for d in due))
        return len(due)

    async def run(self, stop: asyncio.Event, interval: float = 0.5) -> None:
        """Deliver until ``stop`` is set; never raises (a failing broker is retried).

        Cancelled mid-attempt, the deliveries it held stay leased and come due again when the
        lease ends: the receiver may see one twice, with the same ``webhook-id``.
        """
        poked = self._poked = asyncio.Event()
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                poked.clear()
                try:
                    busy = await self.run_once()
                except Exception as exc:
                    log.warning("webhook delivery round failed (%s)", exc)
                    busy = 0
                if not busy:
                    woken = asyncio.ensure_future(poked.wait())
                    await asyncio.wait(
                        {woken, stopped}, timeout=interval, return_when="FIRST_COMPLETED"
                    )
                    woken.cancel()
        finally:
            stopped.cancel()
            await finish(self.aclose())  # to its end: the worker's stop cancels repeatedly

    async def _deliver(self, due: WebhookDue) -> None:
        status = await self.broker.status(due.job_id)
        now = time.time()
        if status is None:
            return  # gone with its retention: nothing left to tell
        if not status.state.terminal:  # replayed since it ended: its next end will tell
            attempt = WebhookAttempt(at=_utc(now), error="the job runs again", last=True)
            await self.broker.webhook_attempted(due.job_id, attempt, None)
            return
        code, error = await self._post(due, status, now)
        delivered = error is None
        retry_at = (
            None if delivered else self.settings.next_attempt(due.attempts + 1, due.since, now)
        )
        attempt = WebhookAttempt(
            at=_utc(now), status=code, error=error, delivered=delivered, last=retry_at is None
        )
        if not delivered:
            when = "giving up" if retry_at is None else f"next in {retry_at - now:.1f}s"
            log.warning("webhook for job %s to %s failed: %s (%s)", status.id, due.url, error, when)
        # The wait, not only the time: the broker counts it on its own clock (ours may be off).
        retry_in = None if retry_at is None else retry_at - now
        await self.broker.webhook_attempted(due.job_id, attempt, retry_at, retry_in=retry_in)

    async def _post(
        self, due: WebhookDue, status: JobStatus, now: float
    ) -> tuple[int | None, str | None]:
        settings = self.settings
        refused = check_url(due.url, settings.hosts)
        if refused is not None:
            return None, f"callback_url {refused}"
        if settings.secret is None:
            return None, "no webhook secret configured (DROMOS_WEBHOOK_SECRET) on this worker"
        body = event_body(status, self.source)
        headers = sign(settings.secret, event_id(status), math.floor(now), body)
        headers["content-type"] = "application/cloudevents+json"
        try:
            # One bound for the whole attempt: httpx's timeout is per phase (connect, write,
            # read, pool), so an attempt could take several times it, past the lease.
            async with asyncio.timeout(settings.timeout):
                answer = await self._http().post(due.url, content=body, headers=headers)
        except TimeoutError:
            return None, f"no answer within webhook_timeout={settings.timeout:g} s"
        except Exception as exc:  # refused, reset, bad URL: try again later
            return None, f"{type(exc).__name__}: {exc}"
        if 200 <= answer.status_code < 300:
            return answer.status_code, None
        return answer.status_code, f"answered {answer.status_code}"

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            import httpx  # only in processes that deliver

            self._client = httpx.AsyncClient(timeout=self.settings.timeout, follow_redirects=False)
        return self._client


def _utc(moment: float) -> datetime:
    return datetime.fromtimestamp(moment, UTC)
