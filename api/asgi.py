"""The base of the API's own middlewares: pure ASGI (not Starlette's BaseHTTPMiddleware,
which runs every request through an extra task and memory streams, a measurable part
of a status poll's cost: docs/performance.md), and for HTTP requests only: lifespan and
other scopes pass straight through."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class HttpMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One HTTP request: call `self.app` around what the middleware adds."""
        raise NotImplementedError
