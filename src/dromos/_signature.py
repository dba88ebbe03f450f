"""A task's signature as a validator: arguments in, JSON out, and back on the worker.

At enqueue, arguments are checked against the function's type hints and turned into JSON
values (a dataclass or pydantic model becomes an object); nothing is queued if they do not
fit. On the worker the same JSON values are checked again (a non-Python producer may have
written them) and turned back into the declared types before the call.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from typing import Any, NotRequired, Required

import msgspec
import typing_extensions

from dromos.errors import ConfigurationError, ValidationError

if typing.TYPE_CHECKING:
    import pydantic

__all__ = ["Signature", "one_item"]

_P = inspect.Parameter
_SCALARS = (int, str, bool)
_RESULT_SCALARS = (int, str, bool, type(None))
# Hints pydantic always handles: a signature made only of these builds its validators on
# first need, so a process whose calls all take the fast paths never imports pydantic
# (about 8 MiB of a worker's memory, and its start-up time).
_SAFE_HINTS = (int, str, bool, float, type(None), Any)
_json_encode = msgspec.json.encode


class Signature:
    """Checks and converts the arguments and the result of one task function."""

    __slots__ = (
        "_adapter", "_exact", "_names", "_plain", "_required", "_result", "_result_fast",
        "_result_hint", "_shape", "_sig", "task",
    )  # fmt: skip

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
        # The common case, only positional-or-keyword parameters, binds and splits with a zip
        # (inspect's bind costs more than validating a few ints); others go through inspect.
        params = list(self._sig.parameters.values())
        simple = all(p.kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD) for p in params)
        self._names = tuple(p.name for p in params) if simple else None
        self._required = sum(p.default is _P.empty for p in params)
        # Parameters all hinted exactly int, str or bool: their validated values are their own
        # JSON form, so the dump is skipped when every value is of exactly those types.
        self._plain = all(hints.get(p.name) in (int, str, bool) for p in params)
        # ... and when the values are of exactly those types, passed by position, validating
        # them would return them as they are: the hot path of ``enqueue`` skips pydantic.
        self._exact = tuple(hints[p.name] for p in params) if self._plain and simple else None
        # Results whose JSON form msgspec writes exactly as pydantic would (a declared int,
        # str, bool or None, or any of those under no annotation) skip pydantic on the worker.
        ret = hints.get("return", Any)
        ret = type(None) if ret is None else ret
        self._result_fast = (
            frozenset(_RESULT_SCALARS) if ret is Any
            else frozenset((ret,)) if ret in _RESULT_SCALARS
            else frozenset()
        )  # fmt: skip
        self._shape: Any = typing_extensions.TypedDict(f"{task}_arguments", fields)  # type: ignore[misc]
        self._result_hint = hints.get("return", Any)
        self._adapter: pydantic.TypeAdapter[Any] | None = None
        self._result: pydantic.TypeAdapter[Any] | None = None
        if not all(hints.get(p.name, Any) in _SAFE_HINTS for p in params) or not (
            self._result_hint is None or self._result_hint in _SAFE_HINTS
        ):
            self._adapters()  # now: a hint pydantic cannot carry is an error at definition

    def _adapters(self) -> tuple[pydantic.TypeAdapter[Any], pydantic.TypeAdapter[Any]]:
        """The arguments' and the result's validators, built on first need."""
        if self._adapter is None or self._result is None:
            import pydantic

            try:
                self._adapter = pydantic.TypeAdapter(self._shape)
                self._result = pydantic.TypeAdapter(self._result_hint)
            except pydantic.PydanticSchemaGenerationError as exc:
                raise ConfigurationError(
                    f"task {self.task!r}: a parameter or the return type cannot be carried as "
                    f"JSON ({exc.message}); use JSON types, dataclasses or pydantic models"
                ) from exc
        return self._adapter, self._result

    def _bind(self, args: Any, kwargs: Any) -> dict[str, Any]:
        """The arguments by parameter name, as ``inspect.Signature.bind`` gives them."""
        names = self._names
        if names is not None and not kwargs and self._required <= len(args) <= len(names):
            return dict(zip(names, args, strict=False))
        try:
            return self._sig.bind(*args, **kwargs).arguments
        except TypeError as exc:
            raise ValidationError(
                self.task, [{"loc": (), "msg": str(exc), "type": "signature"}]
            ) from None

    def _split(self, values: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        names = self._names
        if names is None:
            bound = inspect.BoundArguments(self._sig, values)  # type: ignore[arg-type,unused-ignore]
            return list(bound.args), bound.kwargs
        # As BoundArguments: positional up to the first missing parameter, keywords after it.
        args = []
        for name in names:
            if name not in values:
                break
            args.append(values[name])
        return args, {n: values[n] for n in names[len(args) :] if n in values}

    def dump(self, args: Any, kwargs: Any) -> tuple[list[Any], dict[str, Any]]:
        """Check arguments at enqueue; return them as JSON values (args, kwargs)."""
        exact = self._exact
        if exact is not None and not kwargs and self._required <= len(args):
            types = tuple(map(type, args))  # compared by identity: a bool is no int here
            if types == exact[: len(types)]:
                return list(args), {}
        bound = self._bind(args, kwargs)
        adapter = self._adapters()[0]
        import pydantic
        from pydantic_core import PydanticSerializationError

        try:
            values = adapter.validate_python(bound)
            if self._plain and all(type(v) in _SCALARS for v in values.values()):
                if not kwargs and self._names is not None:  # bound positionally: keep it so
                    return [values[n] for n in self._names[: len(args)]], {}
                return self._split(values)
            # Instances (a dataclass, a model) pass validation as they are, so a field of the
            # wrong type only shows when dumped: make that an error, not a warning and a job
            # that the worker would refuse.
            dumped = adapter.dump_python(values, mode="json", warnings="error")
            return self._split(dumped)
        except pydantic.ValidationError as exc:
            raise ValidationError(self.task, _errors(exc)) from None
        except PydanticSerializationError as exc:
            raise ValidationError(
                self.task, [{"loc": (), "msg": str(exc), "type": "serialization"}]
            ) from None

    def load(self, args: list[Any], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """Check JSON arguments on the worker; return them as the declared types."""
        exact = self._exact
        if exact is not None and not kwargs and self._required <= len(args):
            types = tuple(map(type, args))  # JSON's int, str and bool are already the types
            if types == exact[: len(types)]:
                return args, {}
        bound = self._bind(args, kwargs)
        adapter = self._adapters()[0]
        import pydantic

        try:
            return self._split(adapter.validate_python(bound))
        except pydantic.ValidationError as exc:
            raise ValidationError(self.task, _errors(exc)) from None

    def dump_result(self, value: Any) -> bytes:
        """The return value as JSON bytes (raises if it cannot be carried as JSON)."""
        if type(value) in self._result_fast:
            return _json_encode(value)
        return self._adapters()[1].dump_json(value)

    def load_result(self, value: Any) -> Any:
        """A JSON result turned back into the declared return type."""
        if type(value) in self._result_fast or self._result_hint is Any:
            return value  # JSON's int, str, bool and null are those types; Any takes all
        return self._adapters()[1].validate_python(value)


def _errors(exc: pydantic.ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": tuple(e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False)
    ]


def one_item(task: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """The signature a job of a batch task (``batch_size=``) has: ``func`` takes one list of
    items and returns a list of results (or None); a job carries one item and gets one result.

    Returned as a stand-in function whose hints are the list's and the result list's element
    types, for :class:`Signature` to check and convert one job's argument and result.
    """
    params = list(inspect.signature(func).parameters.values())
    if len(params) != 1 or params[0].kind not in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD):
        raise ConfigurationError(
            f"batch task {task!r} must take exactly one parameter, the list of items "
            "(e.g. def insert(rows: list[Row]) -> list[int] | None)"
        )
    try:
        hints = typing.get_type_hints(func)
    except Exception as exc:
        raise ConfigurationError(f"task {task!r}: cannot read its type hints: {exc}") from exc
    item = _element(hints.get(params[0].name, Any))
    result = hints.get("return", Any)
    if result is None or result is type(None):
        result_item: Any = type(None)
    else:  # a list of results, possibly "| None" (the whole batch returns nothing)
        options = [a for a in typing.get_args(result) if a is not type(None)]
        is_optional = typing.get_origin(result) in (typing.Union, types.UnionType)
        result_item = _element(options[0] if is_optional and len(options) == 1 else result)
        result_item = _no_exceptions(result_item)  # an item's failure is no result

    def job(item: Any) -> Any:  # pragma: no cover - never called, only read
        raise NotImplementedError

    job.__annotations__ = {"item": item, "return": result_item}
    return job


def _element(hint: Any) -> Any:
    """``T`` of ``list[T]``, ``Sequence[T]`` ... (Any when the hint says nothing)."""
    args = typing.get_args(hint)
    return args[0] if args else Any


def _no_exceptions(hint: Any) -> Any:
    """``int | ValueError`` as ``int``: exceptions in a batch's results fail their jobs."""
    if typing.get_origin(hint) not in (typing.Union, types.UnionType):
        return hint
    members = typing.get_args(hint)
    kept = [m for m in members if not (isinstance(m, type) and issubclass(m, BaseException))]
    if len(kept) == len(members):
        return hint
    return typing.Union[tuple(kept)] if kept else Any  # noqa: UP007 - built from a tuple
