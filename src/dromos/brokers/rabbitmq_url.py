"""What an ``amqp://`` URL says, and the names on the server it leads to (§2 of
``docs/design/rabbitmq.md``): the settings of :mod:`dromos.brokers.rabbitmq_transport`.

``amqp://user:pass@host:port/vhost?prefix=dromos&publish_timeout=10&prefetch=16``
(``amqps://`` for TLS). The client's own options ``heartbeat`` (default 15 s), ``name`` and
the TLS files (``cafile``, ``capath``, ``keyfile``, ``certfile``, ``no_verify_ssl``) are
passed on; any other option is refused, so that a typo is not silently ignored.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal, NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from dromos.errors import ConfigurationError

__all__ = [
    "BANDS",
    "AmqpNames",
    "AmqpSettings",
    "Band",
    "Name",
    "amqp_name",
    "band_of",
    "checked_prefetch",
    "parse_url",
]

BANDS = ("high", "normal", "low")
Band = Literal["high", "normal", "low"]
_HEARTBEAT = 15  # seconds: a dead TCP path is found in <= 30 s
_MAX_NAME = 255  # bytes: AMQP short strings
_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,100}")
# What the AMQP client (pamqp) lets through in a queue name, but '+', the escape below.
_NAME_SAFE = re.compile(r"[A-Za-z0-9_.:@#,/ -]*")
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.:@#,/ -]")
# Options of the URL's query passed on to the client as they are; any other is refused.
_CLIENT_OPTIONS = {"heartbeat", "name", "cafile", "capath", "keyfile", "certfile", "no_verify_ssl"}
_OWN_OPTIONS = ("prefix", "publish_timeout", "prefetch")


PUBLISH_GRACE = 10.0  # seconds confirms still coming may extend a publish past its timeout


# -- the URL --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AmqpSettings:
    """What an ``amqp://`` URL says."""

    # What the client connects with: dromos's options removed, heartbeat set (and the password).
    url: str = field(repr=False)
    safe_url: str  # for messages: scheme, host, port and vhost, no credentials, no options
    prefix: str = "dromos"  # the first word of every queue and exchange name
    publish_timeout: float = 10.0  # seconds a publish retries (reconnecting) before it fails
    prefetch: int = 16  # unacked deliveries per consumer (per queue and band)
    password: str = field(default="", repr=False)  # blanked out of error messages

    @property
    def publish_limit(self) -> float:
        """The longest any publish runs, in seconds: ``publish_timeout`` without a confirm
        fails it, and confirms that keep coming extend it by at most 10 s (a big batch on a
        loaded broker). The broker's enqueuer holds its jobs longer than this."""
        return self.publish_timeout + PUBLISH_GRACE


