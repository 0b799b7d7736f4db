"""Request bodies larger than the limit are refused with 413 JSON before they are read
(by Content-Length) or as soon as the streamed bytes pass the limit (chunked uploads,
or a Content-Length that lies low), so an oversized upload never fills memory."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.asgi import HttpMiddleware
from api.errors import error_response


class RequestBodyTooLarge(HTTPException):
    """Raised from `receive` while the app reads the body. An HTTPException, so FastAPI
    passes it through its body parsing to the JSON error handlers (api.errors)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"body: larger than the limit of {limit} bytes")


class RequestBodyLimit(HttpMiddleware):
    """Pure ASGI middleware (api/asgi.py): it must see each body chunk."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        super().__init__(app)
        self.max_bytes = max_bytes

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            error = RequestBodyTooLarge(self.max_bytes)
            await error_response(error.status_code, error.detail)(scope, receive, send)
            return

        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise RequestBodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except RequestBodyTooLarge as exc:
            # Normally the app's exception handlers answer; this covers a body read
            # outside them (another middleware).
            if response_started:
                raise
            await error_response(exc.status_code, exc.detail)(scope, receive, send)
