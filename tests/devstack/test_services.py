"""The embedded stack really runs: PostgreSQL, Redis and SeaweedFS S3 on loopback ports.

One module-scoped stack serves the read-only checks; the stop/restart test runs its own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
from botocore.exceptions import ClientError

from devstack import Services, purge_state, start_services, stop_services
from devstack.ports import port_is_free
from devstack.process import is_running, pidfile_path, proc_starttime
from devstack.s3 import s3_client

# Each test starts services of its own.
pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]


def _libpq_url(services: Services) -> str:
    # SQLAlchemy URL -> plain libpq URL for psycopg.
    return services.database_url.replace("postgresql+psycopg://", "postgresql://", 1)


def _client(services: Services, secret_key: str | None = None) -> Any:
    return s3_client(
        services.s3_endpoint_url,
        services.s3_access_key,
        secret_key if secret_key is not None else services.s3_secret_key,
        services.s3_region,
    )


def _group_gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    # Under /tmp/pytest-of-<user> (0700): as root this exercises the external data dir path.
    state_dir = tmp_path_factory.mktemp("stack")
    services = start_services(state_dir, fast=True)
    try:
        yield services
    finally:
        purge_state(state_dir)


@pytest.fixture
def traversable_state_dir(tmp_path: Path) -> Iterator[Path]:
    """A state dir every user can traverse (as root: the data dir stays inside it)."""
    if os.geteuid() != 0:
        yield tmp_path / "state"
        return
    base = Path(tempfile.mkdtemp(prefix="ssd-devstack-test-"))
    base.chmod(0o755)
    try:
        yield base / "state"
    finally:
        purge_state(base / "state")
        shutil.rmtree(base, ignore_errors=True)


def test_services_answer(stack: Services) -> None:
    assert stack.database_url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
    assert stack.database_url.endswith("/ssd_img2img")
    with psycopg.connect(_libpq_url(stack), connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SELECT current_database()").fetchone() == ("ssd_img2img",)
        # Loopback only.
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
    client = redis.Redis.from_url(stack.redis_url, socket_timeout=5)
    try:
        assert client.ping() is True
        assert client.config_get("bind")["bind"] == "127.0.0.1"
    finally:
        client.close()
    assert stack.s3_endpoint_url.startswith("http://127.0.0.1:")
    if os.geteuid() == 0:
        # Root runs postgres as an unprivileged user who cannot enter /tmp/pytest-of-root
        # (0700): the data dir then lives outside the state dir, linked from it.
        state_dir = stack.postgres.log_path.parents[1]
        assert (state_dir / "postgres" / "data").is_symlink()


def test_start_is_idempotent(stack: Services) -> None:
    state_dir = stack.postgres.log_path.parents[1]
    again = start_services(state_dir, fast=True)
    assert again == stack


def test_s3_put_get_and_presigned_url(stack: Services) -> None:
    s3 = _client(stack)
    key = f"test/{uuid.uuid4().hex}.bin"
    body = os.urandom(4096)
    s3.put_object(Bucket=stack.s3_bucket, Key=key, Body=body)
    got = s3.get_object(Bucket=stack.s3_bucket, Key=key)
    assert got["Body"].read() == body
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": stack.s3_bucket, "Key": key}, ExpiresIn=60
    )
    with httpx.Client(trust_env=False, timeout=10) as http:
        response = http.get(url)
        assert response.status_code == 200
        assert response.content == body
        # Without the signature the object is not readable.
        assert http.get(f"{stack.s3_endpoint_url}/{stack.s3_bucket}/{key}").status_code == 403


def test_s3_checks_signatures(stack: Services) -> None:
    bad = _client(stack, secret_key="not-" + stack.s3_secret_key)
    with pytest.raises(ClientError) as excinfo:
        bad.list_objects_v2(Bucket=stack.s3_bucket)
    assert excinfo.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    with pytest.raises(ClientError):
        bad.put_object(Bucket=stack.s3_bucket, Key="nope", Body=b"x")


def test_stop_leaves_nothing_and_restart_keeps_data(traversable_state_dir: Path) -> None:
    state_dir = traversable_state_dir
    first = start_services(state_dir, fast=True)
    # A traversable state dir keeps the data dir inside it.
    assert not (state_dir / "postgres" / "data").is_symlink()
    with psycopg.connect(_libpq_url(first), autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO kept VALUES (1, 'survives restart')")
    _client(first).put_object(Bucket=first.s3_bucket, Key="kept.txt", Body=b"kept")

    stopped = stop_services(state_dir)
    assert sorted(stopped) == ["postgres", "redis", "s3"]
    for service in (first.postgres, first.redis, first.s3):
        assert not is_running(service.pid), service
        assert _group_gone(service.pid), f"{service.name} left processes in its group"
        assert port_is_free(service.port), f"{service.name} port {service.port} still bound"
        assert not pidfile_path(state_dir, service.name).exists()
    assert stop_services(state_dir) == []  # idempotent

    second = start_services(state_dir, fast=True)
    assert (second.s3_access_key, second.s3_secret_key) == (
        first.s3_access_key,
        first.s3_secret_key,
    )
    with psycopg.connect(_libpq_url(second)) as conn:
        assert conn.execute("SELECT note FROM kept").fetchall() == [("survives restart",)]
    got = _client(second).get_object(Bucket=second.s3_bucket, Key="kept.txt")
    assert got["Body"].read() == b"kept"

    # `make down` runs in a fresh process that knows only the state dir.
    code = (
        "import sys; from pathlib import Path; from devstack import stop_services; "
        "print(stop_services(Path(sys.argv[1])))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(state_dir)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "postgres" in result.stdout
    for service in (second.postgres, second.redis, second.s3):
        assert not is_running(service.pid), service
        assert _group_gone(service.pid), service


def test_stale_pidfiles_are_cleaned_not_killed(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    (pids / "garbage.pid").write_text("not a pid\n")
    (pids / "empty.pid").write_text("")
    # A PID that was reused by an unrelated process: the sidecar's start time differs.
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        (pids / "reused.pid").write_text(f"{bystander.pid}\n")
        starttime = proc_starttime(bystander.pid)
        meta = {"pid": bystander.pid, "starttime": (starttime or 0) + 12345, "argv": ["x"]}
        (pids / "reused.json").write_text(json.dumps(meta))
        assert stop_services(tmp_path) == []
        assert bystander.poll() is None, "an unrelated process was signalled"
        assert list(pids.iterdir()) == []
    finally:
        bystander.send_signal(signal.SIGKILL)
        bystander.wait()
