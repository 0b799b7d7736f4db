"""One tenant cannot slow another down: with one account holding 100 image URL fetches
from a server that answers one byte a second and 200 event streams, another account's
submits and status polls stay fast and nothing answers 5xx (the bounds of
api/open_work.py: 429 past them, uncharged). Also: the streams of one job share one
database read when it changes."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.requests import Request

from api.img2img import events
from common.settings import get_settings
from common.storage import get_storage
from tests.support.extra_api import held_api
from tests.support.helpers import job_body
from tests.support.live import Stack
from tests.support.loopback_http import dripping, loopback_server
from tests.support.reads import account_state

SUBMIT = "/v2/ssd-img2img"
NOISY_CREDITS = 100


def _open_stream(base_url: str, key: str, job_id: str) -> tuple[socket.socket, int]:
    """An event stream left open on a raw socket; its HTTP status."""
    where = urlsplit(base_url)
    sock = socket.create_connection((where.hostname, where.port), timeout=30)
    sock.sendall(
        f"GET /v2/requests/{job_id}/events HTTP/1.1\r\nHost: {where.netloc}\r\n"
        f"x-api-key: {key}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, head
        head += chunk
    return sock, int(head.split(b" ", 2)[1])


@contextmanager
def _streams(base_url: str, key: str, job_id: str, count: int) -> Iterator[list[int]]:
    with ExitStack() as open_sockets:
        statuses = []
        for _ in range(count):
            sock, status = _open_stream(base_url, key, job_id)
            open_sockets.callback(sock.close)
            statuses.append(status)
        yield statuses


def test_a_tenant_holding_slow_fetches_and_streams_does_not_slow_another(
    live_stack: Stack,
) -> None:
    noisy_id, noisy_key = live_stack.create_account(credits=NOISY_CREDITS, name="noisy")
    _, quiet_key = live_stack.create_account(credits=1_000_000, name="quiet")
    with (
        loopback_server() as trickle,
        # Jobs stay QUEUED there, so the streams stay open; fetches give up after 12 s.
        held_api(live_stack, "isolation", IMAGE_FETCH_TIMEOUT_SECONDS="12") as held,
        httpx.Client(base_url=held.url, timeout=60) as client,
    ):
        trickle.routes["/slow.png"] = dripping(trickle, interval=1.0)  # a byte a second
        followed = client.post(SUBMIT, json=job_body(), headers={"x-api-key": noisy_key})
        assert followed.status_code == 200, followed.text
        job_id = followed.json()["request_id"]
        noisy_jobs = (NOISY_CREDITS - 20, 1)  # that one job: 1 sample × 20 steps

        with (
            _streams(held.url, noisy_key, job_id, 200) as stream_statuses,
            ThreadPoolExecutor(100) as pool,
        ):
            slow = job_body(image=trickle.url("/slow.png"))
            fetches = [
                pool.submit(client.post, SUBMIT, json=slow, headers={"x-api-key": noisy_key})
                for _ in range(100)
            ]
            time.sleep(1.0)  # the burst admitted or refused: now the noisy tenant holds

            latencies, answers = [], []
            quiet = {"x-api-key": quiet_key}
            own = client.post(SUBMIT, json=job_body(), headers=quiet).json()["request_id"]
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                for method, path, body in (
                    ("GET", f"/v2/requests/{own}/status", None),
                    ("GET", f"/v2/requests/{own}/status", None),
                    ("POST", SUBMIT, job_body()),
                ):
                    started = time.perf_counter()
                    response = client.request(method, path, json=body, headers=quiet)
                    latencies.append(time.perf_counter() - started)
                    answers.append(response.status_code)
            assert sum(1 for f in fetches if not f.done()) == 4  # still held: the bound
            refused = [f.result() for f in fetches if f.done()]
        held_fetches = [f.result() for f in fetches]

    # The noisy tenant got its bounds and nothing more, uncharged.
    assert stream_statuses.count(200) == 32 and stream_statuses.count(429) == 168
    assert [r.status_code for r in refused] == [429] * 96
    assert all(int(r.headers["retry-after"]) > 0 for r in refused)
    assert "at most 4 at a time" in refused[0].json()["error"]
    assert sorted(r.status_code for r in held_fetches) == [400] * 4 + [429] * 96
    assert account_state(noisy_id) == noisy_jobs

    # The quiet tenant did not notice.
    assert answers and all(code == 200 for code in answers), answers
    latencies.sort()
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)]
    print(f"quiet tenant: p99 {p99 * 1000:.0f} ms over {len(latencies)} requests")
    assert p99 < 0.25, f"p99 {p99 * 1000:.0f} ms over {len(latencies)} requests"


def test_the_streams_of_one_job_share_one_read(
    live_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streams woken by the same news share the read in progress; news that came after a
    read started gets a read of its own (it might have missed the change)."""
    account_id, key = live_stack.create_account(name="shared-read")
    with httpx.Client(base_url=live_stack.api_url, timeout=60) as client:
        job_id = client.post(SUBMIT, json=job_body(), headers={"x-api-key": key}).json()
    reads: list[uuid.UUID] = []
    real = events._snapshot

    def counted(*args: object) -> events.Snapshot | None:
        reads.append(args[0])  # type: ignore[arg-type]
        time.sleep(0.2)  # a read that takes a while, so that others arrive meanwhile
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(events, "_snapshot", counted)
    request = Request({"type": "http", "headers": [], "server": ("127.0.0.1", 80), "path": "/"})

    async def scenario() -> list[events.Snapshot | None]:
        streams = [
            events._Stream(
                uuid.UUID(job_id["request_id"]),
                uuid.UUID(account_id),
                request,
                get_settings(),
                get_storage(),
            )
            for _ in range(50)
        ]
        news_at = time.monotonic()
        first = await asyncio.gather(*(events.shared_snapshot(s, news_at) for s in streams))
        later = time.monotonic()  # news after that read: a new one
        second = await asyncio.gather(*(events.shared_snapshot(s, later) for s in streams[:5]))
        return first + second

    snapshots = asyncio.run(scenario())
    assert len(reads) == 2
    for snapshot in snapshots:
        assert snapshot is not None and snapshot.status_body["request_id"] == job_id["request_id"]


