"""`GET /v2/requests`: own requests only, newest first, cursor pages, status filter."""

from __future__ import annotations

from tests.support.helpers import job_body, wait_terminal
from tests.support.live import Stack


def test_list_pages_filter_and_isolation(live_stack: Stack) -> None:
    _, key = live_stack.create_account(credits=1000)
    _, other = live_stack.create_account(credits=1000)
    with live_stack.client(other) as client:
        foreign = client.post("/v2/ssd-img2img", json=job_body()).json()["request_id"]
    with live_stack.client(key) as client:
        ids = [
            client.post("/v2/ssd-img2img", json=job_body()).json()["request_id"] for _ in range(5)
        ]
        for request_id in ids:
            wait_terminal(client, f"{live_stack.api_url}/v2/requests/{request_id}/status")

        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
            page = client.get("/v2/requests", params=params)
            assert page.status_code == 200, page.text
            body = page.json()
            seen += [r["request_id"] for r in body["requests"]]
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert seen == list(reversed(ids))  # newest first, each exactly once
        assert pages == 3
        assert foreign not in seen

        completed = client.get("/v2/requests", params={"status": "COMPLETED"}).json()["requests"]
        assert {r["request_id"] for r in completed} == set(ids)
        assert all(r["status"] == "COMPLETED" and r["cost"] == 20 for r in completed)
        assert client.get("/v2/requests", params={"status": "QUEUED"}).json()["requests"] == []

        bad_status = client.get("/v2/requests", params={"status": "DONE"})
        bad_cursor = client.get("/v2/requests", params={"cursor": "!!"})
        bad_limit = client.get("/v2/requests", params={"limit": 1000})
    assert bad_status.status_code == 400 and "status" in bad_status.json()["error"]
    assert bad_cursor.status_code == 400 and "cursor" in bad_cursor.json()["error"]
    assert bad_limit.status_code == 400 and "limit" in bad_limit.json()["error"]
