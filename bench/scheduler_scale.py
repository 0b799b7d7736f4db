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

Two clients: `--client sql` (default) sends the service path's statements (the claim's
candidate queries and `plan` from common/scheduler.py, then the UPDATEs that jobs.start
/ leases.renew_all / jobs.complete send, recorded from those functions at start-up)
through plain psycopg, 64 coroutines on one event loop, so that
the client's CPU, which in service is on 64 other machines, leaves this machine's cores
to PostgreSQL; `--client service` (a thread per worker, `--processes 4` spreads them)
runs the service code itself (SQLAlchemy ORM, after-commit Redis notices) and measures
mostly Python. `--rate R` paces the workers to R claims/s in all (a GPU's run between
claims), to read latency at a given load; 0 (default) is a closed loop: as fast as
they go.

`--client asyncpg` sends the same statements through asyncpg, a client that leaves more
of the cores to PostgreSQL.

Usage: .venv/bin/python -m bench.scheduler_scale [--client sql|asyncpg|service] [--rate 0]
       [--workers 64] [--processes 1] [--seconds 30] [--max-images 1] [--jobs 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import multiprocessing as mp
import os
import platform
import random
import re
import subprocess
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
POOL = "gpu"
HEAVY_ACCOUNTS = 5
CORES = os.cpu_count() or 1

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
INSERT INTO account_queues (account_id, queue, pass, queued, queued_work, next_seq, head_seq)
SELECT account_id, queue, 0, count(*), sum(work), max(queue_seq), min(queue_seq)
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
    """CPU seconds the PostgreSQL processes spend, sampled every 0.2 s (backends come
    and go with the workers' connections), so that any window of the run can be read."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, dict[int, float]]] = []
        self._stop_event = threading.Event()

    def _sample(self) -> None:
        self.samples.append((time.monotonic(), {p: _cpu_seconds([p]) for p in _postgres_pids()}))

    def run(self) -> None:
        self._sample()
        while not self._stop_event.wait(0.2):
            self._sample()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self._sample()

    def between(self, start: float, end: float) -> float:
        """CPU seconds spent from `start` to `end` (time.monotonic())."""
        before = max((s for s in self.samples if s[0] <= start), key=lambda s: s[0])[1]
        after = max((s for s in self.samples if s[0] <= end), key=lambda s: s[0])[1]
        return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(values: list[float], *quantiles: float) -> str:
    return " / ".join(f"{_pct(values, q):.1f}" for q in quantiles)


def _psycopg_params(sql: str) -> str:
    """A SQLAlchemy text() statement's :name parameters as psycopg's %(name)s."""
    return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", sql)


_PLACEHOLDER_OWNER = "bench-placeholder-owner"


@dataclass(frozen=True)
class _Recorded:
    """One statement the service sent, with its parameters, as psycopg received them."""

    sql: str
    params: dict[str, Any]

    def bind(self, ids: list[uuid.UUID], owner: str) -> dict[str, Any]:
        """The parameters with the placeholder job ids and owner replaced."""
        by_placeholder: dict[Any, Any] = {_placeholder(i): job for i, job in enumerate(ids)}
        by_placeholder[_PLACEHOLDER_OWNER] = owner
        return {k: by_placeholder.get(v, v) for k, v in self.params.items()}


def _placeholder(i: int) -> uuid.UUID:
    return uuid.UUID(int=i + 1)


def _record_service_statements(max_images: int) -> dict[tuple[str, int], _Recorded]:
    """The UPDATEs jobs.start, leases.renew_all and jobs.complete send for k = 1 ..
    `max_images` jobs, recorded from the service code itself (on job ids that do not
    exist, rolled back), so that the SQL client sends exactly what the service does."""
    from sqlalchemy import Engine, event

    from common import jobs, leases
    from common.db import get_session_factory

    recorded: dict[tuple[str, int], _Recorded] = {}
    current: list[tuple[str, int]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().startswith("UPDATE jobs"):
            recorded[current[0]] = _Recorded(statement, dict(parameters))

    steps = {
        "start": lambda session, ids: jobs.start(session, ids, _PLACEHOLDER_OWNER, 60),
        "renew": lambda session, ids: leases.renew_all(session, ids, _PLACEHOLDER_OWNER, 60),
        "complete": lambda session, ids: jobs.complete(
            session, ids[0], [], {"bench": True}, lease_owner=_PLACEHOLDER_OWNER
        ),
    }
    event.listen(Engine, "before_cursor_execute", record)
    try:
        for name, step in steps.items():
            for k in range(1, max_images + 1) if name != "complete" else (1,):
                current[:] = [(name, k)]
                session = get_session_factory()()
                try:
                    step(session, [_placeholder(i) for i in range(k)])
                finally:
                    session.rollback()
                    session.close()
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    return recorded


class _SqlCycle:
    """One simulated worker's claim → renew → complete over plain psycopg, as a
    coroutine: the 64 of them share one event loop, which costs this machine far less
    CPU (and far fewer GIL hand-overs) than 64 threads. Sends the service's statements:
    the candidate queries and `plan` of common/scheduler.py, the UPDATEs as recorded
    from the service (`_record_service_statements`), each session preceded by the
    pool's `SELECT 1` when its connection was idle long enough (common.db.ping_when_idle:
    in a busy cycle, never). None of the bench's
    accounts has a webhook endpoint, so no delivery is written (the UPDATEs' RETURNING
    says so)."""

    def __init__(
        self, conn: Any, owner: str, max_images: int, sent: dict[tuple[str, int], _Recorded]
    ) -> None:
        from common import scheduler
        from common.settings import get_settings

        self.conn = conn
        self.owner = owner
        self.max_images = max_images
        self.sent = sent
        self.own = _psycopg_params(scheduler.candidates_statement(max_images, False).text)
        self.shared = _psycopg_params(scheduler.candidates_statement(max_images, True).text)
        self.scheduler = scheduler
        self.ping_after = get_settings().database_ping_after_idle_seconds
        self.idle_since = time.monotonic()

    async def _checkout(self) -> None:
        """What the service's pool sends when a session takes a connection."""
        if time.monotonic() - self.idle_since >= self.ping_after:
            await self._fetch("SELECT 1", {})

    async def _send(self, name: str, ids: list[uuid.UUID]) -> list[Any]:
        statement = self.sent[(name, len(ids))]
        return await self._fetch(statement.sql, statement.bind(ids, self.owner))

    async def _fetch(self, sql: str, params: dict[str, Any]) -> list[Any]:
        """Send one statement (psycopg's %(name)s parameters), return its rows."""
        return list(await (await self.conn.execute(sql, params)).fetchall())

    async def claim(self) -> list[tuple[uuid.UUID, uuid.UUID]]:
        """Claimed (job id, account id) pairs, committed."""
        await self._checkout()
        try:
            return await self._claim()
        finally:
            self.idle_since = time.monotonic()

    async def _claim(self) -> list[tuple[uuid.UUID, uuid.UUID]]:
        params = {"queue": POOL}
        async with self.conn.transaction():
            rows = await self._fetch(self.own, params)
            if not rows:
                rows = await self._fetch(self.shared, params)
            if not rows:
                return []
            chosen = self.scheduler.choose(rows, self.max_images)
            started = await self._send("start", chosen)
        return [(row[0], row[1]) for row in started]

    async def renew(self, ids: list[uuid.UUID]) -> None:
        # One statement in autocommit, as worker/heartbeat.py sends it.
        await self._checkout()
        await self._send("renew", ids)
        self.idle_since = time.monotonic()

    async def complete(self, job_id: uuid.UUID, account_id: uuid.UUID) -> None:
        await self._checkout()
        async with self.conn.transaction():
            await self._send("complete", [job_id])
        self.idle_since = time.monotonic()


