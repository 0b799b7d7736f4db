"""The embedded local stack: real PostgreSQL, Redis and SeaweedFS from pip packages,
plus the API and one worker on the tiny model, all on loopback, without Docker.

`up` writes `<state>/env` (sourceable) and returns once the API answers and the worker
consumes; `down` stops everything by PID, also from another process.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from devstack.ports import port_is_free
from devstack.process import (
    log_path,
    log_tail,
    pidfile_path,
    pidfile_process_alive,
    start_process,
    stop_pidfile,
)
from devstack.stack import Services, start_services, stop_services

ROOT = Path(__file__).resolve().parent.parent
API = "api"
WORKER = "worker"
BACKGROUND = "background"
READY_FILE = "worker.ready"


class StackError(RuntimeError):
    pass


def service_env(services: Services, api_url: str, model_dir: Path) -> dict[str, str]:
    """Settings of the API and worker, as environment variables (see common.settings)."""
    return {
        "DATABASE_URL": services.database_url,
        "REDIS_URL": services.redis_url,
        "S3_ENDPOINT_URL": services.s3_endpoint_url,
        "S3_BUCKET": services.s3_bucket,
        "S3_REGION": "us-east-1",
        "S3_ACCESS_KEY_ID": services.s3_access_key,
        "S3_SECRET_ACCESS_KEY": services.s3_secret_key,
        "API_URL": api_url,
        "PUBLIC_BASE_URL": api_url,
        "MODEL_ID": str(model_dir.resolve()),
        "MODEL_DEVICE": "cpu",
        # The local stack runs a local model folder; never reach out to a model hub.
        "HF_HUB_OFFLINE": "1",
        # A fresh operator token per stack, for the /admin API (`.stack/env` holds it).
        "ADMIN_TOKEN": secrets.token_urlsafe(32),
        # Everything runs on loopback here, image URLs included; production keeps it off.
        "ALLOW_LOOPBACK_URLS": "true",
        # A terminal's log, not a collector's (production's default is JSON).
        "LOG_FORMAT": "plain",
        # Several processes share this host: none takes METRICS_PORT's default (9100);
        # each start_* below may give its process a port of its own.
        "METRICS_PORT": "0",
    }


def write_env_file(path: Path, env: Mapping[str, str]) -> None:
    lines = [f"export {key}={shlex.quote(value)}" for key, value in env.items()]
    path.write_text("# Written by `ssd-img2img stack up`; source it.\n" + "\n".join(lines) + "\n")
    path.chmod(0o600)  # holds the S3 secret and the admin token


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env


def _run(argv: list[str], env: Mapping[str, str], what: str) -> None:
    result = subprocess.run(
        argv, env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise StackError(f"{what} failed:\n{result.stdout}{result.stderr}")


def migrate(env: Mapping[str, str]) -> None:
    _run([sys.executable, "-m", "alembic", "upgrade", "heads"], env, "migrations")


def ensure_tiny_model(model_dir: Path) -> None:
    if (model_dir / "model_index.json").exists():
        return
    _run(
        [sys.executable, "-m", "cli.main", "model", "make-tiny", str(model_dir)],
        {},
        "building the tiny model",
    )


def _process_env(env: Mapping[str, str], metrics_port: int | None) -> dict[str, str]:
    ports = {} if metrics_port is None else {"METRICS_PORT": str(metrics_port)}
    return {**os.environ, **env, **ports}


def start_api(
    state_dir: Path,
    env: Mapping[str, str],
    port: int,
    name: str = API,
    metrics_port: int | None = None,
) -> None:
    argv = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--no-access-log"]
    start_process(name, argv, state_dir, env=_process_env(env, metrics_port), cwd=ROOT)


def _start_consumer(
    state_dir: Path, env: Mapping[str, str], name: str, module: str, metrics_port: int | None
) -> Path:
    """Start `python -m MODULE --ready-file F`; F appears once it consumes its queue."""
    ready = state_dir / f"{name}.ready"
    ready.unlink(missing_ok=True)
    argv = [sys.executable, "-m", module, "--ready-file", str(ready)]
    start_process(name, argv, state_dir, env=_process_env(env, metrics_port), cwd=ROOT)
    return ready


def start_worker(
    state_dir: Path, env: Mapping[str, str], name: str = WORKER, metrics_port: int | None = None
) -> Path:
    """A GPU worker (here on the CPU, with the tiny model)."""
    return _start_consumer(state_dir, env, name, "worker", metrics_port)


def start_background(
    state_dir: Path,
    env: Mapping[str, str],
    name: str = BACKGROUND,
    metrics_port: int | None = None,
) -> Path:
    """The CPU worker: webhook deliveries and periodic maintenance."""
    return _start_consumer(state_dir, env, name, "background", metrics_port)


def wait_healthy(
    state_dir: Path, api_url: str, ready_files: list[Path], timeout: float = 120
) -> None:
    """Until the API answers /health and each worker has signalled it consumes."""
    deadline = time.monotonic() + timeout
    names = [API] + [f.name.removesuffix(".ready") for f in ready_files]
    while True:
        for name in names:
            if pidfile_process_alive(pidfile_path(state_dir, name)) is None:
                raise StackError(f"{name} exited:\n{log_tail(log_path(state_dir, name))}")
        api_ok = False
        with contextlib.suppress(httpx.HTTPError):
            api_ok = httpx.get(f"{api_url}/health", timeout=2).status_code == 200
        if api_ok and all(f.exists() for f in ready_files):
            return
        if time.monotonic() > deadline:
            raise StackError(
                f"the stack was not healthy within {timeout:.0f}s; logs in {state_dir}/logs"
            )
        time.sleep(0.2)


# worker.tiny_model.MARKER_FILE (not imported: that would load torch for a file name).
TINY_MODEL_MARKER = "TINY_MODEL.txt"


def model_env(model_id: str | None) -> dict[str, str]:
    """The settings for a real model instead of the tiny one: MODEL_ID as given (a hub
    id or a folder), the device chosen automatically (CUDA when there is one), and the
    hub reachable unless the caller's own environment sets HF_HUB_OFFLINE (then a model
    not in the cache fails at once, with the worker's usual message)."""
    if not model_id:
        return {}
    offline = os.environ.get("HF_HUB_OFFLINE", "0")
    return {"MODEL_ID": model_id, "MODEL_DEVICE": "auto", "HF_HUB_OFFLINE": offline}


