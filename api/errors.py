"""Every error leaves the API as JSON `{"error": "..."}`, which Segmind clients read."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SATimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from common import error_ids, metrics
from common.refusals import Refusal

logger = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """The body of every error response (Segmind's SDK reads `error`)."""

    error: str


_DESCRIPTIONS = {
    400: "Invalid request; the message names the field.",
    401: "Missing, unknown or revoked API key.",
    403: "The account is suspended.",
    404: "Unknown (or another account's) request.",
    406: "Not enough credits; the message states cost and balance.",
    409: "The request is in a state that does not allow this.",
    413: "Request body too large.",
    422: "The request FAILED; the body carries `status` and `error`.",
    429: "Rate limit or jobs-in-flight cap reached; see Retry-After.",
    503: "A dependency is unavailable; retry later.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the given error codes, all with the ErrorBody schema."""
    return {code: {"model": ErrorBody, "description": _DESCRIPTIONS[code]} for code in codes}


class ApiError(Refusal):
    """A refusal of the HTTP layer itself (authentication, body size, a request's state),
    with its status code: the same vocabulary as the services' (common/refusals.py),
    answered by the same handler."""

    def __init__(
        self, status_code: int, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message, headers)
        self.status_code = status_code


def parse_id(value: str, what: str) -> uuid.UUID:
    """A path's id; one that is not a UUID names nothing: 404 like an unknown one."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ApiError(404, f"{what} not found") from None


def error_response(
    status_code: int, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status_code, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        field = ".".join(loc) or "body"
        if err.get("type") == "json_invalid":
            return "body: not valid JSON"
        parts.append(f"{field}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Refusal)
    async def _refusal(_: Request, exc: Refusal) -> JSONResponse:
        return error_response(exc.status_code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        messages = {404: "not found", 405: "method not allowed"}
        message = (
            exc.detail if isinstance(exc.detail, str) else messages.get(exc.status_code, "error")
        )
        if exc.status_code in messages and exc.detail in ("Not Found", "Method Not Allowed"):
            message = messages[exc.status_code]
        return error_response(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    @app.exception_handler(SATimeoutError)
    async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        # PostgreSQL down or unreachable: say so quickly; the pool checks idle
        # connections and drops dead ones (common.db.ping_when_idle), so the API
        # recovers by itself once it is back.
        error_id = error_ids.new()
        request.state.error_id = error_id  # the request's log line
        metrics.dependency_error("postgres")
        logger.warning(
            "%s: database unavailable on %s %s: %s", error_id, request.method, request.url.path, exc
        )
        reason = error_ids.for_tenants("the database is unavailable; retry shortly", error_id)
        return error_response(503, reason, {"Retry-After": "5"})

    @app.exception_handler(BotoCoreError)
    @app.exception_handler(ClientError)
    async def _storage_unavailable(request: Request, exc: Exception) -> JSONResponse:
        # Object storage refusing or unreachable while storing an input or signing a URL:
        # nothing was charged (the input is stored before the debit).
        error_id = error_ids.new()
        request.state.error_id = error_id  # the request's log line
        metrics.dependency_error("s3")
        logger.warning(
            "%s: object storage error on %s %s: %s", error_id, request.method, request.url.path, exc
        )
        reason = error_ids.for_tenants("object storage is unavailable; retry shortly", error_id)
        return error_response(503, reason, {"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Reached only from outside the request middleware (api/observability.py answers
        # the requests' own unhandled errors, with their request id).
        state = request.scope.setdefault("state", {})  # what request.state reads and writes
        return unexpected_error(request.method, request.url.path, exc, state)


def unexpected_error(
    method: str, path: str, exc: BaseException, state: dict[str, object]
) -> JSONResponse:
    """The 500 of an unhandled error: a generic reason and an error id for the tenant,
    the traceback logged under that id (recorded in `state` for the request's line)."""
    error_id = error_ids.new()
    state["error_id"] = error_id
    logger.error(
        "%s: unhandled error on %s %s",
        error_id,
        method,
        path,
        exc_info=exc,
        extra={"error_id": error_id},
    )
    return error_response(500, error_ids.for_tenants("internal server error", error_id))
