"""A task's signature as a validator: arguments in, JSON out, and back on the worker.

At enqueue, arguments are checked against the function's type hints and turned into JSON
values (a dataclass or pydantic model becomes an object); nothing is queued if they do not
fit. On the worker the same JSON values are checked again (a non-Python producer may have
written them) and turned back into the declared types before the call.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any, NotRequired, Required

import pydantic
import typing_extensions
from pydantic_core import PydanticSerializationError

from dromos.errors import ConfigurationError, ValidationError

__all__ = ["Signature"]

_P = inspect.Parameter


class Signature:
    """Checks and converts the arguments and the result of one task function."""

    __slots__ = ("_adapter", "_result", "_sig", "task")

    def __init__(self, task: str, func: Callable[..., Any]) -> None:
        self.task = task
        self._sig = inspect.signature(func)
        try:
            hints = typing.get_type_hints(func, include_extras=True)
        except Exception as exc:  # an unresolvable forward reference, say
            raise ConfigurationError(f"task {task!r}: cannot read its type hints: {exc}") from exc
        fields: dict[str, Any] = {}
        for name, param in self._sig.parameters.items():
            hint = hints.get(name, Any)
            if param.kind is _P.VAR_POSITIONAL:
                hint = tuple[hint, ...]  # type: ignore[valid-type]
            elif param.kind is _P.VAR_KEYWORD:
                hint = dict[str, hint]  # type: ignore[valid-type]
            required = param.default is _P.empty and param.kind not in (
                _P.VAR_POSITIONAL,
                _P.VAR_KEYWORD,
            )
            fields[name] = Required[hint] if required else NotRequired[hint]
        shape: Any = typing_extensions.TypedDict(f"{task}_arguments", fields)  # type: ignore[misc]
        try:
            self._adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(shape)
            self._result: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(hints.get("return", Any))
        except pydantic.PydanticSchemaGenerationError as exc:
            raise ConfigurationError(
                f"task {task!r}: a parameter or the return type cannot be carried as JSON "
                f"({exc.message}); use JSON types, dataclasses or pydantic models"
            ) from exc

    def _bind(self, args: Any, kwargs: Any) -> inspect.BoundArguments:
        try:
            return self._sig.bind(*args, **kwargs)
        except TypeError as exc:
            raise ValidationError(
                self.task, [{"loc": (), "msg": str(exc), "type": "signature"}]
            ) from None

    def _split(self, values: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        bound = inspect.BoundArguments(self._sig, values)  # type: ignore[arg-type,unused-ignore]
        return list(bound.args), bound.kwargs

    def dump(self, args: Any, kwargs: Any) -> tuple[list[Any], dict[str, Any]]:
        """Check arguments at enqueue; return them as JSON values (args, kwargs)."""
        bound = self._bind(args, kwargs)
        try:
            values = self._adapter.validate_python(bound.arguments)
            return self._split(self._adapter.dump_python(values, mode="json"))
        except pydantic.ValidationError as exc:
            raise ValidationError(self.task, _errors(exc)) from None
        except PydanticSerializationError as exc:
            raise ValidationError(
                self.task, [{"loc": (), "msg": str(exc), "type": "serialization"}]
            ) from None

    def load(self, args: list[Any], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """Check JSON arguments on the worker; return them as the declared types."""
        bound = self._bind(args, kwargs)
        try:
            return self._split(self._adapter.validate_python(bound.arguments))
        except pydantic.ValidationError as exc:
            raise ValidationError(self.task, _errors(exc)) from None

    def dump_result(self, value: Any) -> bytes:
        """The return value as JSON bytes (raises if it cannot be carried as JSON)."""
        return self._result.dump_json(value)

    def load_result(self, value: Any) -> Any:
        """A JSON result turned back into the declared return type."""
        return self._result.validate_python(value)


def _errors(exc: pydantic.ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": tuple(e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False)
    ]