def parse_url(url: str) -> AmqpSettings:
    """Read an ``amqp://`` or ``amqps://`` URL; :class:`ConfigurationError` if it is wrong."""
    example = "amqp://user:password@host:5672/vhost?prefix=dromos"
    parts = urlsplit(url)
    if parts.scheme not in ("amqp", "amqps"):
        raise ConfigurationError(f"not a RabbitMQ URL: {parts.scheme}://..., e.g. {example}")
    try:
        port = parts.port
    except ValueError:
        raise ConfigurationError(f"the port of the RabbitMQ URL is not a number: {url!r}") from None
    if not parts.hostname:
        raise ConfigurationError(f"the RabbitMQ URL names no host: write {example}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    own = {k: v for k, v in query if k in _OWN_OPTIONS}
    unknown = sorted({k for k, _ in query if k not in _OWN_OPTIONS and k not in _CLIENT_OPTIONS})
    if unknown:
        known = ", ".join(sorted((*_OWN_OPTIONS, *_CLIENT_OPTIONS)))
        raise ConfigurationError(
            f"unknown option(s) in the RabbitMQ URL: {', '.join(unknown)}; known: {known}"
        )
    passed = [(k, v) for k, v in query if k in _CLIENT_OPTIONS]
    if not any(k == "heartbeat" for k, _ in passed):
        passed.append(("heartbeat", str(_HEARTBEAT)))
    host = parts.hostname if port is None else f"{parts.hostname}:{port}"
    if ":" in parts.hostname:  # IPv6
        host = f"[{parts.hostname}]" + ("" if port is None else f":{port}")
    return AmqpSettings(
        url=urlunsplit(parts._replace(query=urlencode(passed), fragment="")),
        safe_url=urlunsplit((parts.scheme, host, parts.path or "/", "", "")),
        prefix=_prefix(own.get("prefix", "dromos")),
        publish_timeout=_seconds(own.get("publish_timeout", "10")),
        prefetch=checked_prefetch(own.get("prefetch", "16")),
        password=parts.password or "",
    )


def _prefix(value: str) -> str:
    if not _PREFIX.fullmatch(value):
        raise ConfigurationError(
            f"prefix={value!r}: use 1 to 100 letters, digits, '_' or '-' (no dots: names are "
            "'<prefix>.q.<queue>.<band>')"
        )
    return value


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigurationError(
            f"publish_timeout={value!r}: give the seconds a publish may retry, a number > 0"
        )
    return seconds


def checked_prefetch(value: str | int) -> int:
    try:
        count = int(value)
    except ValueError:
        count = 0
    if not 1 <= count <= 65535:
        raise ConfigurationError(
            f"prefetch={value!r}: give the deliveries a worker may hold unclaimed, 1 to 65535"
        )
    return count


# -- names -----------------------------------------------------------------------
def amqp_name(text: str) -> str:
    """A dromos queue or group name as it appears in a RabbitMQ queue's name.

    The server takes any UTF-8, but the client refuses a queue name outside letters, digits
    and ``_.:@#,/ -`` (pamqp: "Invalid value for queue"): a queue named ``exports*`` or
    ``émails`` could not be declared. Each other character, and ``+`` itself, is written as
    ``+`` and the hex of its UTF-8 bytes (``é`` -> ``+C3+A9``), so two names never meet.
    Routing keys are not queue names: they keep the name as it is.
    """
    if _NAME_SAFE.fullmatch(text):
        return text
    return _NAME_UNSAFE.sub(lambda m: "".join(f"+{b:02X}" for b in m[0].encode()), text)


class Name(NamedTuple):
    """A queue or exchange declared on the server (recorded for teardown)."""

    kind: Literal["queue", "exchange"]
    name: str


def band_of(priority: int) -> Band:
    """The band of a job's priority: ``high`` above 0, ``normal`` at 0, ``low`` below."""
    return "high" if priority > 0 else "low" if priority < 0 else "normal"


@dataclass(frozen=True)
class AmqpNames:
    """Every name the transport uses, all under ``prefix`` (§2 of the design)."""

    prefix: str

    @property
    def jobs(self) -> str:  # direct exchange, routes by "<queue>.<band>"
        return f"{self.prefix}.jobs"

    @property
    def dlx(self) -> str:  # fanout exchange: what RabbitMQ gave up on (delivery limit)
        return f"{self.prefix}.dlx"

    @property
    def dead(self) -> str:  # quorum queue bound to the dlx
        return f"{self.prefix}.dead"

    def queue(self, queue: str, band: str) -> str:
        name = f"{self.prefix}.q.{amqp_name(queue)}.{band}"
        if len(name.encode()) > _MAX_NAME:
            raise ConfigurationError(
                f"queue {queue!r} is too long for RabbitMQ: {name!r} is over 255 bytes"
            )
        return name

    def check(self, queue: str) -> None:
        """Raise ConfigurationError now if ``queue``'s names cannot exist on the server."""
        for band in BANDS:
            self.queue(queue, band)

    def routing_key(self, queue: str, band: str) -> str:
        return f"{queue}.{band}"
