"""Arguments are checked against the task's type hints at enqueue and turned into JSON."""

import dataclasses
import json
import os
from typing import Any

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

import dromos
from dromos._signature import Signature
from dromos.message import decode


class Image(pydantic.BaseModel):
    id: int
    width: int = 800


@dataclasses.dataclass
class Point:
    x: float
    y: float


def _sent(app: dromos.App, call: "dromos.Call[Any]") -> tuple[list[Any], dict[str, Any]]:
    """The args and kwargs a call would put on the wire."""
    request = call.task.request(call, app.idempotency_window)
    message = decode(request.payload)
    return message.args, message.kwargs


def test_matching_arguments_are_sent_as_json(app: dromos.App) -> None:
    @app.task
    def resize(image_id: int, width: int = 800) -> str:
        return ""

    assert _sent(app, resize.call(42, width=640)) == ([42, 640], {})


def test_a_default_left_out_is_not_sent(app: dromos.App) -> None:
    @app.task
    def resize(image_id: int, width: int = 800) -> str:
        return ""

    assert _sent(app, resize.call(42)) == ([42], {})


def test_keyword_arguments_for_positional_parameters_are_accepted(app: dromos.App) -> None:
    @app.task
    def resize(image_id: int, width: int = 800) -> str:
        return ""

    args, kwargs = _sent(app, resize.call(image_id=42, width=10))
    assert (args, kwargs) in (([42, 10], {}), ([], {"image_id": 42, "width": 10}))


def test_a_wrong_type_is_refused_naming_the_parameter(app: dromos.App) -> None:
    @app.task
    def resize(image_id: int, width: int = 800) -> str:
        return ""

    with pytest.raises(dromos.ValidationError) as refused:
        _sent(app, resize.call("forty-two"))  # type: ignore[arg-type]
    assert [e["loc"] for e in refused.value.errors] == [("image_id",)]
    assert "image_id" in str(refused.value)
    assert "resize" in str(refused.value)


def test_a_missing_argument_is_refused(app: dromos.App) -> None:
    @app.task
    def resize(image_id: int, width: int = 800) -> str:
        return ""

    with pytest.raises(dromos.ValidationError, match="image_id"):
        _sent(app, resize.call())  # type: ignore[call-arg]


def test_an_unexpected_keyword_is_refused(app: dromos.App) -> None:
    @app.task
    def resize(image_id: int) -> str:
        return ""

    with pytest.raises(dromos.ValidationError, match="height"):
        _sent(app, resize.call(1, height=2))  # type: ignore[call-arg]


def test_too_many_positional_arguments_are_refused(app: dromos.App) -> None:
    @app.task
    def resize(image_id: int) -> str:
        return ""

    with pytest.raises(dromos.ValidationError):
        _sent(app, resize.call(1, 2))  # type: ignore[call-arg]


def test_validation_error_is_a_value_error_and_a_dromos_error(app: dromos.App) -> None:
    @app.task
    def one(x: int) -> None: ...

    with pytest.raises(ValueError, match="invalid arguments for task 'one'") as refused:
        _sent(app, one.call("x"))  # type: ignore[arg-type]
    assert isinstance(refused.value, dromos.DromosError)


def test_var_positional_and_var_keyword_are_checked_and_sent(app: dromos.App) -> None:
    @app.task
    def log(level: int, *parts: int, **tags: str) -> None: ...

    assert _sent(app, log.call(1, 2, 3, env="prod")) == ([1, 2, 3], {"env": "prod"})
    with pytest.raises(dromos.ValidationError):
        _sent(app, log.call(1, 2, "three"))  # type: ignore[arg-type]
    with pytest.raises(dromos.ValidationError):
        _sent(app, log.call(1, env=5))  # type: ignore[arg-type]


