"""The record of one started server, shared by the per-service launchers and stack.py.

Lives in its own module so postgres/redis/s3 can return it without importing stack.py
(which imports them).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from devstack.ports import claim_port, free_port, port_is_free
from devstack.process import pidfile_path, pidfile_process_alive

RUN_DIR = "run"


@dataclass(frozen=True)
class Service:
    name: str
    pid: int
    port: int
    url: str
    log_path: Path


def _record_path(state_dir: Path, name: str) -> Path:
    return state_dir / RUN_DIR / f"{name}.json"


def save_record(state_dir: Path, service: Service) -> None:
    path = _record_path(state_dir, service.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = asdict(service)
    data["log_path"] = str(service.log_path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def load_record(state_dir: Path, name: str) -> Service | None:
    """Last recorded Service for `name` (it may no longer be running)."""
    try:
        data = json.loads(_record_path(state_dir, name).read_text())
        return Service(
            name=str(data["name"]),
            pid=int(data["pid"]),
            port=int(data["port"]),
            url=str(data["url"]),
            log_path=Path(data["log_path"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def running_service(state_dir: Path, name: str) -> Service | None:
    """The recorded Service when its process (per the pidfile) is still alive.

    Makes start_* idempotent: a second `make up` returns the live server instead of
    starting a second one on the same data directory.
    """
    record = load_record(state_dir, name)
    if record is None:
        return None
    pid = pidfile_process_alive(pidfile_path(state_dir, name))
    if pid is None or pid != record.pid:
        return None
    return record


def choose_port(state_dir: Path, name: str, port: int | None) -> int:
    """The requested port, else last run's port when still free, else a fresh free port.

    Reusing the previous port keeps URLs stable across `make down` / `make up`.
    """
    if port is not None:
        if not port_is_free(port):
            raise RuntimeError(f"{name}: requested port {port} is already in use")
        return port
    record = load_record(state_dir, name)
    if record is not None and claim_port(record.port):
        return record.port
    return free_port()


def check_requested_port(service: Service, port: int | None) -> Service:
    if port is not None and port != service.port:
        raise RuntimeError(
            f"{service.name} already runs on port {service.port} (pid {service.pid}); "
            f"port {port} was requested: stop the stack first"
        )
    return service