def _read_until_event(sock: socket.socket, name: str, timeout: float) -> str:
    """The stream's bytes until an event `name` and its data line have arrived."""
    sock.settimeout(timeout)
    seen = b""
    marker = f"event: {name}\ndata: ".encode()
    while not (marker in seen and seen.split(marker, 1)[1].count(b"\n") >= 1):
        chunk = sock.recv(4096)
        assert chunk, seen
        seen += chunk
    return seen.decode()


def test_revocation_and_suspension_end_open_streams_and_waits(live_stack: Stack) -> None:
    """A stream of a key revoked meanwhile ends with an `error` event (401); a v1 wait of
    an account suspended meanwhile ends with 403. Neither delivers the job's result."""
    account_id, key = live_stack.create_account(credits=1000, name="revoked-meanwhile")
    with live_stack.admin() as admin:
        second = admin.post(f"/accounts/{account_id}/keys", json={"name": "to revoke"}).json()
    with (
        held_api(live_stack, "revoke", SYNC_WAIT_RECHECK_SECONDS="0.5") as held,
        httpx.Client(base_url=held.url, timeout=60) as client,
        live_stack.admin() as admin,
    ):
        queued = client.post(SUBMIT, json=job_body(), headers={"x-api-key": key}).json()
        sock, status = _open_stream(held.url, second["api_key"], queued["request_id"])
        with sock:
            assert status == 200
            _read_until_event(sock, "status", 30)  # it streams the queued job
            assert admin.post(f"/keys/{second['id']}/revoke").status_code == 200
            ended = _read_until_event(sock, "error", 30)
        assert '"status": 401' in ended and "API key revoked" in ended

        with ThreadPoolExecutor(1) as pool:
            before = held.queued_messages()
            waiting = pool.submit(
                client.post, "/v1/ssd-img2img", json=job_body(), headers={"x-api-key": key}
            )
            held.wait_messages(before + 1)  # its job is queued, the request waits
            assert admin.post(f"/accounts/{account_id}/suspend").status_code == 200
            try:
                response = waiting.result(timeout=60)
            finally:
                admin.post(f"/accounts/{account_id}/reactivate")
        assert response.status_code == 403, response.text
        assert "account suspended" in response.json()["error"]
