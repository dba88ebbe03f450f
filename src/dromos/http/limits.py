"""The request body limit: 413 before a large body is read, and while a lying one streams in.

A ``Content-Length`` over the limit is refused at once, without reading a byte. A body sent
without one (chunked), or longer than it said, is counted as it arrives and refused when the
count passes the limit, so no request can make the gateway buffer more than the limit.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dromos.http.problems import ProblemError

__all__ = ["BodyLimit"]


def _too_large(limit: int) -> ProblemError:
    return ProblemError(
        413,
        f"the request body is larger than {limit} bytes; send less (the limit is the "
        "gateway's max_body_size)",
        headers={"Connection": "close"},
    )


class BodyLimit:
    """ASGI middleware refusing request bodies over ``limit`` bytes with 413."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0:
                    problem = ProblemError(400, "Content-Length is not a number of bytes")
                    await problem.response()(scope, receive, send)
                    return
                if declared > self.limit:
                    await _too_large(self.limit).response()(scope, receive, send)
                    return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _too_large(self.limit)
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except ProblemError as exc:
            # Raised in a handler's body read: the app's handlers answer it first, this is
            # only for a read outside them (a middleware reading the body).
            if started:
                raise
            await exc.response()(scope, receive, send)