class _ServiceCycle:
    """The same cycle through the service code (common.scheduler, leases, jobs)."""

    def __init__(self, owner: str, max_images: int) -> None:
        from common import db, jobs, leases, scheduler

        self.db, self.jobs, self.leases, self.scheduler = db, jobs, leases, scheduler
        self.owner = owner
        self.max_images = max_images

    def claim(self) -> list[tuple[uuid.UUID, uuid.UUID]]:
        with self.db.session_scope() as session:
            claimed = self.scheduler.claim_next(session, POOL, self.owner, 60, self.max_images)
            return [(job.id, job.account_id) for job in claimed]

    def renew(self, ids: list[uuid.UUID]) -> None:
        with self.db.autocommit_session() as session:
            self.leases.renew_all(session, ids, self.owner, 60)

    def complete(self, job_id: uuid.UUID, account_id: uuid.UUID) -> None:
        with self.db.session_scope() as session:
            self.jobs.complete(session, job_id, [], {"bench": True}, lease_owner=self.owner)


@dataclass
class _Latencies:
    """What one process's simulated workers measured, in ms."""

    claim: list[float] = field(default_factory=list)
    claim_at: list[float] = field(default_factory=list)  # time.monotonic() of each
    renew: list[float] = field(default_factory=list)
    complete: list[float] = field(default_factory=list)
    empty: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, claim_ms: float, renew_ms: float | None, complete_ms: list[float]) -> None:
        """One cycle's timings; `renew_ms` None when the claim got nothing."""
        with self.lock:
            self.claim.append(claim_ms)
            self.claim_at.append(time.monotonic())
            if renew_ms is None:
                self.empty += 1
            else:
                self.renew.append(renew_ms)
            self.complete.extend(complete_ms)


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def _service_workers(
    env: dict[str, str], threads: int, window: tuple[float, float], period: float, max_images: int
) -> _Latencies:
    """`threads` workers through the service code, one thread each."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    from common import db
    from common.settings import get_settings

    # One pool big enough for every thread of this process (common/db.py's is 10 + 20).
    engine = create_engine(env["DATABASE_URL"], pool_size=threads, max_overflow=0)
    db.ping_when_idle(engine, get_settings().database_ping_after_idle_seconds)
    factory = sessionmaker(engine, expire_on_commit=False)
    db.get_session_factory.cache_clear()
    db.get_session_factory = lambda url=None: factory  # type: ignore[assignment]
    db.get_engine = lambda url=None: engine  # type: ignore[assignment]
    found = _Latencies()
    begin = time.monotonic()

    def loop(index: int) -> None:
        cycle = _ServiceCycle(f"bench-{os.getpid()}-{index}", max_images)
        # Paced workers start spread over one period, as GPUs finishing at random.
        next_claim = begin + random.random() * period
        while True:
            if period:
                time.sleep(max(0.0, next_claim - time.monotonic()))
                next_claim += period
            if time.monotonic() >= window[1]:
                return
            counted = time.monotonic() >= window[0]
            start = time.perf_counter()
            claimed = cycle.claim()
            claim_ms, renew_ms, complete_ms = _ms_since(start), None, []
            if claimed:
                start = time.perf_counter()
                cycle.renew([job_id for job_id, _ in claimed])
                renew_ms = _ms_since(start)
            for job_id, account_id in claimed:
                start = time.perf_counter()
                cycle.complete(job_id, account_id)
                complete_ms.append(_ms_since(start))
            if counted:
                found.add(claim_ms, renew_ms, complete_ms)

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return found


@functools.cache
def _numbered(sql: str) -> tuple[str, tuple[str, ...]]:
    """psycopg's %(name)s parameters as asyncpg's $1, $2, …, and the names in order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return re.sub(r"%\((\w+)\)s", number, sql), tuple(names)


