"""What an operator sees of the API: a request id on every answer, one log line per
request, the request metrics, and the health endpoints (`/metrics` is on METRICS_PORT,
not on this public port: common/metrics.py).

`x-request-id`: a caller's own id (up to 128 printable ASCII characters) is kept,
else one is made; it is returned on the answer and carried by every log line of the
request. A synchronous (v1) submission answers with its job's id there instead, or
with none when it made no job: that is its documented meaning on that route
(docs/api.md); the request's own id is still in its log lines, and the caller's is
logged beside the job's as `client_request_id`.

Pure ASGI middleware (api/asgi.py)."""

from __future__ import annotations

import logging
import re
import time
import uuid

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import MutableHeaders
from starlette.types import Message, Receive, Scope, Send

from api.asgi import HttpMiddleware
from api.deps import SettingsDep
from api.errors import unexpected_error
from api.metrics import HTTP_REQUEST_SECONDS, HTTP_REQUESTS
from common import health
from common.logs import log_context
from common.settings import Settings

logger = logging.getLogger("api.requests")

REQUEST_ID_HEADER = "x-request-id"
_CALLER_ID = re.compile(r"[\x21-\x7e]{1,128}")
# Routes that are not worth a log line each: the probes and the scrape.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_QUIET_ROUTES = frozenset({"/health/live", "/health/ready", "/health"})


def _caller_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _CALLER_ID.fullmatch(text) else None
    return None


class RequestObservability(HttpMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        caller_id = _caller_request_id(scope)
        request_id = caller_id or uuid.uuid4().hex
        state = scope.setdefault("state", {})
        status = 500  # what the server sends if the app raises before answering

        # v1 submissions: the header is the job's id, set by the route, or absent when no
        # job was made (a refusal): never this request's own id (see the docstring).
        v1 = scope["path"].startswith("/v1/")
        started_answer = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started_answer
            if message["type"] == "http.response.start":
                started_answer = True
                status = message["status"]
                headers = MutableHeaders(scope=message)
                answered_id = headers.get(REQUEST_ID_HEADER)
                if answered_id is None and not v1:
                    headers[REQUEST_ID_HEADER] = request_id
                elif answered_id is not None and answered_id != request_id:
                    state["job_id"] = answered_id
            await send(message)

        with log_context(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception as exc:
                # Answered here rather than by Starlette's outermost error middleware, so
                # that the 500 carries the request id and its log lines the error id.
                if started_answer:
                    raise  # too late for a response of our own: the server ends it
                error = unexpected_error(scope["method"], scope["path"], exc, state)
                await error(scope, receive, send_with_id)
            finally:
                self._record(scope, state, status, started, caller_id)

    @staticmethod
    def _record(
        scope: Scope, state: dict[str, object], status: int, started: float, caller_id: str | None
    ) -> None:
        elapsed = time.perf_counter() - started
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        # Label values from a fixed set: a client's made-up method must not mint series.
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        HTTP_REQUESTS.labels(method=method, route=route, status=str(status)).inc()
        HTTP_REQUEST_SECONDS.labels(method=method, route=route).observe(elapsed)
        if route in _QUIET_ROUTES and status < 500:
            return
        fields = {
            "method": method,
            "route": route,
            "path": scope["path"],
            "status": status,
            "duration_ms": round(elapsed * 1000, 1),
        }
        for key in ("account_id", "job_id", "error_id"):
            if state.get(key) is not None:
                fields[key] = str(state[key])
        if state.get("job_id") is not None and caller_id is not None:
            fields["client_request_id"] = caller_id
        level = logging.ERROR if status >= 500 else logging.INFO
        logger.log(level, "%s %s %d", method, scope["path"], status, extra=fields)


router = APIRouter(tags=["ops"], include_in_schema=False)


@router.get("/health/live")
def live() -> dict[str, str]:
    """The process is up and answering (the liveness probe): nothing else is checked,
    so an outage of a dependency never makes Kubernetes restart a healthy API."""
    return {"status": "ok"}


@router.get("/health/ready")
async def ready(settings: SettingsDep) -> Response:
    """PostgreSQL (at the head migration), Redis and S3 reachable within
    HEALTH_CHECK_TIMEOUT_SECONDS: 200, else 503 with what is wrong (common/health.py)."""
    checks = await run_in_threadpool(health.readiness, settings)
    down = health.down(checks)
    if not down:
        return JSONResponse({"status": "ok", "checks": checks})
    return JSONResponse(
        {"error": f"not ready: {', '.join(down)}", "checks": checks}, status_code=503
    )


def not_ready(settings: Settings) -> str | None:
    """The readiness of METRICS_PORT's /health/ready: None, or what is down."""
    checks = health.readiness(settings)
    down = health.down(checks)
    return f"not ready: {', '.join(f'{n}: {checks[n]}' for n in down)}" if down else None