def test_a_pydantic_model_parameter_is_sent_as_an_object(app: dromos.App) -> None:
    @app.task
    def thumb(image: Image) -> None: ...

    assert _sent(app, thumb.call(Image(id=3))) == ([{"id": 3, "width": 800}], {})


def test_a_pydantic_model_parameter_refuses_a_bad_field(app: dromos.App) -> None:
    @app.task
    def thumb(image: Image) -> None: ...

    with pytest.raises(dromos.ValidationError) as refused:
        _sent(app, thumb.call({"id": "three"}))  # type: ignore[arg-type]
    assert refused.value.errors[0]["loc"] == ("image", "id")


def test_a_dataclass_parameter_is_sent_as_an_object(app: dromos.App) -> None:
    @app.task
    def move(p: Point) -> None: ...

    assert _sent(app, move.call(Point(1.0, 2.5))) == ([{"x": 1.0, "y": 2.5}], {})


def test_a_dataclass_parameter_refuses_a_bad_field(app: dromos.App) -> None:
    @app.task
    def move(p: Point) -> None: ...

    with pytest.raises(dromos.ValidationError, match="float"):
        _sent(app, move.call(Point("left", 2.5)))  # type: ignore[arg-type]


def test_a_model_instance_with_a_field_of_the_wrong_type_is_refused(app: dromos.App) -> None:
    @app.task
    def thumb(image: Image) -> None: ...

    with pytest.raises(dromos.ValidationError, match="int"):
        _sent(app, thumb.call(Image.model_construct(id="three")))


def test_an_unannotated_parameter_takes_any_json(app: dromos.App) -> None:
    @app.task
    def anything(value):  # type: ignore[no-untyped-def]
        return value

    assert _sent(app, anything.call({"a": [1, None]})) == ([{"a": [1, None]}], {})


def test_a_parameter_that_cannot_be_json_is_refused_at_registration(app: dromos.App) -> None:
    class Opaque:
        pass

    with pytest.raises(dromos.ConfigurationError, match="JSON"):

        @app.task
        def use(thing: Opaque) -> None: ...


def test_a_bad_argument_is_refused_by_enqueue_without_queueing(app: dromos.App) -> None:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    with pytest.raises(dromos.ValidationError):
        add.enqueue(1, "x")  # type: ignore[arg-type]
    assert app.portal.call(app.broker.jobs) == []


def test_text_that_is_not_utf8_is_refused_by_enqueue_without_queueing(app: dromos.App) -> None:
    # os.fsdecode() of a file name that is not UTF-8 leaves a lone surrogate: JSON cannot
    # carry it, so the call is refused like a bad argument (422 at the gateway).
    @app.task
    def read(path: str, tags: list[str]) -> None: ...

    with pytest.raises(dromos.ValidationError, match="not valid UTF-8") as refused:
        read.enqueue("ok.csv", [os.fsdecode(b"report-\xff.csv")])
    assert refused.value.errors[0]["type"] == "string_unicode"
    assert app.portal.call(app.broker.jobs) == []


@given(st.one_of(st.integers(), st.text(), st.booleans(), st.none()))
def test_a_scalar_result_is_written_as_pydantic_would_write_it(value: Any) -> None:
    # Scalar results skip pydantic on the worker (msgspec writes them); the JSON must mean
    # the same, or a result would read back differently depending on its type.
    def untyped():  # no return annotation: any scalar takes the fast path
        return value

    fast = Signature("t", untyped).dump_result(value)
    assert json.loads(fast) == json.loads(pydantic.TypeAdapter(Any).dump_json(value))


def test_worker_side_loading_of_exact_scalars_refuses_what_pydantic_refuses() -> None:
    def f(i: int, s: str) -> None: ...

    sig = Signature("t", f)
    assert sig.load([1, "a"], {}) == ([1, "a"], {})
    with pytest.raises(dromos.ValidationError):
        sig.load(["1x", "a"], {})
    with pytest.raises(dromos.ValidationError):
        sig.load([1], {})
