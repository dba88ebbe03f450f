"""The app's topics as an AsyncAPI 3.0 document (``GET /asyncapi.json``).

One channel per topic the app declares (``app.topic``), per pattern its subscribers consume,
and for the job lifecycle topics when any task announces them. Each channel's message is the
CloudEvents structured envelope, its ``data`` described by the declared type (a subscriber's
parameter type for its patterns) through pydantic's JSON Schema, with shared definitions under
``components.schemas``. Publishing operations (``send``) are the declared topics; receiving
operations are the subscriber groups.
"""

from __future__ import annotations

import re
from typing import Any

from dromos import __version__
from dromos.app import App
from dromos.events.lifecycle import JOB_EVENT_TYPES

__all__ = ["build_asyncapi"]

_REF = "#/components/schemas/{model}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text.replace("#", "all").replace("*", "any")).strip("_")


def _data_schema(data_type: Any, schemas: dict[str, Any]) -> dict[str, Any]:
    if data_type is None:
        return {}
    import pydantic

    schema = pydantic.TypeAdapter(data_type).json_schema(ref_template=_REF)
    schemas.update(schema.pop("$defs", {}))
    title = schema.get("title")
    if schema.get("type") == "object" and isinstance(title, str):  # a model: a named component
        schemas[title] = schema
        return {"$ref": _REF.format(model=title)}
    return schema


def _envelope(address: str, data: dict[str, Any]) -> dict[str, Any]:
    topic = {"const": address} if "*" not in address and "#" not in address else {
        "type": "string", "description": f"A topic matching {address}"}  # fmt: skip
    return {
        "type": "object",
        "required": ["specversion", "id", "source", "type"],
        "properties": {
            "specversion": {"const": "1.0"},
            "id": {"type": "string"},
            "source": {"type": "string"},
            "type": topic,
            "time": {"type": "string", "format": "date-time"},
            "datacontenttype": {"const": "application/json"},
            "subject": {"type": "string"},
            "data": data,
        },
        "additionalProperties": True,
    }


def build_asyncapi(app: App) -> dict[str, Any]:
    """The document, built from the app as it is now."""
    schemas: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}

    def channel(address: str, data_type: Any, description: str) -> str:
        key = _slug(address)
        if key not in channels:
            name = f"{key}_event"
            messages[name] = {
                "name": address,
                "contentType": "application/cloudevents+json",
                "payload": _envelope(address, _data_schema(data_type, schemas)),
            }
            channels[key] = {
                "address": address,
                "description": description,
                "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            }
        return key

    for topic, data_type in sorted(app.topics.types.items()):
        key = channel(topic, data_type, f"Events of topic {topic}.")
        operations[f"publish_{key}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{key}"},
            "summary": f"Publish on {topic} (app.publish, POST /v1/events/{topic}).",
        }
    if app.job_events or any(t.events for t in app.tasks.values()):
        for topic in JOB_EVENT_TYPES.values():
            channel(topic, None, "A job's change of state (job id, task, queue, state, attempt; "
                    "result or error at its end).")  # fmt: skip
    for sub in app.subscribers:
        for pattern in sub.patterns:
            key = channel(pattern, sub.data_type, f"Events matching {pattern}.")
            operations[f"receive_{_slug(sub.group)}_{key}"] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{key}"},
                "summary": f"Consumer group {sub.group} ({sub.name}).",
            }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": f"dromos events: {app.name}",
            "version": __version__,
            "description": "CloudEvents 1.0 (structured JSON) on the dromos event bus; topic "
            "patterns: `*` one word, `#` any number of words.",
        },
        "defaultContentType": "application/cloudevents+json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }
