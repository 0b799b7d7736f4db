"""common/logs.py: the JSON and plain line formats, the fields a block's context and a
line's `extra` add, and which format LOG_FORMAT and ENVIRONMENT choose."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from common.logs import JsonFormatter, PlainFormatter, log_context, uses_json
from common.settings import Settings


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("tests.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream, handler
    logger.removeHandler(handler)


def test_a_json_line_carries_the_context_and_its_own_fields(
    captured: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, handler = captured
    handler.setFormatter(JsonFormatter("api"))
    with log_context(request_id="r-1", account_id=None):
        with log_context(job_id="j-9"):
            logger.info("job %s done", "j-9", extra={"to_status": "COMPLETED"})
        logger.warning("after the job")
    logger.info("outside")
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "job j-9 done"
    assert first["process"] == "api" and first["level"] == "INFO"
    assert first["logger"] == "tests.logs" and first["time"].endswith("Z")
    assert (first["request_id"], first["job_id"], first["to_status"]) == ("r-1", "j-9", "COMPLETED")
    assert "account_id" not in first  # None is left out
    assert second["request_id"] == "r-1" and "job_id" not in second  # the inner block ended
    assert "request_id" not in third


def test_a_json_line_holds_the_traceback_in_one_line(
    captured: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, handler = captured
    handler.setFormatter(JsonFormatter("worker"))
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed", extra={"error_id": "err_0123456789ab"})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert "ValueError: boom" in entry["exception"] and entry["error_id"] == "err_0123456789ab"


def test_a_plain_line_ends_with_its_fields(
    captured: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, handler = captured
    handler.setFormatter(PlainFormatter())
    with log_context(request_id="r-2"):
        logger.info("hello", extra={"status": 200})
    logger.info("bare")
    first, second = stream.getvalue().splitlines()
    assert first.endswith("tests.logs: hello [request_id=r-2 status=200]")
    assert second.endswith("tests.logs: bare")


@pytest.mark.parametrize(
    ("log_format", "environment", "json_lines"),
    [
        ("auto", "production", True),
        ("auto", "development", False),
        ("plain", "production", False),
        ("json", "development", True),
    ],
)
def test_the_format_follows_log_format_then_the_environment(
    log_format: str, environment: str, json_lines: bool
) -> None:
    settings = Settings(log_format=log_format, environment=environment)  # type: ignore[arg-type]
    assert uses_json(settings) is json_lines
