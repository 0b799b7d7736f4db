"""The /admin guard: `Authorization: Bearer <ADMIN_TOKEN>`, and nothing else.

Tenant API keys are a different credential and never open it. Without ADMIN_TOKEN the
whole admin API answers 503, so a deployment that never set a token exposes nothing.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api import ratelimit
from api.deps import SettingsDep
from api.errors import ApiError

_CHALLENGE = {"WWW-Authenticate": "Bearer"}
# auto_error=False: a missing header becomes our JSON 401, not FastAPI's own body.
_bearer = HTTPBearer(auto_error=False, description="The operator's ADMIN_TOKEN.")


def require_admin(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    expected = settings.admin_token.get_secret_value() if settings.admin_token else ""
    if not expected:
        raise ApiError(503, "admin API disabled: set ADMIN_TOKEN to enable it")
    if credentials is None or not credentials.credentials:
        raise ApiError(
            401, "missing admin token: send Authorization: Bearer <ADMIN_TOKEN>", _CHALLENGE
        )
    # Guessing is slowed per client address: past ADMIN_AUTH_FAILURES_PER_MINUTE wrong
    # tokens, every admin call from it is refused until the minute ends, before any
    # comparison (so a guess in that time learns nothing, right or wrong).
    source = f"admin-auth:{request.client.host if request.client else 'unknown'}"
    failed, reset = ratelimit.failures(source)
    if failed >= settings.admin_auth_failures_per_minute:
        raise ApiError(
            429,
            f"too many wrong admin tokens from this address; retry in {reset}s",
            {"Retry-After": str(reset)},
        )
    # Constant-time comparison: response timing must not reveal how much of it matched.
    if not hmac.compare_digest(credentials.credentials.encode(), expected.encode()):
        ratelimit.count_failure(source)
        raise ApiError(401, "invalid admin token", _CHALLENGE)
