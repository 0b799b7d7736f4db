"""An unhandled error inside a request (api/observability.py): a JSON 500 with a generic
reason and an error id, the request's id on it, and the detail logged under both ids,
never shown to the client."""

from __future__ import annotations

import logging
import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def app() -> FastAPI:
    from api.main import create_app

    app = create_app()

    @app.get("/tests/boom")
    def boom() -> None:
        raise RuntimeError("the internal detail")

    return app


def test_an_unhandled_error_is_a_500_with_the_request_and_error_ids(
    app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    client = TestClient(app, raise_server_exceptions=False)  # no lifespan: no services
    response = client.get("/tests/boom", headers={"x-request-id": "req-500"})

    assert response.status_code == 500
    assert response.headers["x-request-id"] == "req-500"
    assert "the internal detail" not in response.text
    found = re.search(r"err_[0-9a-f]{12}", response.json()["error"])
    assert found is not None, response.text
    error_id = found.group()
    traceback = [
        r for r in caplog.records if r.exc_info and "the internal detail" in str(r.exc_info[1])
    ]
    assert traceback and getattr(traceback[0], "error_id", None) == error_id
    request_line = [r for r in caplog.records if r.name == "api.requests"]
    assert [getattr(r, "error_id", None) for r in request_line] == [error_id]
    assert [getattr(r, "status", None) for r in request_line] == [500]
