"""Error ids: what a tenant sees of an internal failure, and how the operator finds it.

A tenant gets a generic reason and an id (`err_` and 12 hex digits), never the internal
detail (exception reprs, S3 endpoints, SQL, stack traces); the detail is logged under
the same id, so a tenant's support request leads straight to the log line."""

from __future__ import annotations

import secrets


def new() -> str:
    return f"err_{secrets.token_hex(6)}"


def for_tenants(reason: str, error_id: str) -> str:
    """`reason`, generic, with the id that finds the detail in the logs."""
    return f"{reason} (error id {error_id})"
