"""The operator's side of a test: accounts and limits through the /admin API."""

from __future__ import annotations

import httpx

from tests.support.live import Stack

MISSING = "00000000-0000-0000-0000-000000000000"


def new_account(live_stack: Stack, credits: int = 100, name: str = "admin-test") -> dict:
    with live_stack.admin() as admin:
        response = admin.post("/accounts", json={"name": name, "credits": credits})
    assert response.status_code == 201, response.text
    body: dict = response.json()
    return body


def me(live_stack: Stack, key: str) -> httpx.Response:
    with live_stack.client(key) as client:
        return client.get("/v1/account")


def set_limits(live_stack: Stack, account_id: str, **limits: int | None) -> dict:
    with live_stack.admin() as admin:
        response = admin.patch(f"/accounts/{account_id}/limits", json=limits)
    assert response.status_code == 200, response.text
    body: dict = response.json()
    return body
