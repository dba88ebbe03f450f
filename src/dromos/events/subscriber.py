"""Subscribers: functions that handle the events of their patterns, as one consumer group.

``@app.subscriber("orders.*", group="billing")`` makes a :class:`Subscriber`. Every group
gets every event its patterns match; the instances of one group (workers running it) share
them. A handler receives what its first parameter asks for: ``dromos.Event[Order]`` (the
envelope, ``data`` converted to ``Order``), ``Order`` (the data alone, converted), or, with no
annotation, the :class:`~dromos.events.envelope.Event` with ``data`` as JSON values.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
import typing
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from dromos._loop import TimeLimit
from dromos.errors import ConfigurationError
from dromos.events.envelope import Event
from dromos.events.topics import check_pattern, matches_any

if TYPE_CHECKING:
    import pydantic

__all__ = ["START_POSITIONS", "Subscriber"]

START_POSITIONS = ("latest", "earliest")


class Subscriber:
    """One handler, the patterns it handles and the group it belongs to."""

    def __init__(
        self,
        func: Callable[..., Any],
        patterns: Sequence[str],
        *,
        group: str,
        retries: int = 3,
        timeout: float = 60.0,
        backoff: float = 1.0,
        max_backoff: float = 300.0,
        start: str | float = "latest",
        batch: int | None = None,
    ) -> None:
        if not patterns:
            raise ConfigurationError("a subscriber needs at least one topic pattern")
        self.patterns = tuple(check_pattern(p) for p in patterns)
        if not group or not isinstance(group, str):
            raise ConfigurationError(f"group must be a non-empty string, got {group!r}")
        if retries < 0 or timeout <= 0 or backoff < 0:
            raise ConfigurationError("retries >= 0, timeout > 0 and backoff >= 0, please")
        if batch is not None and batch < 1:
            raise ConfigurationError("batch= is the most events per call: 1 or more")
        if isinstance(start, str) and start not in START_POSITIONS:
            raise ConfigurationError(
                f"start must be 'latest', 'earliest' or a Unix time: {start!r}"
            )
        self.func = func
        self.name = f"{func.__module__}.{func.__qualname__}"
        self.group = group
        self.retries = retries
        self.timeout = timeout
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.start = start
        self.is_async = inspect.iscoroutinefunction(func)
        self.batch = batch  # None: one event per call; else a list of up to this many
        self._wants, self._data_type = _wanted(func, listed=batch is not None)
        self._adapter: pydantic.TypeAdapter[Any] | None = None
        self._list_adapter: pydantic.TypeAdapter[list[Any]] | None = None  # batch_arguments

    def __repr__(self) -> str:
        return f"<Subscriber {self.name} group={self.group} patterns={list(self.patterns)}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function itself (as in a test)."""
        return self.func(*args, **kwargs)

    @property
    def data_type(self) -> Any:
        """The type the handler's data is converted to (None: JSON values as they are)."""
        return self._data_type

    def handles(self, topic: str) -> bool:
        return matches_any(self.patterns, topic)

    def retry_delay(self, failures: int) -> float:
        """Exponential backoff with jitter, as for jobs: ``backoff * 2**(failures-1)``, capped."""
        ceiling = min(self.max_backoff, self.backoff * 2.0 ** min(max(0, failures - 1), 1000))
        return ceiling * random.uniform(0.5, 1.0)

    @property
    def wants_event(self) -> bool:
        """True if the handler takes ``Event``s, False if it takes the data alone."""
        return self._wants == "event"

    def argument(self, event: Event[Any]) -> Any:
        """What the handler is called with (raises ``ValidationError`` if the data do not fit)."""
        if self._data_type is None:
            return event if self._wants == "event" else event.data
        data = self._convert(event.type, event.data)
        return replace(event, data=data) if self._wants == "event" else data

    def item_argument(self, topic: str, item: Any) -> Any:
        """One event's place in a batch call: ``item`` is the ``Event`` if the handler takes
        events, else the event's data (raises ``ValidationError`` if the data do not fit)."""
        if self._wants == "event":
            return self.argument(item)
        return item if self._data_type is None else self._convert(topic, item)

    def batch_arguments(self, items: list[Any]) -> list[Any] | None:
        """``item_argument`` of several events with one conversion for all (a pydantic call
        per batch instead of one per event); None if one of them does not fit, which the
        caller then finds with ``item_argument``, to dead-letter it alone."""
        if self._data_type is None:
            return items
        import pydantic

        if self._list_adapter is None:
            self._list_adapter = pydantic.TypeAdapter(list[self._data_type])  # type: ignore[name-defined]
        events = self._wants == "event"
        try:
            converted = self._list_adapter.validate_python(
                [e.data for e in items] if events else items
            )
        except pydantic.ValidationError:
            return None
        return (
            [replace(e, data=x) for e, x in zip(items, converted, strict=True)]
            if events
            else converted
        )

    def _convert(self, topic: str, data: Any) -> Any:
        import pydantic

        from dromos.errors import ValidationError

        if self._adapter is None:
            self._adapter = pydantic.TypeAdapter(self._data_type)
        try:
            return self._adapter.validate_python(data)
        except pydantic.ValidationError as exc:
            problems = [
                {"loc": ("data", *e["loc"]), "msg": e["msg"], "type": e["type"]}
                for e in exc.errors(include_url=False, include_input=False)
            ]
            raise ValidationError(topic, problems) from None

    async def run_batch(self, arguments: list[Any]) -> None:
        """Call a batch handler with the arguments of several events, within its time limit."""
        await self._call(arguments)

    async def run(self, event: Event[Any]) -> None:
        """Call the handler with this event, within its time limit."""
        await self._call(self.argument(event))

    async def _call(self, argument: Any) -> None:
        # A timeout in this task, not wait_for: no second task per call.
        async with TimeLimit(self.timeout):
            if self.is_async:
                await self.func(argument)
            else:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, functools.partial(self.func, argument))


def _wanted(func: Callable[..., Any], listed: bool = False) -> tuple[str, Any]:
    """("event" or "data", the data's declared type or None) from the first parameter (of a
    batch handler, ``listed``: from what its list holds)."""
    params = list(inspect.signature(func).parameters.values())
    if not params:
        raise ConfigurationError(f"subscriber {func.__qualname__} must take one parameter")
    try:
        hints = typing.get_type_hints(func)
    except Exception as exc:
        raise ConfigurationError(f"subscriber {func.__qualname__}: bad type hints: {exc}") from exc
    hint = hints.get(params[0].name)
    if listed and hint is not None:
        if typing.get_origin(hint) not in (list, typing.get_origin(list[int])):
            raise ConfigurationError(
                f"subscriber {func.__qualname__} has batch=: its parameter is a list "
                "(list[dromos.Event[T]], list[T] or no annotation)"
            )
        (hint,) = typing.get_args(hint) or (Any,)
    if hint is None or hint is Any:
        return "event", None
    if hint is Event:
        return "event", None
    if typing.get_origin(hint) is Event:
        (inner,) = typing.get_args(hint)
        return "event", (None if inner is Any else inner)
    return "data", hint
