"""The request bodies the gateway takes, as pydantic models (hence their OpenAPI schemas).

A body is read into :class:`JobRequest`; the arguments inside are then checked by the task
itself, so that HTTP and Python callers meet the same validation. (Answers are msgspec
Structs: see :mod:`dromos.http.responses`.)

:func:`task_request_models` makes the typed request schema of each task from its signature:
``kwargs`` is an object with one property per parameter (required where the parameter has no
default), ``args`` an array whose items are typed by position. Code generators turn these
into typed calls (``ResizeJobRequest(kwargs=ResizeArguments(image_id=42))``).
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import urlsplit

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import to_jsonable_python

from dromos.task import MAX_PRIORITY, Task

__all__ = ["MAX_DELAY", "JobOptions", "JobRequest", "task_request_models"]

#: Longest delay accepted over HTTP (a year): past it a typo is likelier than a plan.
MAX_DELAY = 366 * 86400.0

_P = inspect.Parameter

#: A job id as options name one (the ``depends_on`` header joins them with commas).
_JobId = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^,]+$")]


class JobOptions(BaseModel):
    """Per-job options; each absent one takes the task's default."""

    model_config = ConfigDict(extra="forbid", strict=True)

    delay: float | None = Field(
        default=None,
        ge=0,
        le=MAX_DELAY,
        description="Run no earlier than this many seconds from now.",
    )
    priority: int | None = Field(
        default=None,
        ge=-MAX_PRIORITY,
        le=MAX_PRIORITY,
        description="Higher runs first within a queue.",
    )
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="The same key (within the task's queue) returns the same job. "
        "The Idempotency-Key header is the same thing.",
    )
    callback_url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^[hH][tT][tT][pP][sS]?://[^/?#\s]+",
        description="An http(s) URL told of the job's end.",
        json_schema_extra={"format": "uri"},
    )
    depends_on: list[_JobId] | None = Field(
        default=None,
        max_length=1000,
        description="Ids of jobs already enqueued that must all succeed first: the job waits "
        "`scheduled` until then, and ends failed (or cancelled) without running if one of "
        "them does. Not with `delay`.",
    )

    @field_validator("callback_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValueError(f"not a URL ({exc})") from None
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError("only http:// and https:// URLs with a host are accepted")
        return value


class JobRequest(BaseModel):
    """The body of ``POST /v1/tasks/{task}/jobs``: arguments (checked by the task) and options."""

    model_config = ConfigDict(extra="forbid", strict=True)

    args: list[Any] = Field(default_factory=list, description="Positional arguments.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments.")
    options: JobOptions = Field(default_factory=lambda: JobOptions())


class BatchJob(BaseModel):
    """One job of a batch: its task, arguments and options."""

    model_config = ConfigDict(extra="forbid", strict=True)

    task: str = Field(min_length=1, max_length=200, description="The task's name.")
    args: list[Any] = Field(default_factory=list, description="Positional arguments.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments.")
    options: JobOptions = Field(default_factory=lambda: JobOptions())


class BatchCallback(BaseModel):
    """The job run once when every job of the batch has ended; it receives the summary
    (``{"batch_id", "total", "succeeded", "failed", "cancelled"}``) before ``args``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    task: str = Field(min_length=1, max_length=200, description="The task's name.")
    args: list[Any] = Field(default_factory=list, description="Arguments after the summary.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments.")


class BatchRequest(BaseModel):
    """The body of ``POST /v1/batches``: jobs of any tasks, queued together (all or none)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    jobs: list[BatchJob] = Field(min_length=1, max_length=10_000)
    on_complete: BatchCallback | None = None


def _drop(*keys: str) -> Callable[[dict[str, Any]], None]:
    def edit(schema: dict[str, Any]) -> None:
        for key in keys:
            schema.pop(key, None)

    return edit


def _positional_schema(variadic: bool) -> Callable[[dict[str, Any]], None]:
    """Positional arguments may stop at any parameter (the rest by keyword or default)."""

    def edit(schema: dict[str, Any]) -> None:
        schema.pop("minItems", None)
        if variadic:  # the last prefix item stands for every further argument (*args)
            schema.pop("maxItems", None)
            schema["items"] = schema["prefixItems"].pop()
            if not schema["prefixItems"]:
                del schema["prefixItems"]

    return edit


def _camel(name: str) -> str:
    words = re.split(r"[^0-9A-Za-z]+", name)
    camel = "".join(w[:1].upper() + w[1:] for w in words if w)
    return camel if camel[:1].isalpha() else f"Task{camel}"


def _default(value: Any) -> Any:
    """A parameter's default as the schema shows it (dropped if it is no JSON value)."""
    try:
        return {"default": to_jsonable_python(value)}
    except Exception:
        return None


def _extra_properties(hint: Any) -> dict[str, Any]:
    """``additionalProperties`` for a ``**kwargs: hint`` (any JSON when it needs definitions)."""
    schema = pydantic.TypeAdapter(hint).json_schema()
    return {"additionalProperties": True if "$defs" in schema else schema}


def _arguments_model(task: Task[Any, Any], camel: str) -> tuple[type[BaseModel], Any]:
    """(the ``kwargs`` model, the type of ``args``) from the task function's signature."""
    func = task.func
    hints = typing.get_type_hints(func, include_extras=True)
    fields: dict[str, Any] = {}
    positional: list[Any] = []
    var_positional: Any = None
    var_keyword: Any = None
    for i, param in enumerate(inspect.signature(func).parameters.values()):
        hint = hints.get(param.name, Any)
        if param.kind is _P.VAR_POSITIONAL:
            var_positional = hint
            continue
        if param.kind is _P.VAR_KEYWORD:
            var_keyword = hint
            continue
        if param.kind is not _P.KEYWORD_ONLY:
            positional.append(hint)
        if param.kind is _P.POSITIONAL_ONLY:
            continue
        # Fields get neutral names and the parameter's as alias: a parameter may be called
        # "json" or "schema", which a pydantic field cannot.
        if param.default is _P.empty:
            info = Field(alias=param.name, title=param.name)
        else:
            shown = _default(param.default)
            info = Field(
                default=None,
                alias=param.name,
                title=param.name,
                json_schema_extra=_drop("default") if shown is None else shown,
            )
        fields[f"p{i}"] = (hint, info)
    config = ConfigDict(extra="forbid", title=f"{camel}Arguments")
    if var_keyword is not None:  # **kwargs: other names are allowed, typed by its hint
        config = ConfigDict(
            extra="allow",
            title=f"{camel}Arguments",
            json_schema_extra=_extra_properties(var_keyword),
        )
    model = pydantic.create_model(
        f"{camel}Arguments",
        __config__=config,
        __doc__=f"Keyword arguments of task {task.name!r}.",
        **fields,
    )
    if var_positional is not None:
        positional.append(var_positional)
    args_type = tuple.__class_getitem__(tuple(positional)) if positional else tuple[()]
    return model, (args_type, var_positional is not None)


def _request_model(task: Task[Any, Any], camel: str) -> type[BaseModel]:
    kwargs_model, (args_type, variadic) = _arguments_model(task, camel)
    doc = inspect.getdoc(task.func) or ""
    summary = doc.split("\n\n", 1)[0].replace("\n", " ")
    return pydantic.create_model(
        f"{camel}JobRequest",
        __config__=ConfigDict(extra="forbid", title=f"{camel}JobRequest"),
        __doc__=f"A job of task {task.name!r}" + (f": {summary}" if summary else "."),
        args=(
            args_type,
            Field(
                default=(),
                description="Positional arguments, in the order of the parameters.",
                json_schema_extra=_positional_schema(variadic),
            ),
        ),
        kwargs=(
            kwargs_model,
            Field(
                default=None,
                description="Keyword arguments, one property per parameter.",
                json_schema_extra=_drop("default"),
            ),
        ),
        options=(JobOptions, Field(default=None, json_schema_extra=_drop("default"))),
    )


def task_request_models(tasks: dict[str, Task[Any, Any]]) -> dict[str, type[BaseModel]]:
    """The typed request body of each task, by task name (schema only: the task validates)."""
    models: dict[str, type[BaseModel]] = {}
    used: set[str] = set()
    for name, task in tasks.items():
        camel = base = _camel(name)
        n = 2
        while camel in used:  # "a-b" and "a_b" would share a name
            camel, n = f"{base}{n}", n + 1
        used.add(camel)
        models[name] = _request_model(task, camel)
    return models
