"""Keyset cursors of the newest-first listings (requests, accounts, webhook deliveries):
the last row's (created_at, id), opaque to clients, so a page never skips or repeats a
row however many rows arrive meanwhile."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime

from common.refusals import InvalidInput


def encode(created_at: datetime, row_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The (created_at, id) a cursor holds; InvalidInput if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, row_id = raw.partition("|")
        when = datetime.fromisoformat(created)
        return (when if when.tzinfo else when.replace(tzinfo=UTC)), uuid.UUID(row_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidInput("cursor: not a cursor returned by this listing") from None
