"""A stack of its own for the fault-injection tests (tests/test_faults.py): its own
PostgreSQL, Redis and S3, an API, a CPU worker (reconciler every second) and GPU
workers the tests start, kill and restart at will, so that killing processes and
flushing Redis never touches the shared `live_stack`.

Short intervals (LEASE_SECONDS=3, RECONCILE_INTERVAL_SECONDS=1, ...) make recoveries
take seconds instead of minutes; every other setting is the production default.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import func, select

from cli import stack
from common.db import session_scope
from common.models import CreditLedgerEntry, Job, LedgerReason
from devstack.ports import free_port
from devstack.process import (
    log_path,
    log_tail,
    pidfile_path,
    start_process,
    stop_pidfile,
)
from devstack.stack import purge_state, start_services
from tests.support import reads
from tests.support.live import ROOT, Stack

FAST_RECOVERY = {
    "LEASE_SECONDS": "3",  # heartbeat every second
    "RECONCILE_INTERVAL_SECONDS": "1",
    # Recovery never waits for it: workers claim from PostgreSQL and poll it when idle.
    "REDISPATCH_AFTER_SECONDS": "3600",
    "MAX_ATTEMPTS": "3",
    "DEFAULT_RATE_LIMIT_PER_MINUTE": "1000000",
    "DEFAULT_MAX_JOBS_IN_FLIGHT": "1000000",
}


# The worker `steady_worker` keeps up across tests.
STEADY = "gpu-steady"


@dataclass
class Worker:
    name: str
    popen: subprocess.Popen[bytes]
    ready_file: Path
    log_file: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            assert self.popen.poll() is None, f"{self.name} exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"{self.name} not ready after {timeout}s"
            time.sleep(0.1)

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def wait_exit(self, timeout: float = 300) -> int:
        """The exit status; negative: killed by that signal."""
        return self.popen.wait(timeout)

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return log_tail(self.log_file, 8000)


@dataclass(frozen=True)
class FaultStack(Stack):
    """The stack's own helpers (API URL, CLI, accounts, clients), plus its GPU workers."""

    workers: list[Worker] = field(default_factory=list)

    # --- processes ----------------------------------------------------------------------

    def start_worker(
        self, name: str, wait: bool = True, extra_env: dict[str, str] | None = None
    ) -> Worker:
        """A GPU worker process (as `stack.start_worker` starts it, keeping its Popen for
        the exit status), with `extra_env` on top of the stack's environment; returns
        once it consumes, unless `wait` is False."""
        ready = self.state_dir / f"{name}.ready"
        ready.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "worker", "--ready-file", str(ready)]
        # One torch thread, as every process of the suite (OMP_NUM_THREADS: conftest.py).
        env = {**os.environ, **self.env, **(extra_env or {})}
        popen = start_process(name, argv, self.state_dir, env=env, cwd=ROOT)
        worker = Worker(name=name, popen=popen, ready_file=ready, log_file=self.log_file(name))
        self.workers.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    def log_file(self, name: str) -> Path:
        return log_path(self.state_dir, name)

    def stop_workers(self, keep: str | None = None) -> None:
        """Stop every GPU worker (but the one named `keep`, if it is still up)."""
        kept = [w for w in self.workers if w.name == keep and w.alive]
        for worker in self.workers:
            if worker not in kept:
                stop_pidfile(pidfile_path(self.state_dir, worker.name), timeout=60)
        self.workers[:] = kept

    def steady_worker(self) -> Worker:
        """A plain GPU worker kept from one test to the next while it stays up: a
        worker's start costs seconds of imports (torch, diffusers), and most outage
        tests only need one that survives the outage."""
        for worker in self.workers:
            if worker.name == STEADY and worker.alive:
                return worker
        return self.start_worker(STEADY)

    # --- data -----------------------------------------------------------------------------

    def submit(self, api_key: str, body: dict[str, Any]) -> uuid.UUID:
        with self.client(api_key) as client:
            response = client.post("/v2/ssd-img2img", json=body)
        assert response.status_code == 200, response.text
        return uuid.UUID(response.json()["request_id"])

    def job(self, job_id: uuid.UUID) -> Job:
        with session_scope(self.env["DATABASE_URL"]) as session:
            job = session.get(Job, job_id)
            assert job is not None
            session.expunge(job)
            return job

    def ledger(self, account_id: str) -> list[tuple[LedgerReason, int]]:
        condition = CreditLedgerEntry.account_id == uuid.UUID(account_id)
        return reads.ledger(condition, self.env["DATABASE_URL"])

    def count_jobs(self, *conditions: Any) -> int:
        with session_scope(self.env["DATABASE_URL"]) as session:
            return session.execute(
                select(func.count()).select_from(Job).where(*conditions)
            ).scalar_one()

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.env["REDIS_URL"])


@contextlib.contextmanager
def fault_stack(state_dir: Path, model_dir: Path) -> Iterator[FaultStack]:
    """Services, migrations, the API and the CPU worker; GPU workers are up to the test."""
    try:
        services = start_services(state_dir, fast=True)
        port = free_port()
        env = stack.service_env(services, f"http://127.0.0.1:{port}", model_dir)
        env.update(FAST_RECOVERY)
        stack.migrate(env)
        stack.start_api(state_dir, env, port)
        ready = stack.start_background(state_dir, env)
        stack.wait_healthy(state_dir, env["API_URL"], [ready], timeout=180)
        faults = FaultStack(state_dir=state_dir, env=env)
        yield faults
        faults.stop_workers()
    finally:
        stack.down(state_dir)
        purge_state(state_dir)
