"""Reading event envelopes, and converting a batch of them for its handler.

The fast reading (``_Plain``, msgspec in C) and the checked one (``_checked``: the dict and its
checks) must give the same Event or the same error for any payload, since the fast one only
ever answers for envelopes the checked one also accepts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from dromos.errors import ValidationError
from dromos.events.envelope import Event, _checked, decode_data, decode_event, encode_event
from dromos.events.subscriber import Subscriber
from dromos.message import DecodeError

_times = st.one_of(
    st.datetimes(
        min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)),
                                   timezone(timedelta(hours=-8))]),
    ).map(lambda t: t.isoformat()),
    st.sampled_from([
        "2026-11-26T15:24:39.005471Z", "2026-11-26T15:24:39z", "2026-11-26t15:24:39Z",
        "2026-11-26 15:24:39Z", "2026-11-26T15:24:39", "2026-11-26T15:24Z", "2026-11-26",
        "2026-11-26T15:24:39.005471123Z", "2026-11-26T24:00:00Z", "yesterday", "",
    ]),
    st.none(), st.integers(), st.just(...),  # ...: no time attribute at all
)  # fmt: skip
_texts = st.one_of(st.text(max_size=8), st.integers(), st.none(), st.just(...))
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def envelopes(draw: st.DrawFn) -> bytes:
    body: dict[str, Any] = {}
    fields = {
        "specversion": st.sampled_from(["1.0", "0.3", 1, ...]),
        "id": _texts, "source": _texts, "type": _texts, "time": _times,
        "subject": _texts, "datacontenttype": _texts, "data": _json | st.just(...),
    }  # fmt: skip
    for name, values in fields.items():
        value = draw(values)
        if value is not ...:
            body[name] = value
    for name in draw(st.lists(st.sampled_from(["traceparent", "partitionkey", "x1"]), max_size=2)):
        body[name] = draw(_json)
    return json.dumps(body).encode()


def _read(fn: Any, payload: bytes | str) -> Any:
    try:
        return fn(payload)
    except DecodeError as exc:
        return ("DecodeError", str(exc))


def _settled(event: Any) -> Any:
    """An Event made at "now" (no time given) compared without its time."""
    if isinstance(event, tuple):
        return event
    return (event.type, event.data, event.id, event.source, event.subject,
            event.datacontenttype, dict(event.extensions), event.attempt)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(envelopes())
def test_the_fast_and_the_checked_reading_agree_on_every_envelope(payload: bytes) -> None:
    fast, checked = _read(decode_event, payload), _read(_checked, payload)
    assert _settled(fast) == _settled(checked)
    if not isinstance(checked, tuple) and b'"time":"' in payload:
        assert fast.time == checked.time
    data = _read(decode_data, payload)
    assert data == (checked if isinstance(checked, tuple) else (checked.type, checked.data))


def test_a_plain_envelope_reads_back_as_it_was_written() -> None:
    moment = datetime(2026, 11, 26, 15, 24, 39, 5471, tzinfo=UTC)
    payload = encode_event("orders.created", {"order": 1}, event_id="e1", source="/s", time=moment)
    event = decode_event(payload, attempt=3)
    assert (event.type, event.data, event.id, event.source, event.time, event.attempt) == (
        "orders.created", {"order": 1}, "e1", "/s", moment, 3,
    )  # fmt: skip
    assert event.extensions == {}
    assert event.subject is None
    assert decode_data(payload) == ("orders.created", {"order": 1})


def test_extensions_are_kept_and_a_naive_time_is_utc() -> None:
    payload = json.dumps({
        "specversion": "1.0", "id": "e2", "source": "/s", "type": "a.b",
        "time": "2026-11-26T15:24:39", "traceparent": "00-abc", "data": [1],
    }).encode()  # fmt: skip
    event = decode_event(payload)
    assert event.extensions == {"traceparent": "00-abc"}
    assert event.time == datetime(2026, 11, 26, 15, 24, 39, tzinfo=UTC)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"[1]", "not a JSON object"),
        (b'{"specversion":"1.0","id":"","source":"/s","type":"a"}', "attribute 'id'"),
        (b'{"specversion":"2","id":"i","source":"/s","type":"a"}', "specversion must be"),
        (b'{"specversion":"1.0","id":"i","source":"/s","type":"a","time":"soon"}', "'time'"),
    ],
)
def test_a_bad_envelope_is_refused_with_its_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_event(payload)
    with pytest.raises(DecodeError, match=reason):
        decode_data(payload)


class _Order(BaseModel):
    id: int


def _event(data: Any, topic: str = "orders.created") -> Event[Any]:
    return Event(type=topic, data=data, id="e", source="/s", time=datetime.now(UTC))


def test_a_batch_is_converted_in_one_call_and_a_misfit_is_found_one_by_one() -> None:
    async def takes_events(events: list[Event[_Order]]) -> None: ...

    async def takes_data(orders: list[_Order]) -> None: ...

    by_event = Subscriber(takes_events, ["orders.*"], group="g", batch=5)
    by_data = Subscriber(takes_data, ["orders.*"], group="g", batch=5)
    events = [_event({"id": 1}), _event({"id": "2"})]
    [one, two] = by_event.batch_arguments(events) or []
    assert (one.data, two.data, one.id) == (_Order(id=1), _Order(id=2), "e")
    assert by_data.batch_arguments([{"id": 1}]) == [_Order(id=1)]
    assert by_data.batch_arguments([{"id": 1}, {"id": "x"}]) is None  # then one by one:
    assert by_data.item_argument("orders.created", {"id": 1}) == _Order(id=1)
    with pytest.raises(ValidationError, match=r"orders\.created"):
        by_data.item_argument("orders.created", {"id": "x"})
    with pytest.raises(ValidationError):
        by_event.item_argument("orders.created", _event({"id": "x"}))