def is_tiny_model(env: Mapping[str, str]) -> bool:
    """Whether the stack runs the tiny random-weight test model (its images are noise)."""
    return (Path(env["MODEL_ID"]) / TINY_MODEL_MARKER).is_file()


def up(state_dir: Path, api_port: int = 8000, model_id: str | None = None) -> dict[str, str]:
    """Start everything; the tiny model unless `model_id` names a real one (README)."""
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    env_file = state_dir / "env"
    if env_file.exists() and pidfile_process_alive(pidfile_path(state_dir, API)):
        return read_env_file(env_file)  # already up
    if not port_is_free(api_port):
        raise StackError(f"port {api_port} is in use: stop what listens there or pass --api-port")
    try:
        services = start_services(state_dir)
        api_url = f"http://127.0.0.1:{api_port}"
        env = service_env(services, api_url, state_dir / "models" / "tiny")
        env.update(model_env(model_id))
        write_env_file(env_file, env)
        migrate(env)
        if not model_id:
            ensure_tiny_model(Path(env["MODEL_ID"]))
        start_api(state_dir, env, api_port)
        ready = [start_worker(state_dir, env), start_background(state_dir, env)]
        # A real model may first download (gigabytes) into the Hugging Face cache.
        wait_healthy(state_dir, api_url, ready, timeout=3600 if model_id else 120)
    except BaseException:
        down(state_dir)
        raise
    return env


def down(state_dir: Path) -> None:
    state_dir = state_dir.resolve()
    pids = state_dir / "pids"
    # Workers and the API first, so nothing talks to services that are going away.
    for pidfile in sorted(pids.glob("*.pid")) if pids.exists() else []:
        if pidfile.stem in (API, BACKGROUND) or pidfile.stem.startswith(WORKER):
            stop_pidfile(pidfile, timeout=30)
    stop_services(state_dir)
