"""The queue of record at scale: many accounts, 100,000 queued jobs, 64 simulated GPU
workers claiming from one PostgreSQL.

Starts its own embedded PostgreSQL, Redis and S3 in a temporary folder (Redis because
the transitions' after-commit notices go there, as in service), loads 1,000 accounts
with skewed backlogs (5 with ~18,000 jobs each, the rest ~10; some of weight 2 or 4)
in one pool, then runs `--workers` simulated workers for `--seconds`: each loops
claim (`common.scheduler.claim_next`) → one lease renewal → `jobs.complete` per job,
each in its own transaction like worker/execute.py, with no model. Meanwhile a poller
reads `queue_position` of queued jobs. Reports claims/s, claim latency, the fairness
achieved among the accounts that stayed backlogged, and the CPU PostgreSQL and the
bench used.

Usage: .venv/bin/python -m bench.scheduler_scale [--workers 64] [--processes 4]
       [--seconds 30] [--max-images 1] [--jobs 100000]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
POOL = "gpu"
HEAVY_ACCOUNTS = 5

# job_work (common/scheduler.py) in SQL, for the bulk load: samples × denoising steps ×
# (2 for second-order schedulers) × pixels / 1024².
_LOAD = """
INSERT INTO jobs (id, account_id, status, queue, params, seed, cost, input_key,
                  output_keys, attempts, work, metrics, created_at)
SELECT gen_random_uuid(), a.id, 'QUEUED', :pool,
       jsonb_build_object('width', s.w, 'height', s.h, 'scheduler', s.sched,
                          'num_inference_steps', s.steps, 'strength', s.strength,
                          'guidance_scale', 7.5, 'samples', s.samples, 'prompt', 'p'),
       1, s.samples * s.steps, 'inputs/none.png', '[]', 0,
       s.samples * floor(s.steps * s.strength)
         * (CASE WHEN s.sched = 'DPM2 Karras' THEN 2 ELSE 1 END) * s.w * s.h / 1048576.0,
       '{}', now() - interval '1 hour' + make_interval(secs => n / 100.0)
FROM accounts AS a
CROSS JOIN LATERAL generate_series(1, CASE WHEN a.name LIKE 'heavy-%' THEN :heavy
                                           ELSE :light END) AS n
CROSS JOIN LATERAL (SELECT
    (ARRAY[512, 768, 1024, 512])[1 + abs(n + hashtext(a.name)) % 4] AS w,
    (ARRAY[512, 512, 1024, 768])[1 + abs(n + hashtext(a.name)) % 4] AS h,
    (ARRAY['Euler', 'DPM2 Karras'])[1 + n % 2] AS sched,
    20 + n % 31 AS steps, 0.5 + (n % 5) / 10.0 AS strength, 1 + n % 4 AS samples) AS s
"""


_BACKFILL = """
UPDATE jobs SET queue_seq = ranked.seq
FROM (SELECT id, row_number() OVER (PARTITION BY account_id ORDER BY created_at, id) AS seq
      FROM jobs WHERE status = 'QUEUED') AS ranked
WHERE jobs.id = ranked.id;
INSERT INTO account_queues (account_id, queue, pass, queued, queued_work, next_seq)
SELECT account_id, queue, 0, count(*), sum(work), max(queue_seq)
FROM jobs WHERE status = 'QUEUED' GROUP BY account_id, queue;
"""


def _cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes, in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _postgres_pids() -> list[int]:
    """Every PostgreSQL server process on the machine (the bench's is the only one
    while it runs: run it alone)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


