"""Publishing: one event, or many in one round trip, checked and turned into envelopes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dromos.brokers.base import EventRecord
from dromos.errors import ValidationError
from dromos.events.envelope import Event, encode_event
from dromos.events.topics import check_topic
from dromos.message import new_job_ids

if TYPE_CHECKING:
    import pydantic

__all__ = ["Topics", "as_record", "records"]


class Topics:
    """The data types declared per topic (``app.topic(...)``): publish validates against them."""

    def __init__(self) -> None:
        self.types: dict[str, Any] = {}
        self._adapters: dict[str, pydantic.TypeAdapter[Any]] = {}

    def declare(self, topic: str, data_type: Any) -> None:
        import pydantic

        check_topic(topic)
        self.types[topic] = data_type
        self._adapters[topic] = pydantic.TypeAdapter(data_type)  # a bad type fails here

    def json_data(self, topic: str, data: Any) -> Any:
        """``data`` as JSON values: validated when the topic has a declared type."""
        adapter = self._adapters.get(topic)
        if adapter is None:
            dump = getattr(data, "model_dump", None)  # a pydantic model, undeclared
            return dump(mode="json") if callable(dump) else data
        import pydantic

        try:
            return adapter.dump_python(adapter.validate_python(data), mode="json")
        except pydantic.ValidationError as exc:
            problems = [
                {"loc": ("data", *e["loc"]), "msg": e["msg"], "type": e["type"]}
                for e in exc.errors(include_url=False, include_input=False)
            ]
            raise ValidationError(topic, problems) from None


def as_record(
    topics: Topics,
    source: str,
    topic: str,
    data: Any,
    *,
    event_id: str | None = None,
    subject: str | None = None,
    time: datetime | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> EventRecord:
    """One event checked and encoded (raises ``ValidationError`` / ``ConfigurationError``)."""
    check_topic(topic)
    event_id = event_id or new_job_ids(1)[0]
    moment = (time or datetime.now(UTC)).astimezone(UTC)
    body = encode_event(
        topic, topics.json_data(topic, data), event_id=event_id, source=source, time=moment,
        subject=subject, extensions=extensions,
    )  # fmt: skip
    return EventRecord(topic, event_id, body)


def records(
    topics: Topics, source: str, items: Iterable[tuple[str, Any] | Event[Any]]
) -> list[EventRecord]:
    """Many events (``(topic, data)`` pairs or :class:`Event` objects), all checked first."""
    out = []
    for item in items:
        if isinstance(item, Event):
            out.append(as_record(
                topics, item.source or source, item.type, item.data, event_id=item.id or None,
                subject=item.subject, time=item.time, extensions=item.extensions,
            ))  # fmt: skip
        else:
            topic, data = item
            out.append(as_record(topics, source, topic, data))
    return out
