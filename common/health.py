"""Readiness: can this process serve? PostgreSQL answers with the schema at the head
migration, Redis answers, and the S3 bucket is there, each within
HEALTH_CHECK_TIMEOUT_SECONDS (`GET /health/ready`, the Kubernetes readiness probe and
the compose healthcheck).

The checks run side by side on threads of their own and are awaited for the timeout
at most: a dependency that hangs (a black-holed address) makes the answer "not ready"
in time, instead of making the probe itself time out.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from functools import lru_cache
from pathlib import Path

import boto3
from botocore.config import Config
from sqlalchemy import text

from common import redis_clients
from common.db import session_scope
from common.settings import Settings

# Enough threads for three checks of a few probes arriving at once; a hung check holds
# one until its own socket timeout (the timeout below) lets go.
_CHECKS = ThreadPoolExecutor(max_workers=6, thread_name_prefix="health")


def _migrations_dir() -> Path:
    beside = Path(__file__).resolve().parents[1] / "migrations"  # a checkout
    return beside if beside.is_dir() else Path.cwd() / "migrations"  # the API image's /app


@lru_cache
def head_revisions() -> frozenset[str]:
    """The head revision(s) of the migrations this code was written for."""
    from alembic.script import ScriptDirectory

    return frozenset(ScriptDirectory(str(_migrations_dir())).get_heads())


def check_postgres(settings: Settings) -> str | None:
    with session_scope() as session:
        timeout_ms = int(settings.health_check_timeout_seconds * 1000)
        session.execute(text(f"SET LOCAL statement_timeout = {timeout_ms}"))
        found = set(session.execute(text("SELECT version_num FROM alembic_version")).scalars())
    if found != head_revisions():
        return (
            f"the database schema is at {sorted(found)}, this code needs "
            f"{sorted(head_revisions())}: run the migrations (alembic upgrade head)"
        )
    return None


def check_redis(settings: Settings) -> str | None:
    policy = redis_clients.Policy(timeout_seconds=settings.health_check_timeout_seconds)
    client = redis_clients.connect(settings.redis_url, policy)
    try:
        client.ping()
    finally:
        client.close()
    return None


def check_s3(settings: Settings) -> str | None:
    timeout = settings.health_check_timeout_seconds
    s3 = boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=settings.s3_secret_access_key,
        config=Config(
            s3={"addressing_style": "path"},
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"max_attempts": 1},
        ),
    )
    s3.head_bucket(Bucket=settings.s3_bucket)
    return None


CHECKS = {"postgres": check_postgres, "redis": check_redis, "s3": check_s3}


def readiness(settings: Settings) -> dict[str, str]:
    """Each dependency's state: "ok", or what is wrong (no secrets, no endpoints)."""
    futures = {name: _CHECKS.submit(check, settings) for name, check in CHECKS.items()}
    results: dict[str, str] = {}
    for name, future in futures.items():
        try:
            problem = future.result(timeout=settings.health_check_timeout_seconds)
        except FutureTimeout:
            problem = f"no answer within {settings.health_check_timeout_seconds:g} s"
        except Exception as exc:  # the kind of failure only: a message may hold a URL
            problem = f"unreachable ({type(exc).__name__})"
        results[name] = problem or "ok"
    return results
