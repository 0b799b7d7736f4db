"""The operator's /admin API over HTTP: its guard, accounts, credits, keys, suspension,
and what `GET /v1/account` shows a tenant (its own things, nothing of another's)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import httpx
import pytest

from common.db import session_scope
from common.models import Job
from tests.support.admin import MISSING, me, new_account
from tests.support.extra_api import held_api
from tests.support.helpers import job_body
from tests.support.live import Stack

# Every tenant endpoint, as (method, path, JSON body).
TENANT_CALLS: list[tuple[str, str, dict[str, object] | None]] = [
    ("POST", "/v2/ssd-img2img", job_body()),
    ("GET", f"/v2/requests/{MISSING}/status", None),
    ("GET", f"/v2/requests/{MISSING}", None),
    ("GET", "/v2/requests", None),
    ("GET", "/v1/account", None),
]


def call(live_stack: Stack, key: str, method: str, path: str, body: object) -> httpx.Response:
    with live_stack.client(key) as client:
        return client.request(method, path, json=body)


# --- the guard --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_headers",
    [
        lambda key: {},
        lambda key: {"authorization": "Bearer wrong-token"},
        lambda key: {"authorization": "Basic YWRtaW46YWRtaW4="},
        lambda key: {"authorization": f"Bearer {key}"},  # an account key is not an admin token
        lambda key: {"x-api-key": key},
    ],
    ids=["none", "wrong", "basic", "account-key-as-bearer", "account-key-header"],
)
def test_admin_api_refuses_anything_but_the_admin_token(
    live_stack: Stack, make_headers: Callable[[str], dict[str, str]]
) -> None:
    _, key = live_stack.create_account()
    with httpx.Client(base_url=live_stack.api_url, timeout=30) as client:
        for method, path in [
            ("GET", "/admin/accounts"),
            ("POST", "/admin/accounts"),
            ("GET", f"/admin/accounts/{MISSING}"),
            ("POST", f"/admin/keys/{MISSING}/revoke"),
        ]:
            response = client.request(method, path, headers=make_headers(key), json={})
            assert response.status_code == 401, (path, response.text)
            assert "admin token" in response.json()["error"]
            assert response.headers["www-authenticate"] == "Bearer"


def test_wrong_admin_tokens_lock_out_their_address_only(live_stack: Stack) -> None:
    """Past ADMIN_AUTH_FAILURES_PER_MINUTE (20, the default) wrong tokens, an address gets
    429 for every admin call, the right token included; other addresses are not
    affected. The guesser and the operator send from addresses of their own (the
    fuzzer's wrong tokens come from 127.0.0.1); an API of its own, as the test stack
    turns the lockout off."""
    # Fresh loopback addresses (all of 127/8 is loopback): counters of their own, even
    # when the test runs again within the minute.
    guesser_address, operator_address = (
        f"127.{b[0]}.{b[1]}.{max(b[2], 2)}" for b in (uuid.uuid4().bytes, uuid.uuid4().bytes)
    )
    guesser = httpx.HTTPTransport(local_address=guesser_address)
    right = {"authorization": f"Bearer {live_stack.env['ADMIN_TOKEN']}"}
    with (
        held_api(live_stack, "lockout", ADMIN_AUTH_FAILURES_PER_MINUTE="20") as api,
        httpx.Client(base_url=api.url, transport=guesser, timeout=30) as client,
        httpx.Client(
            base_url=api.url,
            transport=httpx.HTTPTransport(local_address=operator_address),
            timeout=30,
        ) as operator,
    ):
        for i in range(20):
            response = client.get("/admin/accounts", headers={"authorization": f"Bearer x{i}"})
            assert response.status_code == 401, (i, response.text)
        for headers in ({"authorization": "Bearer x20"}, right):
            response = client.get("/admin/accounts", headers=headers)
            assert response.status_code == 429, response.text
            assert "too many wrong admin tokens" in response.json()["error"]
            assert 1 <= int(response.headers["retry-after"]) <= 60
        assert operator.get("/admin/accounts", headers=right).status_code == 200


def test_admin_token_is_refused_by_the_tenant_api(live_stack: Stack) -> None:
    with live_stack.client(live_stack.env["ADMIN_TOKEN"]) as client:
        assert client.get("/v1/account").status_code == 401


# --- accounts and credits ---------------------------------------------------------------


def test_create_account_shows_the_key_once_and_it_works(live_stack: Stack) -> None:
    created = new_account(live_stack, credits=50, name="acme")
    account, key = created["account"], created["api_key"]
    assert account["name"] == "acme"
    assert account["status"] == "active"
    assert account["balance"] == 50
    assert key["api_key"].startswith(key["prefix"])
    assert key["account_id"] == account["id"]
    assert "key_hash" not in key

    response = me(live_stack, key["api_key"])
    assert response.status_code == 200
    assert response.json()["id"] == account["id"]
    assert response.json()["balance"] == 50

    with live_stack.admin() as admin:
        detail = admin.get(f"/accounts/{account['id']}").json()
        listed = admin.get(f"/accounts/{account['id']}/keys").json()["keys"]
    assert detail["active_keys"] == 1
    assert detail["jobs_in_flight"] == 0
    assert [(e["amount"], e["reason"]) for e in detail["recent_ledger"]] == [(50, "grant")]
    # Listings never carry the key itself or its hash.
    assert listed == [{k: v for k, v in key.items() if k != "api_key"}]


def test_add_credits_grant_and_adjustment(live_stack: Stack) -> None:
    created = new_account(live_stack, credits=100)
    account_id, key = created["account"]["id"], created["api_key"]["api_key"]
    with live_stack.admin() as admin:
        granted = admin.post(f"/accounts/{account_id}/credits", json={"amount": 25})
        assert granted.status_code == 200, granted.text
        assert granted.json()["account"]["balance"] == 125
        assert granted.json()["entry"]["reason"] == "grant"

        adjusted = admin.post(
            f"/accounts/{account_id}/credits",
            json={"amount": -30, "reason": "adjustment", "note": "double grant by mistake"},
        )
        assert adjusted.status_code == 200, adjusted.text
        assert adjusted.json()["account"]["balance"] == 95
        assert adjusted.json()["entry"]["note"] == "double grant by mistake"

        refused = [
            ({"amount": -5}, 400, "grant must be positive"),
            ({"amount": 0}, 400, "grant must be positive"),
            ({"amount": 5, "reason": "adjustment"}, 400, "note"),
            ({"amount": 0, "reason": "adjustment", "note": "x"}, 400, "zero"),
            ({"amount": -96, "reason": "adjustment", "note": "x"}, 409, "below zero"),
            ({"amount": "5"}, 400, "amount"),
            ({"amount": 10**13}, 400, "amount"),
            ({"amount": 5, "reason": "job_refund"}, 400, "reason"),
            ({"amount": 5, "extra": 1}, 400, "extra"),
        ]
        for body, code, message in refused:
            response = admin.post(f"/accounts/{account_id}/credits", json=body)
            assert response.status_code == code, (body, response.text)
            assert message in response.json()["error"], (body, response.text)

    mine = me(live_stack, key).json()
    assert mine["balance"] == 95  # nothing refused changed anything
    assert [(e["amount"], e["reason"]) for e in mine["recent_ledger"]] == [
        (-30, "adjustment"),
        (25, "grant"),
        (100, "grant"),
    ]


def test_admin_errors_are_json_4xx(live_stack: Stack) -> None:
    with live_stack.admin() as admin:
        cases = [
            admin.get(f"/accounts/{MISSING}"),
            admin.post(f"/accounts/{MISSING}/credits", json={"amount": 5}),
            admin.post(f"/accounts/{MISSING}/suspend"),
            admin.patch(f"/accounts/{MISSING}/limits", json={"max_jobs_in_flight": 2}),
            admin.post(f"/accounts/{MISSING}/keys", json={}),
            admin.get(f"/accounts/{MISSING}/keys"),
            admin.post(f"/keys/{MISSING}/revoke"),
        ]
        for response in cases:
            assert response.status_code == 404, response.text
            assert "not found" in response.json()["error"]
        for response, field in [
            (admin.get("/accounts/not-a-uuid"), "account_id"),
            (admin.post("/accounts", json={"credits": 5}), "name"),
            (admin.post("/accounts", json={"name": "x", "credits": -1}), "credits"),
            (admin.post("/accounts", json={"name": "   "}), "name"),
            (admin.post("/accounts", json={"name": "a\u0000b"}), "name"),
            (admin.post("/accounts", json={"name": "x" * 201}), "name"),
            (
                admin.post(
                    "/accounts", content=b"{nope", headers={"content-type": "application/json"}
                ),
                "JSON",
            ),
            (admin.get("/accounts", params={"cursor": "garbage!"}), "cursor"),
            (admin.get("/accounts", params={"status": "deleted"}), "status"),
            (admin.get("/accounts", params={"limit": 0}), "limit"),
        ]:
            assert response.status_code == 400, response.text
            assert field in response.json()["error"]


def test_list_accounts_pages_and_filters(live_stack: Stack) -> None:
    ids = {new_account(live_stack, name=f"page-{i}")["account"]["id"] for i in range(3)}
    with live_stack.admin() as admin:
        suspended = next(iter(ids))
        assert admin.post(f"/accounts/{suspended}/suspend").status_code == 200
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, str | int] = {"limit": 2}
            if cursor:
                params["cursor"] = cursor
            page = admin.get("/accounts", params=params).json()
            assert len(page["accounts"]) <= 2
            seen += [a["id"] for a in page["accounts"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        only_suspended = admin.get("/accounts", params={"status": "suspended", "limit": 200})
    assert len(seen) == len(set(seen))  # no account twice across pages
    assert ids <= set(seen)
    assert {a["status"] for a in only_suspended.json()["accounts"]} == {"suspended"}
    assert suspended in {a["id"] for a in only_suspended.json()["accounts"]}


# --- keys -------------------------------------------------------------------------------


def test_key_lifecycle(live_stack: Stack) -> None:
    created = new_account(live_stack)
    account_id, first = created["account"]["id"], created["api_key"]
    with live_stack.admin() as admin:
        response = admin.post(f"/accounts/{account_id}/keys", json={"name": "ci"})
        assert response.status_code == 201, response.text
        second = response.json()
        assert second["name"] == "ci"
        assert second["api_key"] != first["api_key"]

        for key in (first, second):
            assert me(live_stack, key["api_key"]).status_code == 200

        revoked = admin.post(f"/keys/{second['id']}/revoke")
        assert revoked.status_code == 200
        assert revoked.json()["revoked_at"] is not None
        again = admin.post(f"/keys/{second['id']}/revoke")
        assert again.json()["revoked_at"] == revoked.json()["revoked_at"]  # idempotent

        for method, path, body in TENANT_CALLS:
            response = call(live_stack, second["api_key"], method, path, body)
            assert response.status_code == 401, (path, response.text)
            assert "revoked" in response.json()["error"]
        assert me(live_stack, first["api_key"]).status_code == 200

        keys = admin.get(f"/accounts/{account_id}/keys").json()["keys"]
        assert [(k["id"], k["revoked_at"] is None) for k in keys] == [
            (first["id"], True),
            (second["id"], False),
        ]
        assert all(set(k) == set(first) - {"api_key"} for k in keys)
        assert admin.get(f"/accounts/{account_id}").json()["active_keys"] == 1


# --- suspension -------------------------------------------------------------------------


def test_suspended_account_is_refused_everywhere_until_reactivated(live_stack: Stack) -> None:
    created = new_account(live_stack, credits=100)
    account_id, key = created["account"]["id"], created["api_key"]["api_key"]
    with live_stack.admin() as admin:
        response = admin.post(f"/accounts/{account_id}/suspend")
        assert response.json()["status"] == "suspended"
        for method, path, body in TENANT_CALLS:
            response = call(live_stack, key, method, path, body)
            assert response.status_code == 403, (path, response.text)
            assert "suspended" in response.json()["error"]

        response = admin.post(f"/accounts/{account_id}/reactivate")
        assert response.json()["status"] == "active"
    assert me(live_stack, key).json()["balance"] == 100  # the refused submit cost nothing
    assert me(live_stack, key).json()["status"] == "active"


# --- GET /v1/account ----------------------------------------------------------------------


def test_account_endpoint_shows_only_the_callers_own(live_stack: Stack) -> None:
    alice = new_account(live_stack, credits=111, name="alice")
    bob = new_account(live_stack, credits=222, name="bob")
    alice_key, bob_key = alice["api_key"]["api_key"], bob["api_key"]["api_key"]

    with live_stack.client(bob_key) as client:
        submitted = client.post("/v2/ssd-img2img", json=job_body())
    assert submitted.status_code == 200, submitted.text
    bob_job = submitted.json()["request_id"]

    mine = me(live_stack, alice_key)
    assert mine.status_code == 200
    assert int(mine.headers["x-remaining-credits"]) == 111
    body = mine.json()
    assert body["id"] == alice["account"]["id"]
    assert body["name"] == "alice"
    assert body["balance"] == 111
    assert body["jobs_in_flight"] == 0
    assert [(e["amount"], e["reason"], e["job_id"]) for e in body["recent_ledger"]] == [
        (111, "grant", None)
    ]

    theirs = me(live_stack, bob_key).json()
    assert theirs["id"] == bob["account"]["id"]
    ledger = [(e["amount"], e["reason"], e["job_id"]) for e in theirs["recent_ledger"]]
    assert (-20, "job_debit", bob_job) in ledger
    assert set(body) == set(theirs)
    assert str(uuid.UUID(theirs["id"])) not in mine.text
    assert bob_job not in mine.text


def test_suspension_refuses_new_calls_but_lets_accepted_jobs_finish(live_stack: Stack) -> None:
    created = new_account(live_stack, credits=1000, name="suspended-mid-job")
    key = created["api_key"]["api_key"]
    with live_stack.client(key) as client:
        submitted = client.post("/v2/ssd-img2img", json=job_body())
        assert submitted.status_code == 200, submitted.text
        job_id = uuid.UUID(submitted.json()["request_id"])
    with live_stack.admin() as admin:
        suspended = admin.post(f"/accounts/{created['account']['id']}/suspend")
        assert suspended.status_code == 200, suspended.text
    with live_stack.client(key) as client:
        refused = client.get(f"/v2/requests/{job_id}/status")
        assert refused.status_code == 403
        assert refused.json()["error"].startswith("account suspended")
        assert client.post("/v2/ssd-img2img", json=job_body()).status_code == 403
    deadline = time.monotonic() + 120
    while (status := _job_status(job_id)) not in ("COMPLETED", "FAILED", "CANCELLED"):
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert status == "COMPLETED"


def _job_status(job_id: uuid.UUID) -> str:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.status.value
