"""The event envelope: CloudEvents 1.0 in its structured JSON form, and its codec.

An event on the bus is one JSON object any CloudEvents SDK reads (``specversion``, ``id``,
``source``, ``type``, ``time``, ``datacontenttype``, ``data``, optional ``subject`` and
extension attributes at the top level). The topic *is* the ``type``. msgspec writes and reads
it: the hot path of publishing builds a dict and encodes it once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import msgspec

from dromos.errors import ValidationError
from dromos.message import DecodeError

__all__ = ["SPEC_VERSION", "Event", "decode_data", "decode_event", "encode_event"]

T = TypeVar("T")
SPEC_VERSION = "1.0"
_CORE = frozenset(
    {"specversion", "id", "source", "type", "time", "datacontenttype", "dataschema", "subject",
     "data", "data_base64"}
)  # fmt: skip
_EXTENSION_NAME = re.compile(r"[a-z0-9]{1,20}\Z")  # CloudEvents: lower-case letters and digits
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(dict[str, Any]).decode


@dataclass(frozen=True, slots=True)
class Event(Generic[T]):
    """One event as a subscriber receives it (or a publisher builds it)."""

    type: str
    """The topic, e.g. ``orders.created`` (CloudEvents ``type``)."""
    data: T
    """The payload: JSON values, or the subscriber's declared type."""
    id: str
    """Unique per event (a UUIDv7 unless the publisher gave one): receivers drop duplicates."""
    source: str
    """Who published it (CloudEvents ``source``; default ``/dromos/<app name>``)."""
    time: datetime
    """When it was published (UTC)."""
    subject: str | None = None
    """What the event is about within the source (e.g. an order id), if given."""
    datacontenttype: str = "application/json"
    extensions: Mapping[str, Any] = field(default_factory=dict)
    """Extension attributes (e.g. ``traceparent``, ``partitionkey``)."""
    attempt: int = 1
    """Which delivery of this event to the receiving group this is (1 for the first)."""

    @property
    def topic(self) -> str:
        """The topic (the same as :attr:`type`)."""
        return self.type


def encode_event(
    topic: str,
    data: Any,
    *,
    event_id: str,
    source: str,
    time: datetime,
    subject: str | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> bytes:
    """The structured CloudEvents JSON of one event (``data`` already JSON values)."""
    body: dict[str, Any] = {
        "specversion": SPEC_VERSION,
        "id": event_id,
        "source": source,
        "type": topic,
        "time": time,
        "datacontenttype": "application/json",
    }
    if subject is not None:
        body["subject"] = subject
    if extensions:
        for name, value in extensions.items():
            if name in _CORE or not _EXTENSION_NAME.match(name):
                raise ValidationError(
                    topic,
                    [{"loc": ("extensions", name), "type": "extension",
                      "msg": "extension names are 1-20 lower-case letters or digits, "
                             "and not a CloudEvents attribute"}],
                )  # fmt: skip
            body[name] = value
    body["data"] = data
    try:
        return _encode(body)
    except (TypeError, msgspec.EncodeError) as exc:
        raise ValidationError(
            topic, [{"loc": ("data",), "msg": f"cannot be carried as JSON: {exc}", "type": "json"}]
        ) from None


class _Plain(msgspec.Struct, forbid_unknown_fields=True):
    """An envelope with no extension attributes, read and type-checked by msgspec in C: the
    common case, several times faster than the dict and the checks of ``_checked``. Anything
    else (an extension, a wrong type, a time msgspec does not parse) fails here and is read
    by ``_checked``, which decides, so both paths accept and refuse the same envelopes."""

    specversion: str
    id: str
    source: str
    type: str
    time: datetime | None = None
    datacontenttype: Any = None
    dataschema: Any = None
    subject: Any = None
    data: Any = None
    data_base64: Any = None


_decode_plain = msgspec.json.Decoder(_Plain).decode


def _plain(payload: bytes | str) -> _Plain | None:
    """The envelope if it is a plain valid one (see ``_Plain``), else None."""
    try:
        env = _decode_plain(payload)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    if env.specversion != SPEC_VERSION or not (env.id and env.source and env.type):
        return None
    return env


def decode_event(payload: bytes | str, attempt: int = 1) -> Event[Any]:
    """Read and check one envelope; raise :class:`DecodeError` with the reason if invalid."""
    env = _plain(payload)
    if env is None:
        return _checked(payload, attempt)
    moment = env.time or datetime.now(UTC)
    subject = env.subject
    return Event(
        type=env.type,
        data=env.data,
        id=env.id,
        source=env.source,
        time=moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC),
        subject=subject if isinstance(subject, str) else None,
        datacontenttype=str(env.datacontenttype or "application/json"),
        extensions={},
        attempt=attempt,
    )


def decode_data(payload: bytes | str) -> tuple[str, Any]:
    """The topic and the data of one envelope, checked as :func:`decode_event` checks it
    (raises :class:`DecodeError` alike), without building the :class:`Event`: for the
    handlers that take the data alone."""
    env = _plain(payload)
    if env is None:
        event = _checked(payload)
        return event.type, event.data
    return env.type, env.data


def _checked(payload: bytes | str, attempt: int = 1) -> Event[Any]:
    """``decode_event`` for any envelope: extensions kept, every problem named."""
    try:
        body = _decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise DecodeError(f"not a JSON object: {exc}") from None
    if body.get("specversion") != SPEC_VERSION:
        raise DecodeError(f"specversion must be {SPEC_VERSION!r}, got {body.get('specversion')!r}")
    for name in ("id", "source", "type"):
        if not isinstance(body.get(name), str) or not body[name]:
            raise DecodeError(f"attribute {name!r} is missing or not a non-empty string")
    stamp = body.get("time")
    moment = _time(stamp) if isinstance(stamp, str) else datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    subject = body.get("subject")
    return Event(
        type=body["type"],
        data=body.get("data"),
        id=body["id"],
        source=body["source"],
        time=moment,
        subject=subject if isinstance(subject, str) else None,
        datacontenttype=str(body.get("datacontenttype") or "application/json"),
        extensions={k: v for k, v in body.items() if k not in _CORE},
        attempt=attempt,
    )


def _time(stamp: str) -> datetime:
    """An RFC 3339 time as msgspec reads it (as ``_Plain`` does: the same value either way),
    else any ISO 8601 time Python reads."""
    try:
        return msgspec.convert(stamp, datetime)
    except msgspec.ValidationError:
        pass
    try:
        return datetime.fromisoformat(stamp)
    except ValueError:
        raise DecodeError(f"attribute 'time' is not an RFC 3339 time: {stamp!r}") from None
