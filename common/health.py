"""Readiness: can this process serve? PostgreSQL answers with a schema this code can
use, Redis answers, and the S3 bucket is there, each within
HEALTH_CHECK_TIMEOUT_SECONDS (`GET /health/ready`, the Kubernetes readiness probe and
the compose healthcheck).

- One deadline for the three checks, run side by side: a dependency that hangs (a
  black-holed address) makes the answer "not ready" within the timeout, instead of
  making the probe itself time out.
- Clients of their own, with that timeout and no retries: a PostgreSQL pool of one
  connection (a busy request pool must not make a healthy pod unready), one Redis
  client, one S3 client on a botocore session of its own (boto3's default session is
  not thread-safe).
- One check at a time per process, its answer reused for `_FRESH_SECONDS`: the public
  endpoint is not a way to load the dependencies or the API's threads.
- The schema: not ready only when the database is BEHIND this code (every revision it
  is at is one this code knows, and not a head). A revision this code does not know is
  newer: during a rolling upgrade the old pods stay ready after the migration, since
  migrations keep the previous release working (docs/operations.md "Upgrading").
"""

from __future__ import annotations

import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from functools import lru_cache
from pathlib import Path

import boto3
import redis
from botocore.config import Config
from sqlalchemy import Engine, create_engine, text

from common import redis_clients
from common.settings import Settings

_FRESH_SECONDS = 1.0
# What pg_stat_activity shows for these connections: which process's readiness checks.
APPLICATION_NAME = f"ssd-img2img readiness {os.getpid()}"
_CHECKS = ThreadPoolExecutor(max_workers=3, thread_name_prefix="health")
_ONE_AT_A_TIME = threading.Lock()
_last: tuple[float, tuple[object, ...], dict[str, str]] | None = None


def _migrations_dir() -> Path:
    beside = Path(__file__).resolve().parents[1] / "migrations"  # a checkout
    return beside if beside.is_dir() else Path.cwd() / "migrations"  # the API image's /app


@lru_cache
def _revisions() -> tuple[frozenset[str], frozenset[str]]:
    """(the heads, every revision) of the migrations this code was written for."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(_migrations_dir()))
    return (
        frozenset(script.get_heads()),
        frozenset(r.revision for r in script.walk_revisions()),
    )


def head_revisions() -> frozenset[str]:
    return _revisions()[0]


@lru_cache
def _engine(url: str, timeout: float) -> Engine:
    return create_engine(
        url,
        pool_size=1,
        max_overflow=0,
        pool_timeout=timeout,
        pool_pre_ping=True,
        connect_args={
            "connect_timeout": max(1, math.ceil(timeout)),
            "application_name": APPLICATION_NAME,
        },
    )


@lru_cache
def _redis(url: str, timeout: float) -> redis.Redis:
    return redis_clients.connect(url, redis_clients.Policy(timeout_seconds=timeout))


@lru_cache
def _s3(
    endpoint: str | None, region: str, key: str | None, secret: str | None, timeout: float
) -> object:
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(
            s3={"addressing_style": "path"},
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"total_max_attempts": 1},
        ),
    )


def check_postgres(settings: Settings) -> str | None:
    timeout = settings.health_check_timeout_seconds
    with _engine(settings.database_url, timeout).connect() as connection:
        connection.execute(text(f"SET statement_timeout = {int(timeout * 1000)}"))
        found = set(connection.execute(text("SELECT version_num FROM alembic_version")).scalars())
    heads, known = _revisions()
    if found <= known and found != heads:
        return (
            f"the database schema is at {sorted(found)}, behind this code's "
            f"{sorted(heads)}: run the migrations (alembic upgrade head)"
        )
    return None


def check_redis(settings: Settings) -> str | None:
    _redis(settings.redis_url, settings.health_check_timeout_seconds).ping()
    return None


def check_s3(settings: Settings) -> str | None:
    client: object = _s3(
        settings.s3_endpoint_url,
        settings.s3_region,
        settings.s3_access_key_id,
        settings.s3_secret_access_key,
        settings.health_check_timeout_seconds,
    )
    client.head_bucket(Bucket=settings.s3_bucket)  # type: ignore[attr-defined]
    return None


CHECKS = {"postgres": check_postgres, "redis": check_redis, "s3": check_s3}


def readiness(settings: Settings) -> dict[str, str]:
    """Each dependency's state: "ok", or what is wrong (no secrets, no endpoints)."""
    global _last
    timeout = settings.health_check_timeout_seconds
    if not _ONE_AT_A_TIME.acquire(timeout=timeout):
        return {name: "a readiness check is still running" for name in CHECKS}
    checked = (
        settings.database_url,
        settings.redis_url,
        settings.s3_endpoint_url,
        settings.s3_bucket,
        timeout,
    )
    try:
        fresh = _last is not None and time.monotonic() - _last[0] < _FRESH_SECONDS
        if fresh and _last is not None and _last[1] == checked:
            return dict(_last[2])
        results = _run(settings, timeout)
        _last = (time.monotonic(), checked, results)
        return dict(results)
    finally:
        _ONE_AT_A_TIME.release()


def down(checks: dict[str, str]) -> list[str]:
    """The dependencies `readiness` found not ok, by name."""
    return sorted(name for name, state in checks.items() if state != "ok")


def _run(settings: Settings, timeout: float) -> dict[str, str]:
    futures = {name: _CHECKS.submit(check, settings) for name, check in CHECKS.items()}
    wait_for(futures.values(), timeout=timeout)  # one deadline for all three
    results: dict[str, str] = {}
    for name, future in futures.items():
        if not future.done():
            results[name] = f"no answer within {timeout:g} s"
            continue
        try:
            problem = future.result()
        except Exception as exc:  # the kind of failure only: a message may hold a URL
            problem = f"unreachable ({type(exc).__name__})"
        results[name] = problem or "ok"
    return results


def forget() -> None:
    """Drop the cached answer (tests that change a dependency between two checks)."""
    global _last
    _last = None
