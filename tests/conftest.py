"""Session fixtures: real PostgreSQL, Redis and SeaweedFS on loopback, the real API
(uvicorn) and a real Celery worker process on the tiny model, started for the run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

# One torch thread in every process of the suite (this one, and the workers and tools
# it starts, which inherit it: worker/tuning.py torch_threads): the tiny model's kernels
# are microseconds long, and with several processes sharing two cores, a thread pool
# per process spins against the others (a tiny job then takes minutes, not seconds).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from cli import stack
from devstack.ports import free_port
from devstack.stack import purge_state, start_services
from tests.support.db import forget_settings, rolled_back_session
from tests.support.live import Stack


def _tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "tiny-model"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`ssd-img2img model make-tiny`, run in this process, once a test needs the model:
    this pytest process then imports diffusers (seconds of CPU) for the model's tests or
    a stack's worker, while the process `stack.ensure_tiny_model` starts would import
    it a second time. The unit and database tiers never need it (`make test-fast`)."""
    from click.testing import CliRunner

    from cli.main import main

    path = _tiny_model_path(tmp_path_factory)
    result = CliRunner().invoke(main, ["model", "make-tiny", str(path)])
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="session")
def services_env(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, dict[str, str]]]:
    """PostgreSQL, Redis and S3 running and migrated; the settings as environment."""
    state_dir = tmp_path_factory.mktemp("stack")
    try:
        services = start_services(state_dir, fast=True)
        # MODEL_ID names where tiny_model_dir builds the model: the live stack's worker
        # asks for it to be built; the database tier never loads it.
        api_url = f"http://127.0.0.1:{free_port()}"
        env = stack.service_env(services, api_url, _tiny_model_path(tmp_path_factory))
        # Tests poll job status at 10 Hz and hold many jobs at once; the limit tests set
        # low limits per account instead (tests/test_limits.py).
        env["DEFAULT_RATE_LIMIT_PER_MINUTE"] = "1000000"
        env["DEFAULT_MAX_JOBS_IN_FLIGHT"] = "1000000"
        # The fuzzer sends hundreds of wrong admin tokens from 127.0.0.1: no lockout here
        # (tests/test_admin.py checks it on an API of its own, from another address).
        env["ADMIN_AUTH_FAILURES_PER_MINUTE"] = "1000000"
        # Webhook retries in fractions of a second instead of a day (tests/test_webhooks.py):
        # five retries, a sweep twice a second, lost messages re-sent after 2 s.
        env["WEBHOOK_RETRY_SCHEDULE_SECONDS"] = "[0.2, 0.2, 0.2, 0.2, 0.2]"
        env["WEBHOOK_SWEEP_INTERVAL_SECONDS"] = "0.5"
        env["WEBHOOK_REDISPATCH_AFTER_SECONDS"] = "2"
        env["WEBHOOK_TIMEOUT_SECONDS"] = "5"
        # A failing endpoint pauses for seconds, not a minute (tests/test_webhook_fairness.py).
        env["WEBHOOK_PAUSE_SECONDS"] = "2"
        # A quiet event stream says `: keepalive` after 1 s instead of 15
        # (tests/test_progress_events.py).
        env["EVENTS_KEEPALIVE_SECONDS"] = "1"
        stack.migrate(env)
        # In-process code (direct database checks) reads the same settings, even where
        # something read them before (a fault stack's checks, in the same xdist worker).
        os.environ.update(env)
        forget_settings()
        yield state_dir, env
    finally:
        stack.down(state_dir)
        purge_state(state_dir)


@pytest.fixture
def db(services_env: tuple[Path, dict[str, str]]) -> Iterator[Session]:
    """The database tier: a session on the real PostgreSQL, in a transaction rolled back
    when the test ends (tests/support/db.py)."""
    with rolled_back_session() as session:
        yield session


@pytest.fixture(scope="session")
def live_stack(services_env: tuple[Path, dict[str, str]], tiny_model_dir: Path) -> Stack:
    """The API, one GPU worker and the CPU worker, as separate processes."""
    state_dir, env = services_env
    assert env["MODEL_ID"] == str(tiny_model_dir.resolve())
    port = int(env["API_URL"].rsplit(":", 1)[1])
    # Each process serves /metrics and its health on a port of its own
    # (tests/test_metrics.py).
    metrics_ports = {name: free_port() for name in ("api", "worker", "background")}
    stack.start_api(state_dir, env, port, metrics_port=metrics_ports["api"])
    ready = [
        stack.start_worker(state_dir, env, metrics_port=metrics_ports["worker"]),
        stack.start_background(state_dir, env, metrics_port=metrics_ports["background"]),
    ]
    stack.wait_healthy(state_dir, env["API_URL"], ready, timeout=180)
    metrics_urls = {name: f"http://127.0.0.1:{p}" for name, p in metrics_ports.items()}
    return Stack(state_dir=state_dir, env=env, ops_urls=metrics_urls)


# --------------------------------------------------------------------------- tiers

# Fixtures that start processes of the service (API, workers, a stack of their own):
# a test using any of them is end-to-end. docs/development.md "Tests".
E2E_FIXTURES = frozenset(
    {"live_stack", "faults", "isolated", "stack", "patient_api", "impatient_api"}
)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's, which reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each test gets its tier from what it uses: `e2e` (processes of the service, or
    marked so), else `db` (real PostgreSQL, Redis, S3), else `unit` (no services).
    `make test-fast` runs the first two tiers: `-m "not e2e"`."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if item.get_closest_marker("e2e") or fixtures & E2E_FIXTURES:
            item.add_marker(pytest.mark.e2e)
        elif "services_env" in fixtures:
            item.add_marker(pytest.mark.db)
        else:
            item.add_marker(pytest.mark.unit)
        # `make test` runs two pytest processes (pytest-xdist, --dist loadgroup): the
        # tests on the live stack all go to one of them, which alone starts that stack;
        # any other module runs whole in one process, so that its module-scoped stacks
        # (tests/test_faults.py) start once.
        if config.pluginmanager.hasplugin("xdist"):
            group = "live_stack" if "live_stack" in fixtures else item.nodeid.split("::")[0]
            item.add_marker(pytest.mark.xdist_group(group))