def _asyncpg_value(value: Any) -> Any:
    """psycopg's JSON wrappers (`Jsonb`) as the text asyncpg sends for json(b)."""
    if hasattr(value, "obj") and hasattr(value, "dumps"):
        return json.dumps(value.obj)
    return value


class _AsyncpgCycle(_SqlCycle):
    """The same statements, parameters and transactions (so the same work and round
    trips for PostgreSQL) sent through asyncpg, whose protocol is written in C: it
    leaves more of this machine's two cores to PostgreSQL than psycopg's Python layers
    do, as the GPU workers' clients would on their own machines."""

    async def _fetch(self, sql: str, params: dict[str, Any]) -> list[Any]:
        numbered, names = _numbered(sql)
        rows = await self.conn.fetch(numbered, *(_asyncpg_value(params[n]) for n in names))
        return [tuple(row) for row in rows]


async def _sql_workers(
    url: str,
    count: int,
    window: tuple[float, float],
    period: float,
    max_images: int,
    driver: str = "psycopg",
) -> _Latencies:
    """`count` workers over plain psycopg (or asyncpg), one coroutine and connection
    each."""
    sent = _record_service_statements(max_images)
    cycle_class: type[_SqlCycle]
    if driver == "asyncpg":
        import asyncpg  # bench-only: pip install asyncpg

        # Outside `conn.transaction()` each statement is its own transaction.
        conns: list[Any] = [await asyncpg.connect(url) for _ in range(count)]
        cycle_class = _AsyncpgCycle
    else:
        import psycopg

        # Autocommit: the renewal is its own transaction; claims and completions open
        # theirs (`conn.transaction()`: BEGIN … COMMIT, as SQLAlchemy's sessions do).
        conns = [await psycopg.AsyncConnection.connect(url, autocommit=True) for _ in range(count)]
        cycle_class = _SqlCycle
    found = _Latencies()
    begin = time.monotonic()

    async def loop(index: int) -> None:
        cycle = cycle_class(conns[index], f"bench-{os.getpid()}-{index}", max_images, sent)
        next_claim = begin + random.random() * period
        while True:
            if period:
                await asyncio.sleep(max(0.0, next_claim - time.monotonic()))
                next_claim += period
            if time.monotonic() >= window[1]:
                return
            counted = time.monotonic() >= window[0]
            start = time.perf_counter()
            claimed = await cycle.claim()
            claim_ms, renew_ms, complete_ms = _ms_since(start), None, []
            if claimed:
                start = time.perf_counter()
                await cycle.renew([job_id for job_id, _ in claimed])
                renew_ms = _ms_since(start)
            for job_id, account_id in claimed:
                start = time.perf_counter()
                await cycle.complete(job_id, account_id)
                complete_ms.append(_ms_since(start))
            if counted:
                found.add(claim_ms, renew_ms, complete_ms)

    await asyncio.gather(*(loop(i) for i in range(count)))
    for conn in conns:
        await conn.close()
    return found


