"""The one error vocabulary: a `Refusal` is what the caller asked for and cannot have,
with the message meant for them, the HTTP status it is answered with and any headers
(Retry-After). Services raise them; each front end maps them once: the API to a JSON
error in api/errors.py, the CLI to a message and exit status 1 in cli/commands.py.

Anything else that escapes is a failure of ours: the API answers a generic 500/503
with an error id (common/error_ids.py), never the exception's text."""

from __future__ import annotations

from collections.abc import Mapping


class Refusal(Exception):
    """A refusal meant for the caller; its message says why."""

    status_code: int = 400  # each kind sets its own; ApiError sets it per refusal

    def __init__(self, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers) if headers else None


class InvalidInput(Refusal):
    status_code = 400


class NotFound(Refusal):
    status_code = 404


class Conflict(Refusal):
    status_code = 409


class TooMany(Refusal):
    """A bound of the caller's reached: retry later (Retry-After when it is known)."""

    status_code = 429
