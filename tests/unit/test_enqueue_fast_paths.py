"""The shortcuts of the enqueue hot path give exactly what the general path gives."""

from __future__ import annotations

import enum
import itertools
import uuid

import dromos
from dromos.message import decode, new_job_ids


class Size(enum.IntEnum):
    LARGE = 3


def _args_sent(app: dromos.App, *args: object) -> list[object]:
    @app.task(name=f"t{len(app.tasks)}")
    def resize(width: int, label: str = "") -> None: ...

    request = resize.request(resize.call(*args), app.idempotency_window)  # type: ignore[arg-type]
    return decode(request.payload).args


def test_a_bool_for_an_int_parameter_is_sent_as_the_int_it_validates_to(app: dromos.App) -> None:
    assert _args_sent(app, True) == [1]
    assert type(_args_sent(app, True)[0]) is int


def test_an_int_enum_for_an_int_parameter_is_sent_as_its_value(app: dromos.App) -> None:
    assert _args_sent(app, Size.LARGE, "x") == [3, "x"]


def test_a_numeric_string_for_an_int_parameter_is_converted(app: dromos.App) -> None:
    assert _args_sent(app, "7") == [7]


def test_exact_ints_and_strings_are_sent_as_given(app: dromos.App) -> None:
    assert _args_sent(app, 640, "thumb") == [640, "thumb"]


def test_job_ids_of_large_batches_are_canonical_uuid7_text() -> None:
    for text in new_job_ids(500):
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (7, uuid.RFC_4122, text)


def test_job_ids_increase_across_small_and_large_batches() -> None:
    ids = [i for n in (1, 31, 32, 5, 1000, 2) for i in new_job_ids(n)]
    assert all(a < b for a, b in itertools.pairwise(ids))
