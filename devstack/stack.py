"""Start/stop the whole embedded stack (PostgreSQL, Redis, SeaweedFS S3) in a state dir.

Used by `make up` / `make down` and by the pytest session fixtures. Stopping works from the
pidfiles alone, so a fresh process can stop what another one started.
"""

from __future__ import annotations

import fcntl
import shutil
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from devstack import postgres, redis, s3
from devstack.process import PIDS_DIR, stop_pidfile
from devstack.s3 import REGION as S3_REGION
from devstack.service import Service

__all__ = ["Service", "Services", "purge_state", "start_services", "stop_services"]

# How each server wants to be asked to stop; anything unknown gets SIGTERM.
_STOP_SIGNALS: dict[str, int] = {postgres.NAME: postgres.STOP_SIGNAL}


@contextmanager
def _state_lock(state_dir: Path) -> Iterator[None]:
    """Serialise start/stop on one state dir across processes (`make up` racing
    `make down`, parallel test workers sharing a stack)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / ".lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Services:
    postgres: Service
    redis: Service
    s3: Service
    s3_access_key: str
    s3_secret_key: str
    s3_bucket: str
    s3_region: str = S3_REGION

    @property
    def database_url(self) -> str:
        """SQLAlchemy URL (postgresql+psycopg://...)."""
        return self.postgres.url

    @property
    def redis_url(self) -> str:
        return self.redis.url

    @property
    def s3_endpoint_url(self) -> str:
        return self.s3.url


def start_services(
    state_dir: Path,
    fast: bool = False,
    *,
    bucket: str = s3.DEFAULT_BUCKET,
    timeout: float = 60.0,
) -> Services:
    """Start all three servers in parallel; on any failure stop the ones that did start.

    Already running servers of this state dir are returned as they are (idempotent).
    """
    state_dir = state_dir.resolve()
    with _state_lock(state_dir):
        return _start_locked(state_dir, fast, bucket, timeout)


def _start_locked(state_dir: Path, fast: bool, bucket: str, timeout: float) -> Services:
    creds = s3.load_or_create_credentials(state_dir)
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="devstack") as pool:
        pg_future = pool.submit(postgres.start_postgres, state_dir, fast=fast, timeout=timeout)
        redis_future = pool.submit(redis.start_redis, state_dir, timeout=timeout)
        s3_future = pool.submit(
            s3.start_s3,
            state_dir,
            access_key=creds.access_key,
            secret_key=creds.secret_key,
            bucket=bucket,
            timeout=timeout,
        )
        futures = (pg_future, redis_future, s3_future)
        errors = [f.exception() for f in futures]
    first_error = next((e for e in errors if e is not None), None)
    if first_error is not None:
        _stop_locked(state_dir, timeout=15.0)
        raise first_error
    return Services(
        postgres=pg_future.result(),
        redis=redis_future.result(),
        s3=s3_future.result(),
        s3_access_key=creds.access_key,
        s3_secret_key=creds.secret_key,
        s3_bucket=bucket,
    )


def stop_services(state_dir: Path, timeout: float = 15.0) -> list[str]:
    """Stop everything with a pidfile under `<state>/pids/`, in parallel.

    Idempotent; stale or garbage pidfiles are removed. Returns the names of the services
    that were actually running.
    """
    state_dir = state_dir.resolve()
    if not state_dir.is_dir():
        return []
    with _state_lock(state_dir):
        return _stop_locked(state_dir, timeout)


def _stop_locked(state_dir: Path, timeout: float) -> list[str]:
    pidfiles = sorted((state_dir / PIDS_DIR).glob("*.pid"))

    def stop(path: Path) -> bool:
        return stop_pidfile(path, timeout, _STOP_SIGNALS.get(path.stem, signal.SIGTERM))

    with ThreadPoolExecutor(max_workers=max(1, len(pidfiles))) as pool:
        stopped = list(pool.map(stop, pidfiles))
    s3.cleanup_sockets(state_dir)
    return [path.stem for path, was_running in zip(pidfiles, stopped, strict=True) if was_running]


def purge_state(state_dir: Path) -> None:
    """Stop everything and delete the state dir with all data (PostgreSQL's external data
    dir included): for test teardown and `make clean`-style resets."""
    state_dir = state_dir.resolve()
    stop_services(state_dir)
    postgres.remove_data(state_dir)
    shutil.rmtree(state_dir, ignore_errors=True)
