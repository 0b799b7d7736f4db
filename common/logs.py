"""Log lines: one JSON object per line in production (for a log collector), plain text
in development, with the ids that tie a line to a request, a job, a tenant and a worker.

Each process calls `configure_logging` once at start. Code that knows an id for a
stretch of work wraps it in `log_context(request_id=..., job_id=...)`: every line
logged inside carries them (a contextvar, so each request's task or thread has its
own). A single line adds fields with the standard `extra={...}`.

Fields a line may carry: `request_id`, `job_id`, `account_id`, `worker`, `error_id`
(the id a tenant sees in a refusal, common/error_ids.py), and what the line is about
(`event`, `from_status`, `to_status`, `method`, `route`, `status`, `duration_ms`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from common.settings import Settings

_CONTEXT: ContextVar[dict[str, str]] = ContextVar("log_context", default={})  # noqa: B039

# What every LogRecord has; anything else on a record came from `extra`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Every line logged in the block carries `fields` (None values are left out)."""
    added = {key: str(value) for key, value in fields.items() if value is not None}
    token = _CONTEXT.set({**_CONTEXT.get(), **added})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def context_fields() -> dict[str, str]:
    return dict(_CONTEXT.get())


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = dict(_CONTEXT.get())
    fields.update((k, v) for k, v in vars(record).items() if k not in _STANDARD)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the context's and
    the record's own fields, and the traceback if any."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "process": self.process,
            "message": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class PlainFormatter(logging.Formatter):
    """The usual text line, with the context's and the record's fields at the end."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _fields(record)
        if not fields:
            return line
        first, newline, rest = line.partition("\n")  # after the message, not the traceback
        tail = " ".join(f"{key}={value}" for key, value in fields.items())
        return f"{first} [{tail}]{newline}{rest}"


def uses_json(settings: Settings) -> bool:
    if settings.log_format == "auto":
        return settings.environment == "production"
    return settings.log_format == "json"


def configure_logging(settings: Settings, process: str, level: str = "INFO") -> None:
    """This process's logging: one handler on stderr, in the format LOG_FORMAT says.
    uvicorn's loggers hand their lines to it too; its access log is off, since the
    API logs one richer line per request itself (api/observability.py)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(process) if uses_json(settings) else PlainFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
