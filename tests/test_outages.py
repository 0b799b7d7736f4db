"""Dependency outages, on a stack of its own (the shared one stays healthy):
PostgreSQL down → 503 JSON at once, and recovery without a restart; Redis down → the
job is accepted and stays QUEUED for the reconciler; S3 down → 503, nothing charged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from cli import stack
from common.models import Account, Job, JobStatus
from devstack import postgres, redis
from devstack.ports import free_port
from devstack.stack import purge_state, start_services
from tests.support.helpers import job_body
from tests.support.live import ROOT
from tests.support.outages import s3_down


@dataclass
class Isolated:
    state_dir: Path
    env: dict[str, str]
    api_key: str
    account_id: uuid.UUID

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.env["API_URL"], headers={"x-api-key": self.api_key}, timeout=30
        )

    def db(self) -> Session:
        return Session(create_engine(self.env["DATABASE_URL"]))


@pytest.fixture(scope="module")
def isolated(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Isolated]:
    state_dir = tmp_path_factory.mktemp("outage-stack")
    try:
        services = start_services(state_dir, fast=True)
        port = free_port()
        env = stack.service_env(services, f"http://127.0.0.1:{port}", tiny_model_dir)
        env["DEFAULT_RATE_LIMIT_PER_MINUTE"] = "1000000"
        stack.migrate(env)
        created = subprocess.run(
            [sys.executable, "-m", "cli.main", "accounts", "create", "--credits", "1000", "--json"],
            env={**os.environ, **env},
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        account = json.loads(created.stdout)
        # Only the API: no worker, so accepted jobs stay where the outage left them.
        stack.start_api(state_dir, env, port)
        stack.wait_healthy(state_dir, env["API_URL"], [], timeout=60)
        yield Isolated(state_dir, env, account["api_key"], uuid.UUID(account["id"]))
    finally:
        stack.down(state_dir)
        purge_state(state_dir)


def _balance_and_jobs(iso: Isolated) -> tuple[int, int]:
    with iso.db() as session:
        account = session.get(Account, iso.account_id)
        assert account is not None
        jobs = session.execute(
            select(func.count()).select_from(Job).where(Job.account_id == iso.account_id)
        ).scalar_one()
        return account.balance, jobs


def test_postgres_down_503_then_recovers(isolated: Isolated) -> None:
    port = int(isolated.env["DATABASE_URL"].rsplit(":", 1)[1].split("/")[0])
    with isolated.client() as client:
        assert client.get("/health").status_code == 200
        postgres.stop_postgres(isolated.state_dir)
        try:
            for path in ("/health", "/v1/account"):
                response = client.get(path)
                assert response.status_code == 503, response.text
                assert "database" in response.json()["error"]
                assert response.headers["retry-after"]
            down = client.post("/v2/ssd-img2img", json=job_body())
            assert down.status_code == 503
            assert down.headers["retry-after"] == "5"
        finally:
            postgres.start_postgres(isolated.state_dir, port=port, fast=True)
        # The same API process, not restarted: its pool reconnects by itself.
        assert client.get("/health").status_code == 200
        assert client.get("/v1/account").status_code == 200


def test_redis_down_accepts_and_keeps_job_queued(isolated: Isolated) -> None:
    port = int(isolated.env["REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
    balance_before, _ = _balance_and_jobs(isolated)
    redis.stop_redis(isolated.state_dir)
    try:
        with isolated.client() as client:
            response = client.post("/v2/ssd-img2img", json=job_body())
        assert response.status_code == 200, response.text
    finally:
        redis.start_redis(isolated.state_dir, port=port)
    # Committed before the enqueue: PostgreSQL has it, charged once, waiting for the
    # reconciler to dispatch it (its message never reached Redis).
    with isolated.db() as session:
        job = session.get(Job, uuid.UUID(response.json()["request_id"]))
        assert job is not None and job.status == JobStatus.QUEUED
    assert _balance_and_jobs(isolated)[0] == balance_before - 20


def test_s3_down_is_503_and_free(isolated: Isolated) -> None:
    before = _balance_and_jobs(isolated)
    with s3_down(isolated.state_dir, isolated.env):
        with isolated.client() as client:
            response = client.post("/v2/ssd-img2img", json=job_body())
        assert response.status_code == 503, response.text
        assert "storage" in response.json()["error"]
        assert response.headers["retry-after"] == "5"
    assert _balance_and_jobs(isolated) == before
    with isolated.client() as client:
        assert client.post("/v2/ssd-img2img", json=job_body()).status_code == 200
