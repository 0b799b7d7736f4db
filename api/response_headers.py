"""Headers every authenticated answer carries, errors included: `x-remaining-credits`
and the caller key's `X-RateLimit-*` (api/ratelimit.py). Endpoints and dependencies
record them on the request's state; this middleware adds them as the answer starts.

Pure ASGI (api/asgi.py)."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import Message, Receive, Scope, Send

from api.asgi import HttpMiddleware


class AccountHeaders(HttpMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Request.state reads and writes this dict (uvicorn gives each request its own).
        state = scope.setdefault("state", {})

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                balance = state.get("remaining_credits")
                if balance is not None:
                    headers["x-remaining-credits"] = str(balance)
                for name, value in state.get("rate_limit_headers", {}).items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
