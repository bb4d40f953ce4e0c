"""Request bodies larger than RLHF_MAX_BODY_BYTES are answered 413, in OpenAI's error shape.

    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)

Checked twice: a declared `Content-Length` above the limit is refused before any of the body is
read, and a body sent without one (chunked) is counted while it streams in and cut off as soon as
it passes the limit, so a 64 MB upload costs the server at most the limit in memory and never
reaches the JSON parser. The server closes the connection after the 413 (the rest of the body is
never read).
"""

from __future__ import annotations

import json

from fastapi import HTTPException

from serving.protocol import error_body

CODE = "request_too_large"


class BodyTooLarge(HTTPException):
    """Raised from the body stream once it passes the limit; serving/errors.py answers it 413."""

    def __init__(self, max_bytes: int):
        super().__init__(413, f"the request body is larger than {max_bytes} bytes (RLHF_MAX_BODY_BYTES)")


class BodySizeLimit:
    """Pure ASGI middleware (no buffering): refuse by Content-Length, or count the body as it is received."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            return await self._refuse(send)
        received = 0
        started = False

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:  # raised past the app's own handlers (e.g. by a route that reads the raw body)
            if not started:
                await self._refuse(send)

    async def _refuse(self, send) -> None:
        body = json.dumps(error_body(BodyTooLarge(self.max_bytes).detail, code=CODE)).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed length itself
    return None
