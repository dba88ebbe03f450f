"""The envelope codec and job ids."""

import itertools
import json
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dromos.message import (
    DecodeError,
    Message,
    decode,
    encode,
    new_job_id,
    new_job_ids,
    utcnow,
)

_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
_times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)
envelopes = st.builds(
    Message,
    id=st.uuids().map(str),
    task=st.text(min_size=1),
    queue=st.text(min_size=1),
    args=st.lists(json_values, max_size=5),
    kwargs=st.dictionaries(st.text(), json_values, max_size=5),
    attempt=st.integers(min_value=0, max_value=1000),
    max_attempts=st.integers(min_value=1, max_value=1000),
    eta=st.none() | _times,
    priority=st.integers(min_value=-(2**31), max_value=2**31),
    timeout=st.none() | st.floats(min_value=0.001, max_value=1e6),
    created_at=_times,
    headers=st.dictionaries(st.text(), st.text(), max_size=5),
)


def _valid() -> dict[str, Any]:
    wire: dict[str, Any] = json.loads(
        encode(Message(id=new_job_id(), task="t", created_at=utcnow()))
    )
    return wire


@given(envelopes)
def test_any_envelope_round_trips(message: Message) -> None:
    assert decode(encode(message)) == message


@given(envelopes)
def test_the_wire_form_is_a_json_object_a_non_python_producer_can_read(message: Message) -> None:
    wire = json.loads(encode(message))
    assert wire["v"] == 1
    assert (wire["id"], wire["task"], wire["args"], wire["headers"]) == (
        message.id,
        message.task,
        message.args,
        message.headers,
    )


def test_a_minimal_envelope_from_another_language_decodes_with_defaults() -> None:
    message = decode(b'{"v": 1, "id": "x", "task": "t", "created_at": "2024-05-01T12:00:00Z"}')
    assert (message.queue, message.args, message.kwargs, message.max_attempts) == (
        "default",
        [],
        {},
        1,
    )
    assert message.created_at == datetime(2024, 5, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    "garbage", [b"\x00garbage", b"", b"[1, 2]", b'"just a string"', b"{not json}"]
)
def test_garbage_is_refused_with_decode_error(garbage: bytes) -> None:
    with pytest.raises(DecodeError, match="undecodable envelope"):
        decode(garbage)


@pytest.mark.parametrize("field", ["id", "task", "created_at"])
def test_a_missing_required_field_is_refused_naming_it(field: str) -> None:
    wire = _valid()
    del wire[field]
    with pytest.raises(DecodeError, match=field):
        decode(json.dumps(wire))


def test_a_field_of_the_wrong_type_is_refused_naming_it() -> None:
    wire = _valid() | {"args": "not a list"}
    with pytest.raises(DecodeError, match=r"\$\.args"):
        decode(json.dumps(wire))


def test_an_unknown_envelope_version_is_refused() -> None:
    wire = _valid() | {"v": 99}
    with pytest.raises(DecodeError, match="unsupported envelope version 99"):
        decode(json.dumps(wire))


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    wire = _valid() | {"added_later": {"x": 1}}
    assert decode(json.dumps(wire)).task == "t"


def test_decode_error_is_a_value_error() -> None:
    assert issubclass(DecodeError, ValueError)


def test_a_job_id_is_a_uuid_version_7() -> None:
    parsed = uuid.UUID(new_job_id())
    assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)


def test_a_job_id_carries_the_current_unix_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    millis = uuid.UUID(new_job_id()).int >> 80
    after = time.time_ns() // 1_000_000
    assert before <= millis <= after + 1  # +1: a burst may borrow the next millisecond


def test_job_ids_strictly_increase_within_a_process() -> None:
    ids = [new_job_id() for _ in range(20_000)]  # many per millisecond: the counter path
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert len(set(ids)) == len(ids)


def test_utcnow_is_aware_utc() -> None:
    now = utcnow()
    assert now.utcoffset() == timedelta(0)


def test_a_forked_child_draws_other_random_bits_than_its_parent() -> None:
    # Without reseeding after fork, both would continue the same generator and the ids made
    # in the same millisecond would collide.
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.write(write, new_job_ids(1)[0].encode())
        os._exit(0)
    os.close(write)
    mine = new_job_ids(1)[0]
    os.waitpid(pid, 0)
    theirs = os.read(read, 64).decode()
    os.close(read)
    assert mine[-12:] != theirs[-12:]
