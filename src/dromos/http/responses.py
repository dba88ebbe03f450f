"""What the gateway answers: msgspec Structs, encoded as they are, and their JSON Schema.

Bodies are encoded by msgspec from :class:`dromos.JobStatus` and the few Structs here, so the
answer of ``GET /v1/jobs/{id}`` is byte for byte ``dromos status --json``. Their JSON Schema
for the OpenAPI document is generated from the same Structs (:func:`response_components`),
so the document cannot drift from what is sent when ``JobStatus`` gains a field: each field's
description is its docstring, every field is marked required (an answer always carries every
field; null where there is nothing), and ``datetime`` fields are ``format: date-time``.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import textwrap
from datetime import datetime
from typing import Any

import msgspec

from dromos.job import JobState, JobStatus

__all__ = [
    "FieldError",
    "Health",
    "JobPage",
    "Problem",
    "Published",
    "Queue",
    "QueueList",
    "response_components",
]


class FieldError(msgspec.Struct, frozen=True, kw_only=True):
    """One input that does not fit."""

    field: str
    """Dotted path of the input, e.g. ``image_id`` or ``options.delay`` (or ``(arguments)``)."""
    loc: list[str | int]
    """The same path as a list."""
    reason: str
    """Why it does not fit, in words."""
    type: str
    """A machine-readable kind of error, as pydantic names it (``int_parsing``, ...)."""


class Problem(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Every error: RFC 9457 problem details (``application/problem+json``)."""

    type: str
    """``urn:dromos:problem:<kind>``: stable, to branch on."""
    title: str
    """A summary, the same for every problem of this type."""
    status: int
    """The HTTP status code."""
    detail: str
    """What went wrong this time, and what to do next."""
    instance: str | None = None
    """The path that was requested."""
    errors: list[FieldError] | None = None
    """For 422: each input that does not fit."""


class JobPage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of jobs, newest first."""

    jobs: list[JobStatus]
    """The jobs of this page."""
    next_cursor: str | None
    """Pass as ``?cursor=`` for the next (older) page; null on the last page."""


class Queue(msgspec.Struct, frozen=True, kw_only=True):
    """One queue and how many jobs it holds in each state."""

    queue: str
    """The queue's name."""
    counts: dict[str, int]
    """Jobs per state: every state is present, 0 when there are none."""


class QueueList(msgspec.Struct, frozen=True, kw_only=True):
    """Every queue that holds jobs."""

    queues: list[Queue]
    """The queues, by name."""


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """The answer of ``/healthz`` and ``/readyz``."""

    status: str
    """``ok`` (the process answers) or ``ready`` (the broker answers too)."""


class Published(msgspec.Struct, frozen=True, kw_only=True):
    """The answer of ``POST /v1/events/{topic}``."""

    id: str
    """The event's id (CloudEvents ``id``)."""
    topic: str
    """The topic it was published on (its CloudEvents ``type``)."""


class BatchAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """A batch: its counts, progress and jobs (``POST /v1/batches``, ``GET /v1/batches/{id}``)."""

    id: str
    total: int
    """Jobs in the batch."""
    succeeded: int
    failed: int
    """Jobs that failed for good (dead-lettered)."""
    cancelled: int
    ended: int
    """Jobs that ended, each counted once."""
    progress: float
    """``ended / total``."""
    done: bool
    """Every job ended (the ``on_complete`` job, if any, is queued)."""
    callback_id: str | None = None
    """The ``on_complete`` job's id (``GET /v1/jobs/{id}``), if there is one."""
    finished_at: datetime | None = None
    """When the last job ended."""
    jobs: list[str]
    """The jobs' ids, in the order submitted."""


#: The response bodies the routes name (by class name) in the OpenAPI document.
RESPONSE_STRUCTS: tuple[type[msgspec.Struct], ...] = (
    JobStatus,
    BatchAnswer,
    Published,
    JobPage,
    QueueList,
    Health,
    Problem,
)


def _attribute_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal under it), read from the class's source."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = inspect.cleandoc(after.value.value).replace("``", "`")
    return docs


def _structs(info: msgspec.inspect.Type, found: dict[str, msgspec.inspect.StructType]) -> None:
    """Every Struct type reachable from ``info``, by class name."""
    if isinstance(info, msgspec.inspect.StructType):
        if info.cls.__name__ in found:
            return
        found[info.cls.__name__] = info
        for f in info.fields:
            _structs(f.type, found)
    elif isinstance(info, msgspec.inspect.UnionType):
        for t in info.types:
            _structs(t, found)
    elif isinstance(info, msgspec.inspect.CollectionType | msgspec.inspect.DictType):
        _structs(info.value_type if isinstance(info, msgspec.inspect.DictType) else info.item_type,
                 found)  # fmt: skip


def _is_datetime(info: msgspec.inspect.Type) -> bool:
    if isinstance(info, msgspec.inspect.UnionType):
        return any(_is_datetime(t) for t in info.types)
    return isinstance(info, msgspec.inspect.DateTimeType)


def _refine(schema: dict[str, Any], struct: msgspec.inspect.StructType) -> None:
    """Descriptions, required fields and date-time formats on one Struct's schema."""
    docs = _attribute_docs(struct.cls)
    if "description" in schema:
        schema["description"] = schema["description"].replace("``", "`")
    properties: dict[str, Any] = schema.get("properties", {})
    for f in struct.fields:
        prop = properties.get(f.encode_name)
        if prop is None:
            continue
        if f.name in docs:
            prop["description"] = docs[f.name]
        if _is_datetime(f.type):
            for option in prop.get("anyOf", [prop]):
                if option.get("type") == "string":
                    option["format"] = "date-time"
    if not struct.cls.__struct_config__.omit_defaults:  # every field is written, defaults too
        schema["required"] = [f.encode_name for f in struct.fields]


def response_components(ref_template: str) -> dict[str, Any]:
    """The JSON Schema of every response body (and what they contain), by component name."""
    _, components = msgspec.json.schema_components(RESPONSE_STRUCTS, ref_template=ref_template)
    found: dict[str, msgspec.inspect.StructType] = {}
    for info in msgspec.inspect.multi_type_info(RESPONSE_STRUCTS):
        _structs(info, found)
    for name, struct in found.items():
        if name in components:
            _refine(components[name], struct)
    # Every state is a property of its own, so that a typed client gets a field per state.
    counts = {
        "title": "QueueCounts",
        "description": "Jobs per state in one queue.",
        "type": "object",
        "properties": {s.value: {"type": "integer", "minimum": 0} for s in JobState},
        "required": [s.value for s in JobState],
    }
    components["QueueCounts"] = counts
    components["Queue"]["properties"]["counts"] = {
        "$ref": ref_template.format(name="QueueCounts"),
        "description": components["Queue"]["properties"]["counts"].get("description", ""),
    }
    components[JobState.__name__]["enum"] = [s.value for s in JobState]  # in their life's order
    return dict(components)
