"""Per-tenant limits over HTTP: the per-key request rate (Redis) and the cap on an
account's jobs in flight (PostgreSQL), set per account through the admin API."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import redis
from sqlalchemy import func, select

from api import ratelimit
from cli import stack
from common.db import session_scope
from common.models import Job
from devstack.ports import free_port
from devstack.process import pidfile_path, stop_pidfile
from tests.support.admin import me, new_account, set_limits
from tests.support.extra_api import HeldApi, held_api, run_on_the_workers
from tests.support.helpers import job_body, wait_terminal
from tests.support.live import Stack
from tests.support.waiting import wait_until

COST = 20  # job_body(): 1 sample × 20 steps


def release(held: HeldApi, status_urls: list[str], key: str) -> None:
    """Let held jobs run: move them into the real workers' pool, then wait for them."""
    run_on_the_workers([uuid.UUID(url.rstrip("/").split("/")[-2]) for url in status_urls])
    with httpx.Client(base_url=held.url, headers={"x-api-key": key}, timeout=30) as client:
        for url in status_urls:
            assert wait_terminal(client, url)["status"] == "COMPLETED"


def jobs_of(account_id: str) -> int:
    with session_scope() as session:
        return session.execute(
            select(func.count()).select_from(Job).where(Job.account_id == uuid.UUID(account_id))
        ).scalar_one()


# --- limits as data -----------------------------------------------------------------------


def test_limits_are_per_account_with_defaults(live_stack: Stack) -> None:
    created = new_account(live_stack)
    account_id, key = created["account"]["id"], created["api_key"]["api_key"]
    defaults = created["account"]["limits"]
    assert created["account"]["limit_overrides"] == {
        "rate_limit_per_minute": None,
        "max_jobs_in_flight": None,
        "scheduling_weight": None,
        "max_url_fetches": None,
        "max_streams": None,
    }
    assert defaults["scheduling_weight"] == 1
    assert (defaults["max_url_fetches"], defaults["max_streams"]) == (4, 32)  # the settings'

    body = set_limits(live_stack, account_id, max_jobs_in_flight=3)
    assert body["limits"] == {**defaults, "max_jobs_in_flight": 3}
    body = set_limits(live_stack, account_id, rate_limit_per_minute=500)  # the other stays
    assert body["limits"] == {**defaults, "rate_limit_per_minute": 500, "max_jobs_in_flight": 3}
    body = set_limits(live_stack, account_id, scheduling_weight=4)
    assert body["limits"]["scheduling_weight"] == 4
    assert me(live_stack, key).json()["limits"] == body["limits"]
    body = set_limits(live_stack, account_id, scheduling_weight=None)
    body = set_limits(live_stack, account_id, max_url_fetches=2, max_streams=5)
    assert (body["limits"]["max_url_fetches"], body["limits"]["max_streams"]) == (2, 5)
    body = set_limits(live_stack, account_id, max_url_fetches=None, max_streams=None)

    body = set_limits(live_stack, account_id, rate_limit_per_minute=None)  # back to default
    assert body["limits"] == {**defaults, "max_jobs_in_flight": 3}
    assert body["limit_overrides"] == {
        "rate_limit_per_minute": None,
        "max_jobs_in_flight": 3,
        "scheduling_weight": None,
        "max_url_fetches": None,
        "max_streams": None,
    }

    with live_stack.admin() as admin:
        for bad in (
            {"max_jobs_in_flight": 0},
            {"max_jobs_in_flight": 2**31},
            {"rate_limit_per_minute": -1},
            {"rate_limit_per_minute": "5"},
            {"scheduling_weight": 0},
            {"scheduling_weight": 1001},
            {"max_url_fetches": 0},
            {"max_streams": "3"},
            {"burst": 5},
        ):
            response = admin.patch(f"/accounts/{account_id}/limits", json=bad)
            assert response.status_code == 400, (bad, response.text)
            assert next(iter(bad)) in response.json()["error"]


# --- request rate -------------------------------------------------------------------------


