"""A stack of its own for the fault-injection tests (tests/test_faults.py): its own
PostgreSQL, Redis and S3, an API, a CPU worker (reconciler every second) and GPU
workers the tests start, kill and restart at will, so that killing processes and
flushing Redis never touches the shared `live_stack`. The GPU workers are forked from a
zygote that imported the worker once (tests/support/worker_zygote.py).

Short intervals (LEASE_SECONDS=3, RECONCILE_INTERVAL_SECONDS=1, ...) make recoveries
take seconds instead of minutes; every other setting is the production default.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import func, select

from cli import stack
from common import jobs
from common.db import session_scope
from common.models import CreditLedgerEntry, Job, JobStatus, LedgerReason
from common.refusals import Refusal
from devstack.ports import free_port
from devstack.process import log_path, log_tail, pidfile_path, record_pid, stop_pidfile
from devstack.stack import purge_state, start_services
from tests.support import reads
from tests.support.live import ROOT, Stack
from tests.support.worker_zygote import Zygote

FAST_RECOVERY = {
    "LEASE_SECONDS": "3",  # heartbeat every second
    "RECONCILE_INTERVAL_SECONDS": "1",
    # Recovery never waits for it: workers claim from PostgreSQL and poll it when idle.
    "REDISPATCH_AFTER_SECONDS": "3600",
    "MAX_ATTEMPTS": "3",
    "DEFAULT_RATE_LIMIT_PER_MINUTE": "1000000",
    "DEFAULT_MAX_JOBS_IN_FLIGHT": "1000000",
}


UNFINISHED = (JobStatus.QUEUED, JobStatus.PROCESSING)

# The worker `steady_worker` keeps up across tests.
STEADY = "gpu-steady"


@dataclass
class Worker:
    """A GPU worker forked by the stack's zygote (tests/support/worker_zygote.py)."""

    name: str
    pid: int
    ready_file: Path
    exit_file: Path
    log_file: Path

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            assert self.alive, f"{self.name} exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"{self.name} not ready after {timeout}s"
            time.sleep(0.1)

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait_exit(self, timeout: float = 300) -> int:
        """The exit status; negative: killed by that signal."""
        deadline = time.monotonic() + timeout
        while self.alive:
            assert time.monotonic() < deadline, f"{self.name} still running after {timeout}s"
            time.sleep(0.05)
        return int(self.exit_file.read_text())

    @property
    def alive(self) -> bool:
        return not self.exit_file.exists()  # written once the zygote reaped it

    def log(self) -> str:
        return log_tail(self.log_file, 8000)


@dataclass(frozen=True)
class FaultStack(Stack):
    """The stack's own helpers (API URL, CLI, accounts, clients), plus its GPU workers."""

    zygote: Zygote | None = None
    workers: list[Worker] = field(default_factory=list)

    # --- processes ----------------------------------------------------------------------

    def start_worker(
        self, name: str, wait: bool = True, extra_env: dict[str, str] | None = None
    ) -> Worker:
        """A GPU worker (`python -m worker`, forked from the zygote, which has imported it
        already), with `extra_env` on top of the stack's environment; returns once it
        consumes, unless `wait` is False."""
        assert self.zygote is not None
        ready = self.state_dir / f"{name}.ready"
        exit_file = self.state_dir / f"{name}.exit"
        ready.unlink(missing_ok=True)
        exit_file.unlink(missing_ok=True)
        argv = ["--ready-file", str(ready)]
        # One torch thread, as every process of the suite (OMP_NUM_THREADS: conftest.py).
        env = {**os.environ, **self.env, **(extra_env or {})}
        log = self.log_file(name)
        log.parent.mkdir(parents=True, exist_ok=True)
        pid = self.zygote.fork(argv, env, log, exit_file)
        record_pid(pidfile_path(self.state_dir, name), pid, ["python", "-m", "worker", *argv])
        worker = Worker(name=name, pid=pid, ready_file=ready, exit_file=exit_file, log_file=log)
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
        """A plain GPU worker kept from one test to the next while it stays up: even
        forked, a worker loads and warms up its model, and most outage tests only need
        one that survives the outage."""
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

    def cancel_unfinished(self, account_id: str) -> None:
        """Cancel the account's jobs not over yet, as its owner would: a test that failed
        half-way must not leave the next one's workers a job to run."""
        account = uuid.UUID(account_id)
        with session_scope(self.env["DATABASE_URL"]) as session:
            unfinished = session.execute(
                select(Job.id).where(Job.account_id == account, Job.status.in_(UNFINISHED))
            ).scalars()
            for job_id in list(unfinished):
                with contextlib.suppress(Refusal):  # over meanwhile
                    jobs.cancel(session, job_id, account)

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
        zygote = Zygote({**os.environ, **env}, ROOT, log_path(state_dir, "worker-zygote"))
        faults = FaultStack(state_dir=state_dir, env=env, zygote=zygote)
        try:
            yield faults
        finally:
            faults.stop_workers()
            zygote.close()
    finally:
        stack.down(state_dir)
        purge_state(state_dir)