def _worker_process(
    env: dict[str, str],
    client: str,
    workers: int,
    warmup: float,
    seconds: float,
    period: float,
    max_images: int,
    out: Any,
) -> None:
    """`workers` simulated GPU workers in one process; sends back what they measured in
    the `seconds` after a `warmup` (first connections, statements not yet prepared).
    `period`: seconds from one claim of a worker to its next (0: no pause)."""
    os.environ.update(env)
    url = env["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    now = time.monotonic()
    window = (now + warmup, now + warmup + seconds)
    cpu: list[float] = []

    def read_cpu() -> None:  # this process's CPU time at the window's start and end
        for moment in window:
            time.sleep(max(0.0, moment - time.monotonic()))
            cpu.append(time.process_time())

    clock = threading.Thread(target=read_cpu, daemon=True)
    clock.start()
    if client in ("sql", "asyncpg"):
        driver = "asyncpg" if client == "asyncpg" else "psycopg"
        found = asyncio.run(_sql_workers(url, workers, window, period, max_images, driver))
    else:
        found = _service_workers(env, workers, window, period, max_images)
    clock.join()
    out.put(
        {
            "claim": found.claim,
            "claim_at": found.claim_at,
            "renew": found.renew,
            "complete": found.complete,
            "empty": found.empty,
            "cpu": cpu[1] - cpu[0],
            "window": window,
        }
    )


def _poll_positions(
    warmup: float, seconds: float, max_images: int, results: dict[str, Any]
) -> None:
    """queue_position of queued jobs of light accounts, as status polls would ask it,
    ten times a second after `warmup`; before and after, the buffers that one position
    and one claim's candidate query read."""
    from sqlalchemy import select, text

    from common import scheduler
    from common.db import session_scope
    from common.models import Job, JobStatus

    latencies: list[float] = []
    with session_scope() as session:
        sample = list(
            session.execute(
                select(Job.id)
                .where(Job.status == JobStatus.QUEUED)
                .order_by(Job.created_at.desc())
                .limit(50)
            ).scalars()
        )

    def buffers(statement: str, params: dict[str, Any]) -> int:
        # Rolled back: the claim's statement locks what it reads.
        with session_scope() as session:
            plan = session.execute(
                text("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement), params
            ).scalar_one()
            session.rollback()
        top = plan[0]["Plan"]
        return int(top.get("Shared Hit Blocks", 0)) + int(top.get("Shared Read Blocks", 0))

    def measure(when: str) -> None:
        results[f"buffers_{when}"] = buffers(scheduler._POSITION.text, {"job_id": sample[0]})
        claim = scheduler.candidates_statement(max_images, True).text
        results[f"claim_buffers_{when}"] = buffers(claim, {"queue": POOL})

    measure("start")
    time.sleep(warmup)
    deadline = time.monotonic() + seconds
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
        time.sleep(0.1)  # 10 polls a second
    measure("end")
    results["latencies"] = latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--client", choices=("sql", "asyncpg", "service"), default="sql")
    parser.add_argument("--rate", type=float, default=0, help="claims/s in all; 0: closed loop")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument(
        "--warmup", type=float, default=5, help="seconds run before measuring (not counted)"
    )
    parser.add_argument("--max-images", type=int, default=1)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=100_000)
    args = parser.parse_args()

    from sqlalchemy import text

    from cli import stack
    from devstack.stack import purge_state, start_services

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
            # The triggers keep account_queues per inserted job: 100,000 updates of a
            # few rows in one transaction. Bulk-load without them, then fill
            # account_queues the way migration 0007 backfills it.
            session.execute(text("ALTER TABLE jobs DISABLE TRIGGER USER"))
            session.execute(text(_LOAD), {"pool": POOL, "heavy": heavy, "light": per_light})
            session.execute(text(_BACKFILL))
            session.execute(text("ALTER TABLE jobs ENABLE TRIGGER USER"))
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
        poller = threading.Thread(
            target=_poll_positions,
            args=(args.warmup + 2, args.seconds, args.max_images, positions),
        )
        poller.start()
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        per_process = args.workers // args.processes
        period = args.workers / args.rate if args.rate else 0.0
        procs = [
            ctx.Process(
                target=_worker_process,
                args=(
                    env,
                    args.client,
                    per_process,
                    args.warmup,
                    args.seconds,
                    period,
                    args.max_images,
                    out,
                ),
            )
            for _ in range(args.processes)
        ]
        for p in procs:
            p.start()
        gathered: dict[str, list[float]] = defaultdict(list)
        empty = 0
        bench_cpu = 0.0
        windows: list[tuple[float, float]] = []
        for _ in procs:
            # A worker process that died sends nothing: give up rather than hang.
            got = out.get(timeout=args.seconds + 120)
            for key in ("claim", "claim_at", "renew", "complete"):
                gathered[key].extend(got[key])
            empty += got["empty"]
            bench_cpu += got["cpu"]
            windows.append(got["window"])
        for p in procs:
            p.join()
        poller.join()
        elapsed = time.perf_counter() - wall
        pg_sampler.stop()
        # The window every process measured in.
        window = (max(w[0] for w in windows), min(w[1] for w in windows))
        pg_cpu = pg_sampler.between(*window) / (window[1] - window[0]) * args.seconds
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
        # Backlogged throughout: still had queued jobs at the end. Weighted fair queuing
        # keeps their served work / weight within about one job's work of each other.
        backlogged = [work / w for _, w, n, work, left in served if left > 0 and n > 0]
        with session_scope() as session:
            largest = session.execute(text("SELECT max(work) FROM jobs")).scalar_one()
        spread = (max(backlogged) - min(backlogged)) / largest if backlogged else float("nan")
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
            f"{args.processes} processes, client {args.client}, "
            f"rate {args.rate or 'closed loop'}, max_images {args.max_images}, {elapsed:.0f} s"
        )
        claim = gathered["claim"]
        # Which stretch of the run the slow claims came from (the light accounts drain
        # part-way: then a few heavy accounts are left for all the workers).
        by_time = [(at - window[0], ms) for at, ms in zip(gathered["claim_at"], claim, strict=True)]
        lat = positions.get("latencies", [])
        rows = [
            ("claims/s (that got work)", f"{claims / args.seconds:.0f}"),
            ("jobs claimed/s", f"{len(gathered['complete']) / args.seconds:.0f}"),
            ("empty claims (all planned jobs taken by others)", f"{empty}"),
            (
                "claim p50 / p95 / p99 ms",
                _ms(claim, 0.5, 0.95, 0.99),
            ),
            (
                "claim p99 ms, each 5 s of the run",
                " · ".join(
                    f"{_pct([ms for at, ms in by_time if start <= at < start + 5], 0.99):.0f}"
                    for start in range(0, int(args.seconds), 5)
                ),
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
                "claim candidate query shared buffers, start / end",
                f"{positions.get('claim_buffers_start')} / {positions.get('claim_buffers_end')}",
            ),
            (
                "fairness: served work/weight of the backlogged accounts, max − min, "
                "in units of the largest job",
                f"{len(backlogged)} accounts, {spread:.2f}",
            ),
            ("PostgreSQL CPU (share of the cores)", f"{pg_cpu / args.seconds / CORES:.0%}"),
            (
                "bench worker processes CPU (share of the cores)",
                f"{bench_cpu / args.seconds / CORES:.0%}",
            ),
            ("bench main process CPU", f"{me_cpu / elapsed / CORES:.0%}"),
        ]
        print("| figure | value |\n|---|---|")
        for name, value in rows:
            print(f"| {name} | {value} |")
    finally:
        stack.down(state)
        purge_state(state)


if __name__ == "__main__":
    main()
