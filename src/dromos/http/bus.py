"""The event bus over HTTP: publish, stream a group's events as SSE, the AsyncAPI document.

``POST /v1/events/{topic}`` publishes (scope ``publish``): the JSON body is the event's data,
or, sent as ``application/cloudevents+json``, a whole structured CloudEvent (its ``id``,
``source``, ``subject`` and extension attributes are kept; ``type`` must be the topic). ``GET
/v1/events/{pattern}/stream?group=NAME`` makes the client an instance of consumer group NAME
(scope ``read``): every matching event as an SSE event (``event:`` the topic, ``id:`` its key
on the bus, ``data:`` the CloudEvent JSON), acknowledged once written to the connection. SSE has no
acknowledgement from the client: events written to a connection that then drops, before the
client read them, are not sent again (at most once for those; batches are kept small to keep
them few). A consumer that must not miss one runs a subscriber in a worker instead.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.responses import Response, StreamingResponse

from dromos.app import App
from dromos.brokers.base import Broker, EventOutcome
from dromos.errors import ConfigurationError, ValidationError
from dromos.events.envelope import decode_event
from dromos.events.topics import check_pattern
from dromos.http.auth import Scope
from dromos.http.guard import Guard
from dromos.http.openapi import json_body
from dromos.http.problems import ProblemError, field_errors
from dromos.http.responses import Published
from dromos.message import DecodeError

__all__ = ["STREAM_LEASE", "events_router", "stream"]

STREAM_LEASE = 30.0  # seconds an event streamed to a client stays leased before its ack
_BATCH = 16
_KEEPALIVE = 15.0
_CLOUDEVENTS = "application/cloudevents+json"
_GROUP = re.compile(r"[A-Za-z0-9_.:\-]{1,200}\Z")

Topic = Annotated[str, Path(description="The topic (dot-separated words).", max_length=255)]


async def stream(broker: Broker, group: str) -> AsyncIterator[bytes]:
    """The SSE bytes of one consumer of ``group`` (joined already), until the client leaves."""
    yield b"retry: 1000\n\n"
    while True:
        got = await broker.claim_events(group, _BATCH, STREAM_LEASE)
        if not got:
            await broker.wait_for_events([group], _KEEPALIVE)
            yield b": keep-alive\n\n"
            continue
        for d in got:
            data = b"\ndata: ".join(d.payload.splitlines()) or b"null"
            yield b"event: %s\nid: %s\ndata: %s\n\n" % (d.topic.encode(), d.key.encode(), data)
        # Written to the connection (a client that left raises at the yield above first).
        await broker.settle_events(group, [EventOutcome(d.key, d.attempt) for d in got])


def events_router(app: App, guard: Guard) -> APIRouter:
    """``/v1/events/...`` and ``/asyncapi.json``."""
    router = APIRouter(tags=["events"])

    @router.post(
        "/v1/events/{topic}",
        operation_id="publish_event",
        summary="Publish an event",
        description="The JSON body is the event's data; as `application/cloudevents+json` "
        "it is a whole structured CloudEvent. Needs the `publish` scope.",
        status_code=202,
        dependencies=[Depends(guard.require(Scope.PUBLISH))],
        response_model=None,
        responses={
            202: json_body("Published", "Stored on the bus."),
            422: {"description": "The topic, or the data against its declared type."},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {}},
                    _CLOUDEVENTS: {"schema": {"type": "object"}},
                },
            }
        },
    )
    async def publish(request: Request, topic: Topic) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in ("application/json", _CLOUDEVENTS) and not (
            content_type.startswith("application/") and content_type.endswith("+json")
        ):
            raise ProblemError(415, f"send JSON (application/json), not {content_type or 'none'}")
        raw = await request.body()
        fields: dict[str, Any] = {}
        try:
            if content_type == _CLOUDEVENTS:
                event = decode_event(raw)
                if event.type != topic:
                    raise ProblemError(422, f"the event's type {event.type!r} is not the topic "
                                       f"{topic!r} of the URL", errors=[])  # fmt: skip
                data: Any = event.data
                fields = {"id": event.id, "subject": event.subject, "source": event.source,
                          "extensions": dict(event.extensions)}  # fmt: skip
            else:
                data = msgspec.json.decode(raw)
        except (msgspec.DecodeError, DecodeError) as exc:
            raise ProblemError(400, f"the body is not valid: {exc}") from None
        try:
            event_id = await app.apublish(topic, data, **fields)
        except ValidationError as exc:
            problems = field_errors(exc.errors)
            raise ProblemError(
                422,
                str(exc),
                slug="invalid-event",
                title="The event does not fit its topic",
                errors=problems,
            ) from None
        except ConfigurationError as exc:
            raise ProblemError(422, str(exc), errors=[]) from None
        body = msgspec.json.encode(Published(id=event_id, topic=topic))
        return Response(body, status_code=202, media_type="application/json")

    @router.get(
        "/v1/events/{topic}/stream",
        operation_id="stream_events",
        summary="Consume a group's events as Server-Sent Events",
        description="`{topic}` may be a pattern (`*` one word, `#` any number, URL-encoded as "
        "`%23`). The client is one instance of consumer group `group`: connections of one "
        "group share its events, every group gets all of them. Needs the `read` scope.",
        dependencies=[Depends(guard.require(Scope.READ))],
        response_model=None,
        responses={
            200: {
                "description": "A stream of events.",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            422: {"description": "A bad pattern or group."},
        },
    )
    async def stream_events(
        topic: Topic,
        group: Annotated[str, Query(description="The consumer group.", max_length=200)],
        start: Annotated[
            str, Query(pattern="^(latest|earliest)$", description="Where a new group starts.")
        ] = "latest",
    ) -> Response:
        try:
            check_pattern(topic)
        except ConfigurationError as exc:
            raise ProblemError(422, str(exc), errors=[]) from None
        if not _GROUP.match(group):
            raise ProblemError(422, "group: 1-200 letters, digits and . _ : -", errors=[])
        broker = await app.abroker()
        await broker.join_group(group, [topic], start)
        return StreamingResponse(
            stream(broker, group),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @router.get("/asyncapi.json", include_in_schema=False)
    async def asyncapi() -> Response:
        from dromos.http.asyncapi import build_asyncapi

        return Response(msgspec.json.encode(build_asyncapi(app)), media_type="application/json")

    return router
