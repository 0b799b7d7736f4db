"""The service path against its floor, side by side in one run.

Starts its own embedded stack (PostgreSQL, Redis, SeaweedFS) in a temporary folder,
then:

1. **Throughput.** The project's API (`uvicorn api.main:app`) and the floor
   (bench/floor_app.py: only what any correct submit and status must do) run as two
   processes with the same server settings, both sending their jobs to a pool no
   worker reads. The same 16 closed-loop clients (keep-alive HTTP/1.1, a light client
   so that both sides get the same cores) hit one side, then the other, alternating in
   short rounds: submits of a 512² and of a 64² JPEG as base64, and status polls of
   one QUEUED job. Prints req/s, p50/p99 and the ratio service/floor; then the API's
   RSS after that load.
2. **Queue overhead.** The API restarted with one worker (tiny model): serial v1
   requests of a 64² image with one denoising step (20 × 0.05); the round trip minus
   the worker's own `inference_time` (metrics) is what the queue, HTTP and storage add.
3. **Worker ratio.** 20 jobs (128², Euler a, 20 steps × 0.5) submitted at once through
   HTTP, run by the worker and uploaded to S3: ms per image from the first submit to
   the last `finished_at`; against a plain diffusers loop in this process doing the
   same 20 generations on the same model (`StableDiffusionXLImg2ImgPipeline`, one call
   each). The ratio is plain / service (1.0: the service adds nothing).

Usage: .venv/bin/python -m bench.service_floor [--seconds 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image
from sqlalchemy import text

from cli import stack
from devstack.ports import free_port
from devstack.process import pidfile_path, read_pidfile, start_process, stop_pidfile
from devstack.stack import purge_state, start_services

ROOT = Path(__file__).resolve().parent.parent
HELD_QUEUE = "held-bench"  # no worker reads it: submitted jobs stay QUEUED
CLIENTS = 16
FLOOR = "floor"
STEPS_128 = {"num_inference_steps": 20, "strength": 0.5, "scheduler": "Euler a"}


# ------------------------------------------------------------------------ inputs


def _jpeg(side: int, seed: int = 0) -> bytes:
    """A photo-like JPEG (smooth gradients plus grain), so its size is realistic."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side
    base = np.stack([x * 200 + 30, y * 180 + 40, (1 - x) * 160 + 50], axis=-1)
    pixels = np.clip(base + rng.normal(0, 18, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _submit_body(side: int, **extra: Any) -> dict[str, Any]:
    return {
        "image": base64.b64encode(_jpeg(side)).decode(),
        "prompt": "a watercolour of a lighthouse at dusk",
        "samples": 1,
        "num_inference_steps": 20,
        "strength": 0.5,
        "seed": 7,
        **extra,
    }


# ------------------------------------------------------------------ light client


class _Connection:
    """One keep-alive HTTP/1.1 connection: requests sent as prepared bytes, responses
    read by Content-Length. Light on CPU, so the client takes little of the cores the
    servers share with it (and the same little for both sides)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> _Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


def _request(method: str, path: str, key: str, body: bytes = b"") -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nx-api-key: {key}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class Load:
    latencies: list[float] = field(default_factory=list)  # seconds
    seconds: float = 0.0
    errors: int = 0

    def add(self, other: Load) -> None:
        self.latencies += other.latencies
        self.seconds += other.seconds
        self.errors += other.errors

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _closed_loop(port: int, request: bytes, seconds: float, expect: int) -> Load:
    """CLIENTS connections, each sending `request` as soon as the last answer came."""
    conns = [await _Connection.open(port) for _ in range(CLIENTS)]
    load = Load()
    stop = time.perf_counter() + seconds
    first_error: list[bytes] = []

    async def client(conn: _Connection) -> None:
        while time.perf_counter() < stop:
            sent = time.perf_counter()
            status, body = await conn.send(request)
            load.latencies.append(time.perf_counter() - sent)
            if status != expect:
                load.errors += 1
                first_error.append(body[:300])

    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in conns))
    load.seconds = time.perf_counter() - started
    for conn in conns:
        conn.close()
    if first_error:
        raise SystemExit(f"{load.errors} unexpected answers, e.g. {first_error[0]!r}")
    return load


# --------------------------------------------------------------------- processes


def _rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no VmRSS")


def _start_floor(state: Path, env: dict[str, str], port: int) -> None:
    # The same server and settings as stack.start_api, another application.
    argv = [sys.executable, "-m", "uvicorn", "bench.floor_app:app", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--no-access-log"]
    start_process(FLOOR, argv, state, env={**os.environ, **env}, cwd=ROOT)


def _wait_up(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"nothing answered on port {port}")


def _account(credits: int) -> tuple[uuid.UUID, str]:
    from common import accounts
    from common import credits as ledger
    from common.db import session_scope

    with session_scope() as session:
        account = accounts.create_account(session, f"bench-{uuid.uuid4().hex[:8]}", 0)
        ledger.grant(session, account.id, credits)
        return account.id, accounts.create_api_key(session, account.id).raw


# ----------------------------------------------------------------- the phases


@dataclass
class Row:
    what: str
    service: Load
    floor: Load


async def _throughput(api: int, floor: int, key: str, seconds: float, rounds: int) -> list[Row]:
    rows = []
    for name, side in (("submit, 512² JPEG as base64", 512), ("submit, 64² JPEG", 64)):
        body = json.dumps(_submit_body(side)).encode()
        request = _request("POST", "/v2/ssd-img2img", key, body)
        rows.append(await _alternate(name, api, floor, request, 200, seconds, rounds))
    # One QUEUED job on each side (submitted through that side), polled.
    polls = {}
    async with httpx.AsyncClient(headers={"x-api-key": key}) as client:
        for port in (api, floor):
            url = f"http://127.0.0.1:{port}/v2/ssd-img2img"
            job = (await client.post(url, json=_submit_body(64))).json()
            polls[port] = _request("GET", f"/v2/requests/{job['request_id']}/status", key)
    service, floor_load = Load(), Load()
    for _ in range(rounds):
        floor_load.add(await _closed_loop(floor, polls[floor], seconds, 200))
        service.add(await _closed_loop(api, polls[api], seconds, 200))
    rows.append(Row("status poll of one QUEUED job", service, floor_load))
    return rows


async def _alternate(
    name: str, api: int, floor: int, request: bytes, expect: int, seconds: float, rounds: int
) -> Row:
    service, floor_load = Load(), Load()
    await _closed_loop(api, request, 1, expect)  # warm both (first-use imports, pools)
    await _closed_loop(floor, request, 1, expect)
    for _ in range(rounds):
        floor_load.add(await _closed_loop(floor, request, seconds, expect))
        service.add(await _closed_loop(api, request, seconds, expect))
    return Row(name, service, floor_load)


def _metrics(job_id: str) -> dict[str, Any]:
    from common.db import session_scope

    with session_scope() as session:
        return dict(
            session.execute(
                text("SELECT metrics FROM jobs WHERE id = :id"), {"id": job_id}
            ).scalar_one()
        )


def _queue_overhead(api_url: str, key: str, requests: int) -> list[float]:
    """Serial v1 round trips of a one-step 64² job, minus the worker's inference_time."""
    body = _submit_body(64, num_inference_steps=20, strength=0.05, base64=False)
    overheads = []
    with httpx.Client(base_url=api_url, headers={"x-api-key": key}, timeout=120) as client:
        for i in range(requests + 2):
            sent = time.perf_counter()
            r = client.post("/v1/ssd-img2img", json=body)
            took = time.perf_counter() - sent
            if r.status_code != 200:
                raise SystemExit(f"v1: {r.status_code} {r.text[:300]}")
            inference = float(_metrics(r.headers["x-request-id"])["inference_time"])
            if i >= 2:  # the first two warm the worker's scheduler and kernels
                overheads.append((took - inference) * 1000)
    return overheads


def _service_run(api_url: str, key: str, jobs: int) -> float:
    """Seconds from the first submit of `jobs` 128² jobs to the last one's finished_at."""
    from common.db import session_scope

    body = _submit_body(128, **STEPS_128)
    ids = []
    with httpx.Client(base_url=api_url, headers={"x-api-key": key}, timeout=60) as client:
        started_wall = time.time()
        for i in range(jobs):
            r = client.post("/v2/ssd-img2img", json={**body, "seed": 100 + i})
            if r.status_code != 200:
                raise SystemExit(f"v2: {r.status_code} {r.text[:300]}")
            ids.append(r.json()["request_id"])
    query = text(
        "SELECT count(*) FILTER (WHERE status = 'COMPLETED'), "
        "count(*) FILTER (WHERE status IN ('FAILED', 'CANCELLED')), "
        "extract(epoch FROM max(finished_at)) FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))"
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        with session_scope() as session:
            done, bad, last = session.execute(query, {"ids": ids}).one()
        if bad:
            raise SystemExit(f"{bad} of the worker's jobs did not complete")
        if done == jobs:
            return float(last) - started_wall
        time.sleep(0.05)
    raise SystemExit("the worker did not finish in 600 s")


def _plain_loop(model: Path, jobs: int) -> float:
    """Seconds for the same generations in a plain diffusers loop, one call per job."""
    import torch
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionXLImg2ImgPipeline

    pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(str(model), local_files_only=True)
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    image = Image.open(io.BytesIO(_jpeg(128))).convert("RGB")
    body = _submit_body(128, **STEPS_128)

    def one(seed: int) -> None:
        out = pipe(
            prompt=body["prompt"],
            image=image,
            num_inference_steps=STEPS_128["num_inference_steps"],
            strength=STEPS_128["strength"],
            guidance_scale=7.5,
            generator=torch.Generator().manual_seed(seed),
        )
        out.images[0].convert("RGB").save(io.BytesIO(), format="JPEG", quality=90)

    with torch.inference_mode():
        one(0)  # warm-up, as the worker's first jobs
        started = time.perf_counter()
        for i in range(jobs):
            one(100 + i)
    return time.perf_counter() - started


# ------------------------------------------------------------------------ main


def _fmt(load: Load) -> str:
    return f"{load.rps:.0f} req/s, p50 {load.pct(0.5):.1f} ms, p99 {load.pct(0.99):.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5, help="per side per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--overhead-requests", type=int, default=30)
    parser.add_argument("--worker-jobs", type=int, default=20)
    parser.add_argument(
        "--max-batch-images", type=int, default=1, help="the worker's MAX_BATCH_IMAGES"
    )
    parser.add_argument(
        "--worker-only", action="store_true", help="only the worker and queue-overhead rows"
    )
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="service-floor-"))
    try:
        services = start_services(state, fast=True)
        api_port, floor_port = free_port(), free_port()
        model = state / "models" / "tiny"
        api_url = f"http://127.0.0.1:{api_port}"
        env = stack.service_env(services, api_url, model)
        env.update(
            DEFAULT_MAX_JOBS_IN_FLIGHT="1000000",
            DEFAULT_RATE_LIMIT_PER_MINUTE="10000000",
            MAX_BATCH_IMAGES=str(args.max_batch_images),
        )
        os.environ.update(env)
        stack.migrate(env)
        stack.ensure_tiny_model(model)
        _, key = _account(10**9)

        rows: list[Row] = []
        rss = 0
        if not args.worker_only:
            held = {**env, "GPU_QUEUE": HELD_QUEUE}
            stack.start_api(state, held, api_port)
            floor_url = f"http://127.0.0.1:{floor_port}"
            _start_floor(state, {**held, "PUBLIC_BASE_URL": floor_url}, floor_port)
            _wait_up(api_port)
            _wait_up(floor_port)
            api_pid = read_pidfile(pidfile_path(state, stack.API))
            assert api_pid is not None
            rows = asyncio.run(_throughput(api_port, floor_port, key, args.seconds, args.rounds))
            rss = _rss_mib(api_pid)
            stop_pidfile(pidfile_path(state, stack.API), timeout=30)
            stop_pidfile(pidfile_path(state, FLOOR), timeout=30)

        stack.start_api(state, env, api_port)
        ready = stack.start_worker(state, env)
        stack.wait_healthy(state, api_url, [ready], timeout=300)
        overheads = _queue_overhead(api_url, key, args.overhead_requests)
        service_s = _service_run(api_url, key, args.worker_jobs)
        stop_pidfile(pidfile_path(state, stack.WORKER), timeout=30)  # leave the cores
        plain_s = _plain_loop(model, args.worker_jobs)

        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        print(
            f"# {platform.machine()}, {os.cpu_count()} cores, commit {commit}; "
            f"{CLIENTS} clients, {args.rounds} × {args.seconds:.0f} s per side"
        )
        print("| what | this service | floor | ratio |\n|---|---|---|---|")
        for row in rows:
            ratio = row.service.rps / row.floor.rps
            p99 = row.service.pct(0.99) / row.floor.pct(0.99)
            print(
                f"| {row.what} | {_fmt(row.service)} | {_fmt(row.floor)} | "
                f"{ratio:.2f}× rps, {p99:.2f}× p99 |"
            )
        per_image = service_s / args.worker_jobs * 1000
        plain = plain_s / args.worker_jobs * 1000
        print(
            f"| {args.worker_jobs} jobs (128², Euler a, 20 × 0.5) HTTP → worker → S3 "
            f"(MAX_BATCH_IMAGES {args.max_batch_images}) vs a plain diffusers loop | "
            f"{per_image:.0f} ms/image | {plain:.0f} ms/image | {plain / per_image:.2f}× |"
        )
        print(
            f"| v1 round trip minus inference_time, 1-step 64², serial "
            f"({len(overheads)}) | p50 {statistics.median(overheads):.1f} ms, "
            f"p99 {_pct(overheads, 0.99):.1f} ms | – | – |"
        )
        if rows:
            print(f"| API process RSS after the throughput load | {rss} MB | – | – |")
    finally:
        stack.down(state)
        stop_pidfile(pidfile_path(state, FLOOR), timeout=10)
        purge_state(state)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


if __name__ == "__main__":
    main()