def test_rate_limit_per_key_answers_429_with_retry_after(live_stack: Stack) -> None:
    created = new_account(live_stack, credits=100)
    account_id, key = created["account"]["id"], created["api_key"]["api_key"]
    set_limits(live_stack, account_id, rate_limit_per_minute=3)

    with live_stack.client(key) as client:
        for remaining in (2, 1, 0):
            response = client.get("/v1/account")
            assert response.status_code == 200
            assert response.headers["x-ratelimit-limit"] == "3"
            assert response.headers["x-ratelimit-remaining"] == str(remaining)
            assert 1 <= int(response.headers["x-ratelimit-reset"]) <= 60

        for response in (
            client.get("/v1/account"),
            client.post("/v2/ssd-img2img", json=job_body()),
            client.get("/v2/requests"),
        ):
            assert response.status_code == 429, response.text
            assert "rate limit" in response.json()["error"]
            assert 1 <= int(response.headers["retry-after"]) <= 60
            assert response.headers["x-ratelimit-remaining"] == "0"
            assert response.headers["x-remaining-credits"] == "100"

    # The limit counts per key: another key of the same account is not limited...
    with live_stack.admin() as admin:
        other = admin.post(f"/accounts/{account_id}/keys", json={"name": "second"}).json()
    response = me(live_stack, other["api_key"])
    assert response.status_code == 200
    # ...and the refused submit was neither charged nor recorded.
    assert response.json()["balance"] == 100
    assert jobs_of(account_id) == 0


def test_rate_limit_fails_open_without_redis(
    live_stack: Stack, services_env: tuple[Path, dict[str, str]]
) -> None:
    """An API process whose Redis is unreachable serves requests unlimited (and, with
    no ADMIN_TOKEN, keeps its admin API shut)."""
    created = new_account(live_stack)
    set_limits(live_stack, created["account"]["id"], rate_limit_per_minute=1)
    key = created["api_key"]["api_key"]

    state_dir, env = services_env
    port, name = free_port(), "api-no-redis"
    degraded = {
        **env,
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        "ADMIN_TOKEN": "",
        "API_URL": f"http://127.0.0.1:{port}",
    }
    stack.start_api(state_dir, degraded, port, name=name)
    try:
        with httpx.Client(base_url=degraded["API_URL"], timeout=30) as client:
            wait_until(lambda: _healthy(client), "healthy")
            for _ in range(3):
                response = client.get("/v1/account", headers={"x-api-key": key})
                assert response.status_code == 200, response.text
                assert "x-ratelimit-limit" not in response.headers
            response = client.get(
                "/admin/accounts", headers={"authorization": f"Bearer {env['ADMIN_TOKEN']}"}
            )
            assert response.status_code == 503
            assert "admin API disabled" in response.json()["error"]
    finally:
        stop_pidfile(pidfile_path(state_dir, name), timeout=30)


def test_rate_limit_leases_counts_per_process_and_stays_exact_for_small_limits(
    services_env: tuple[Path, dict[str, str]],
) -> None:
    """Two limiters stand for two API processes sharing one Redis. A large limit is
    counted out of leases (one Redis round trip per lease), never lets more than the
    limit through, and refuses at most each process's unused remainder early; a small
    limit is counted exactly, one request at a time."""
    url = services_env[1]["REDIS_URL"]
    redis_client = redis.Redis.from_url(url)
    first, second = ratelimit.Limiter(url), ratelimit.Limiter(url)

    key_id, limit = uuid.uuid4(), 640
    lease = ratelimit.lease_size(limit)
    assert lease == 10
    counts = [first.hit(key_id, limit) for _ in range(15)]
    assert [d.count for d in counts if d] == list(range(1, 16))
    assert int(redis_client.get(f"ratelimit:{key_id}") or 0) == 2 * lease  # two round trips
    decision = second.hit(key_id, limit)
    assert decision is not None and decision.count == 2 * lease + 1  # its own lease

    allowed = 16
    while True:  # both processes take turns until both refuse
        turn = [limiter.hit(key_id, limit) for limiter in (first, second)]
        if not any(d and d.allowed for d in turn):
            break
        allowed += sum(1 for d in turn if d and d.allowed)
    assert limit - 2 * (lease - 1) <= allowed <= limit
    refused = first.hit(key_id, limit)
    assert refused is not None and not refused.allowed
    assert 1 <= refused.reset_seconds <= 60 and refused.headers()["Retry-After"]

    small_key, small = uuid.uuid4(), 3
    assert ratelimit.lease_size(small) == 1
    decisions = [limiter.hit(small_key, small) for limiter in (first, second, first, second)]
    assert [d.count if d else None for d in decisions] == [1, 2, 3, 4]
    assert [d.allowed if d else None for d in decisions] == [True, True, True, False]
    # A refused process refuses on without asking Redis again, until the limit is raised.
    again = second.hit(small_key, small)
    assert again is not None and not again.allowed
    assert int(redis_client.get(f"ratelimit:{small_key}") or 0) == 4
    raised = second.hit(small_key, 10)
    assert raised is not None and raised.allowed and raised.count == 5