class _PostgresCpu(threading.Thread):
    """CPU seconds the PostgreSQL processes spent while it ran: sampled every 0.2 s,
    since backends come and go with the workers' connections."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self._stop_event = threading.Event()

    def _sample(self, initial: bool) -> None:
        for pid in _postgres_pids():
            cpu = _cpu_seconds([pid])
            self.last[pid] = cpu
            if initial:
                self.first[pid] = cpu

    def run(self) -> None:
        self._sample(initial=True)
        while not self._stop_event.wait(0.2):
            self._sample(initial=False)

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        self._sample(initial=False)
        return sum(cpu - self.first.get(pid, 0.0) for pid, cpu in self.last.items())


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(values: list[float], *quantiles: float) -> str:
    return " / ".join(f"{_pct(values, q):.1f}" for q in quantiles)


def _worker_process(
    env: dict[str, str], threads: int, seconds: float, max_images: int, out: Any
) -> None:
    """`threads` simulated GPU workers in one process; sends back their latencies."""
    os.environ.update(env)
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    from common import db, jobs, leases, scheduler

    # One pool big enough for every thread of this process (common/db.py's is 10 + 20).
    engine = create_engine(env["DATABASE_URL"], pool_size=threads, max_overflow=0)
    factory = sessionmaker(engine, expire_on_commit=False)
    db.get_session_factory.cache_clear()
    db.get_session_factory = lambda url=None: factory  # type: ignore[assignment,misc]

    claim_ms: list[float] = []
    renew_ms: list[float] = []
    complete_ms: list[float] = []
    empty = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def loop(index: int) -> None:
        mine_claim, mine_renew, mine_complete = [], [], []
        owner = f"bench-{os.getpid()}-{index}"
        while time.monotonic() < deadline:
            start = time.perf_counter()
            with db.session_scope() as session:
                claimed = scheduler.claim_next(session, POOL, owner, 60, max_images)
                ids = [job.id for job in claimed]
            mine_claim.append((time.perf_counter() - start) * 1000)
            if not ids:
                with lock:
                    empty[0] += 1
                continue
            start = time.perf_counter()
            with db.session_scope() as session:
                leases.renew_all(session, ids, owner, 60)
            mine_renew.append((time.perf_counter() - start) * 1000)
            for job_id in ids:
                start = time.perf_counter()
                with db.session_scope() as session:
                    jobs.complete(session, job_id, [], {"bench": True}, lease_owner=owner)
                mine_complete.append((time.perf_counter() - start) * 1000)
        with lock:
            claim_ms.extend(mine_claim)
            renew_ms.extend(mine_renew)
            complete_ms.extend(mine_complete)

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    out.put(
        {
            "claim": claim_ms,
            "renew": renew_ms,
            "complete": complete_ms,
            "empty": empty[0],
            "cpu": time.process_time(),
        }
    )


def _poll_positions(seconds: float, results: dict[str, Any]) -> None:
    """queue_position of queued jobs of light accounts, as status polls would ask it."""
    from sqlalchemy import select, text

    from common import scheduler
    from common.db import session_scope
    from common.models import Job, JobStatus

    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    with session_scope() as session:
        sample = list(
            session.execute(
                select(Job.id)
                .where(Job.status == JobStatus.QUEUED)
                .order_by(Job.created_at.desc())
                .limit(50)
            ).scalars()
        )

    def buffers(job_id: uuid.UUID) -> int:
        with session_scope() as session:
            plan = session.execute(
                text("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + scheduler._POSITION.text),
                {"id": job_id},
            ).scalar_one()
        top = plan[0]["Plan"]
        return int(top.get("Shared Hit Blocks", 0)) + int(top.get("Shared Read Blocks", 0))

    results["buffers_start"] = buffers(sample[0])
    i = 0
    while time.monotonic() < deadline:
        job_id = sample[i % len(sample)]
        i += 1
        start = time.perf_counter()
        with session_scope() as session:
            job = session.get(Job, job_id)
            assert job is not None
            scheduler.queue_position(session, job)
        latencies.append((time.perf_counter() - start) * 1000)
        time.sleep(0.02)
    results["buffers_end"] = buffers(sample[0])
    results["latencies"] = latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--max-images", type=int, default=1)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=100_000)
    args = parser.parse_args()

    from sqlalchemy import text

    from cli import stack
    from common.devstack.stack import purge_state, start_services

    state = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        services = start_services(state, fast=True)
        env = stack.service_env(services, "http://127.0.0.1:9", state / "no-model")
        stack.migrate(env)
        os.environ.update(env)
        from common.db import get_engine, session_scope

        light = args.accounts - HEAVY_ACCOUNTS
        per_light = 10
        heavy = (args.jobs - light * per_light) // HEAVY_ACCOUNTS
        started = time.perf_counter()
        with session_scope() as session:
            session.execute(
                text(
                    "INSERT INTO accounts (id, name, balance, status, scheduling_weight) "
                    "SELECT gen_random_uuid(), "
                    "CASE WHEN n <= :heavy_n THEN 'heavy-' ELSE 'light-' END || n, 0, "
                    "'active', CASE WHEN n % 50 = 0 THEN 4 WHEN n % 10 = 0 THEN 2 END "
                    "FROM generate_series(1, :n) AS n"
                ),
                {"n": args.accounts, "heavy_n": HEAVY_ACCOUNTS},
            )
            # The trigger keeps account_queues per inserted job: 100,000 updates of a few
            # rows in one transaction. Bulk-load without it, then fill account_queues
            # the way migration 0007 backfills it.
            session.execute(text("ALTER TABLE jobs DISABLE TRIGGER jobs_track_queue"))
            session.execute(text(_LOAD), {"pool": POOL, "heavy": heavy, "light": per_light})
            session.execute(text(_BACKFILL))
            session.execute(text("ALTER TABLE jobs ENABLE TRIGGER jobs_track_queue"))
        with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE accounts, account_queues, jobs"))
        with session_scope() as session:
            queued = session.execute(
                text("SELECT count(*) FROM jobs WHERE status = 'QUEUED'")
            ).scalar_one()
        load_seconds = time.perf_counter() - started

        pg_sampler = _PostgresCpu()
        pg_sampler.start()
        me_before = time.process_time()
        wall = time.perf_counter()
        positions: dict[str, Any] = {}
        poller = threading.Thread(target=_poll_positions, args=(args.seconds, positions))
        poller.start()
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        per_process = args.workers // args.processes
        procs = [
            ctx.Process(
                target=_worker_process,
                args=(env, per_process, args.seconds, args.max_images, out),
            )
            for _ in range(args.processes)
        ]
        for p in procs:
            p.start()
        gathered: dict[str, list[float]] = defaultdict(list)
        empty = 0
        bench_cpu = 0.0
        for _ in procs:
            got = out.get()
            for key in ("claim", "renew", "complete"):
                gathered[key].extend(got[key])
            empty += got["empty"]
            bench_cpu += got["cpu"]
        for p in procs:
            p.join()
        poller.join()
        elapsed = time.perf_counter() - wall
        pg_cpu = pg_sampler.stop()
        me_cpu = time.process_time() - me_before

        with session_scope() as session:
            served = session.execute(
                text(
                    "SELECT a.id, coalesce(a.scheduling_weight, 1), "
                    "count(*) FILTER (WHERE j.status <> 'QUEUED'), "
                    "coalesce(sum(j.work) FILTER (WHERE j.status <> 'QUEUED'), 0), "
                    "count(*) FILTER (WHERE j.status = 'QUEUED') "
                    "FROM accounts a JOIN jobs j ON j.account_id = a.id GROUP BY a.id"
                )
            ).all()
        # Backlogged throughout: still had queued jobs at the end.
        backlogged = [(w, work) for _, w, n, work, left in served if left > 0 and n > 0]
        normalised = [work / w for w, work in backlogged]
        mean = statistics.mean(normalised) if normalised else float("nan")
        deviation = max(abs(x / mean - 1) for x in normalised) if normalised else float("nan")
        jobs_done = sum(n for _, _, n, _, _ in served)
        claims = len(gathered["claim"]) - empty

        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
        ).stdout.strip()
        print(
            f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"commit {commit}; {args.accounts} accounts, {queued} queued jobs "
            f"(loaded in {load_seconds:.0f} s), {args.workers} workers in "
            f"{args.processes} processes, max_images {args.max_images}, {elapsed:.0f} s"
        )
        claim = gathered["claim"]
        lat = positions.get("latencies", [])
        rows = [
            ("claims/s (that got work)", f"{claims / elapsed:.0f}"),
            ("jobs claimed/s", f"{jobs_done / elapsed:.0f}"),
            ("empty claims (all planned jobs taken by others)", f"{empty}"),
            (
                "claim p50 / p95 / p99 ms",
                _ms(claim, 0.5, 0.95, 0.99),
            ),
            (
                "renew p50 / p99 ms",
                _ms(gathered["renew"], 0.5, 0.99),
            ),
            (
                "complete p50 / p99 ms",
                _ms(gathered["complete"], 0.5, 0.99),
            ),
            (
                "queue_position p50 / p99 ms (while claiming)",
                _ms(lat, 0.5, 0.99),
            ),
            (
                "queue_position shared buffers, start / end",
                f"{positions.get('buffers_start')} / {positions.get('buffers_end')}",
            ),
            (
                "fairness: backlogged accounts, max deviation of work/weight from mean",
                f"{len(backlogged)} accounts, {deviation:.1%}",
            ),
            ("PostgreSQL CPU (share of 2 cores)", f"{pg_cpu / elapsed / 2:.0%}"),
            ("bench worker processes CPU (share of 2 cores)", f"{bench_cpu / elapsed / 2:.0%}"),
            ("bench main process CPU", f"{me_cpu / elapsed / 2:.0%}"),
        ]
        print("| figure | value |\n|---|---|")
        for name, value in rows:
            print(f"| {name} | {value} |")
    finally:
        stack.down(state)
        purge_state(state)


if __name__ == "__main__":
    main()