def _healthy(client: httpx.Client) -> bool:
    try:
        return client.get("/health").status_code == 200
    except httpx.HTTPError:
        return False


# --- jobs in flight -------------------------------------------------------------------


def test_in_flight_cap_refuses_then_admits_once_a_job_finishes(live_stack: Stack) -> None:
    created = new_account(live_stack, credits=1000)
    account_id, key = created["account"]["id"], created["api_key"]["api_key"]
    set_limits(live_stack, account_id, max_jobs_in_flight=1)

    # An API whose jobs go to a queue no worker reads: they stay QUEUED (in flight)
    # for exactly as long as the test wants.
    with held_api(live_stack, "inflight1") as held:
        with httpx.Client(base_url=held.url, headers={"x-api-key": key}, timeout=30) as client:
            first = client.post("/v2/ssd-img2img", json=job_body())
            assert first.status_code == 200, first.text
            second = client.post("/v2/ssd-img2img", json=job_body())
            assert second.status_code == 429, second.text
            assert "in flight" in second.json()["error"]
            assert "at most 1" in second.json()["error"]
            assert int(second.headers["x-remaining-credits"]) == 1000 - COST  # not charged
        # Once the first job has finished, the account may submit again.
        release(held, [first.json()["status_url"]], key)
    with live_stack.client(key) as client:
        third = client.post("/v2/ssd-img2img", json=job_body())
        assert third.status_code == 200, third.text
        wait_terminal(client, third.json()["status_url"])
    assert jobs_of(account_id) == 2


def test_in_flight_cap_holds_under_concurrent_submits(live_stack: Stack) -> None:
    created = new_account(live_stack, credits=1000)
    account_id, key = created["account"]["id"], created["api_key"]["api_key"]
    set_limits(live_stack, account_id, max_jobs_in_flight=3)

    with held_api(live_stack, "inflight3") as held:

        def submit(_: int) -> httpx.Response:
            with httpx.Client(base_url=held.url, headers={"x-api-key": key}, timeout=60) as c:
                return c.post("/v2/ssd-img2img", json=job_body())

        with ThreadPoolExecutor(max_workers=10) as pool:
            responses = list(pool.map(submit, range(10)))
        codes = sorted(r.status_code for r in responses)
        assert codes == [200] * 3 + [429] * 7, [r.text for r in responses]
        with live_stack.admin() as admin:
            detail = admin.get(f"/accounts/{account_id}").json()
        assert detail["jobs_in_flight"] == 3
        assert detail["balance"] == 1000 - 3 * COST
        assert jobs_of(account_id) == 3
        release(held, [r.json()["status_url"] for r in responses if r.status_code == 200], key)


def test_jobs_of_other_accounts_do_not_count(live_stack: Stack) -> None:
    cap = 2
    busy = new_account(live_stack, credits=1000)
    calm = new_account(live_stack, credits=1000)
    for created in (busy, calm):
        set_limits(live_stack, created["account"]["id"], max_jobs_in_flight=cap)

    with held_api(live_stack, "inflight-others") as held:
        busy_key, calm_key = busy["api_key"]["api_key"], calm["api_key"]["api_key"]
        accepted: list[str] = []
        with httpx.Client(base_url=held.url, headers={"x-api-key": busy_key}) as client:
            for _ in range(cap):
                response = client.post("/v2/ssd-img2img", json=job_body())
                assert response.status_code == 200
                accepted.append(response.json()["status_url"])
            assert client.post("/v2/ssd-img2img", json=job_body()).status_code == 429
        with httpx.Client(base_url=held.url, headers={"x-api-key": calm_key}) as client:
            response = client.post("/v2/ssd-img2img", json=job_body())
            assert response.status_code == 200, response.text
        release(held, accepted, busy_key)
        release(held, [response.json()["status_url"]], calm_key)
