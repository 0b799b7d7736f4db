"""Deployment files: the compose stack validates against the Compose specification and
describes the same services as the local stack; the worker fails fast without a model."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from common.settings import Settings
from tests.support.live import ROOT


def test_compose_file_is_valid() -> None:
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(ROOT / "docker-compose.yml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_describes_the_stack() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "s3", "migrate", "api", "background", "worker"} <= set(services)
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert "gpu" in gpu["capabilities"]
    assert "alembic upgrade head" in " ".join(services["migrate"]["command"])


def test_compose_has_no_default_secrets_and_publishes_only_the_api_widely() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for name in ("POSTGRES_PASSWORD", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"):
        assert "${" + name + ":?" in text, name  # required: compose stops without it
        assert not re.search(r"\$\{" + name + r":?-", text), name  # no default
    assert "${ADMIN_TOKEN:-}" in text  # empty by default: the admin API is off
    services = yaml.safe_load(text)["services"]
    assert "ports" not in services["postgres"] and "ports" not in services["redis"]
    assert services["s3"]["ports"] == ["${S3_PUBLISH_ADDRESS:-127.0.0.1}:8333:8333"]
    for name, service in services.items():  # the others on an address of their own
        if name != "api":
            for port in service.get("ports", []):
                assert re.match(r"(127\.0\.0\.1|\$\{\w+_PUBLISH_ADDRESS:-127\.0\.0\.1\}):", port)
    example = (ROOT / ".env.example").read_text()
    secrets = ("POSTGRES_PASSWORD", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY", "ADMIN_TOKEN")
    for name in (*secrets, "GRAFANA_ADMIN_PASSWORD"):
        assert f"\n{name}=\n" in example, name  # listed, and left for the operator to fill


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return compose


def _one_shot(services: dict[str, Any]) -> set[str]:
    """Services another one waits to see exit 0 (the migration): no healthcheck there."""
    return {
        name
        for service in services.values()
        for name, dependency in (service.get("depends_on") or {}).items()
        if dependency.get("condition") == "service_completed_successfully"
    }


def test_compose_services_have_healthchecks_except_one_shot_ones() -> None:
    services = _compose()["services"]
    assert _one_shot(services) == {"migrate"}
    for name, service in services.items():
        if name not in _one_shot(services):
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_compose_probes_the_ready_endpoints() -> None:
    """The API on its port, the workers on METRICS_PORT, each on /health/ready, with a
    probe timeout well above the dependency checks' (HEALTH_CHECK_TIMEOUT_SECONDS)."""
    services = _compose()["services"]
    check_timeout = Settings.model_fields["health_check_timeout_seconds"].default
    ports = {"api": "8000", "background": "9100", "worker": "9100"}
    for name, port in ports.items():
        service = services[name]
        probe = " ".join(service["healthcheck"]["test"])
        assert "import urllib.request" in probe, name
        assert f"http://127.0.0.1:{port}/health/ready" in probe, name
        assert _seconds(service["healthcheck"]["timeout"]) > 2 * check_timeout, name
        if name != "api":
            assert service["environment"]["METRICS_PORT"] == port, name
    assert services["background"]["command"] == ["python", "-m", "background"]
    assert services["background"]["image"] == services["api"]["image"]
    assert services["background"]["depends_on"]["migrate"] == {
        "condition": "service_completed_successfully"
    }


def test_compose_services_log_json() -> None:
    services = _compose()["services"]
    for name in ("migrate", "api", "background", "worker"):
        assert services[name]["environment"]["LOG_FORMAT"] == "json", name


def test_compose_worker_reserves_a_gpu() -> None:
    devices = _compose()["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def _seconds(duration: str) -> float:
    """A compose duration ("6m", "1m30s", "10s") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


def test_compose_stop_grace_periods_cover_the_drains() -> None:
    """SIGKILL must not come before the API's graceful shutdown (330 s, infra/api.Dockerfile)
    nor before a GPU worker's job ends (docs/reliability.md)."""
    services = _compose()["services"]
    dockerfile = (ROOT / "infra" / "api.Dockerfile").read_text()
    graceful = re.search(r'"--timeout-graceful-shutdown", "(\d+)"', dockerfile)
    assert graceful, "the API image sets no graceful shutdown"
    assert _seconds(services["api"]["stop_grace_period"]) > int(graceful[1])
    assert _seconds(services["worker"]["stop_grace_period"]) >= 60


def test_compose_observability_profile_is_optional() -> None:
    """Prometheus and Grafana start only with `--profile observability`, nothing started
    by default needs them, and they get the files of infra/observability/."""
    services = _compose()["services"]
    profiled = {name for name, service in services.items() if service.get("profiles")}
    assert profiled == {"prometheus", "grafana"}
    for name in profiled:
        assert services[name]["profiles"] == ["observability"]
    for name, service in services.items():
        if name not in profiled:
            assert not set(service.get("depends_on") or {}) & profiled, name
    volumes = services["prometheus"]["volumes"] + services["grafana"]["volumes"]
    for path in ("prometheus", "grafana/provisioning", "grafana/ssd-img2img.json"):
        source = f"./infra/observability/{path}"
        assert (ROOT / source).exists(), source
        assert any(volume.startswith(source + ":") for volume in volumes), source


def test_compose_gives_no_secret_a_default() -> None:
    """`${VAR:-value}` / `${VAR-value}` never supplies a password, secret, token or key:
    those are required (`:?`) or default to empty (= the feature is off)."""
    text = (ROOT / "docker-compose.yml").read_text()
    defaults = re.findall(r"\$\{(\w+):?-([^}]*)\}", text)
    assert defaults  # the pattern still matches this file's syntax
    for name, default in defaults:
        if re.search(r"PASSWORD|SECRET|TOKEN|KEY", name):
            assert default == "", f"{name} has a default"


def test_compose_grafana_refuses_to_start_without_a_password() -> None:
    """Its password defaults to empty (the profile is optional, and compose interpolates
    every service), and an empty one would make Grafana use "admin": the entrypoint
    refuses both before Grafana starts."""
    grafana = _compose()["services"]["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-}"
    shell, flag, script = grafana["entrypoint"]
    assert (shell, flag) == ("sh", "-c")
    script = script.replace("$$", "$")  # compose's escape of a literal $
    for password, code in (("", 1), ("admin", 1), ("a-long-random-password", 127)):
        env = {"PATH": os.environ["PATH"], "GF_SECURITY_ADMIN_PASSWORD": password}
        result = subprocess.run(
            ["sh", "-c", script], env=env, capture_output=True, text=True, check=False
        )
        assert result.returncode == code, (password, result.stderr)  # 127: no /run.sh here
        assert ("GRAFANA_ADMIN_PASSWORD" in result.stderr) == (code == 1), result.stderr


def test_env_example_lists_every_compose_variable() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{(\w+)", text))
    assert {"POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD"} <= used
    listed = set(re.findall(r"^(\w+)=", (ROOT / ".env.example").read_text(), re.MULTILINE))
    assert used <= listed, sorted(used - listed)


def _pinned(name: str) -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.startswith(f"{name}=="):
            return line.split("==", 1)[1]
    raise AssertionError(f"{name} is not pinned in constraints.txt")


def test_torch_is_one_version_everywhere() -> None:
    """constraints.txt pins torch; the CPU install (Makefile, this venv) and the GPU worker
    image both take that version, and it meets what pyproject asks of it."""
    pinned = _pinned("torch")
    makefile = (ROOT / "Makefile").read_text()
    assert "TORCH_SPEC ?= $(shell grep '^torch==' constraints.txt)" in makefile
    installed = importlib.metadata.version("torch")
    assert Version(installed).public == pinned, (installed, pinned)  # e.g. 2.13.0+cpu
    dockerfile = (ROOT / "infra" / "worker.Dockerfile").read_text()
    torch_install = next(line for line in dockerfile.splitlines() if "grep '^torch=='" in line)
    assert '--index-url "${TORCH_INDEX_URL}"' in torch_install
    assert re.search(r"ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cu\d+", dockerfile)
    assert "pip install -c constraints.txt '.[worker]'" in dockerfile
    assert not re.search(r"^FROM .*pytorch", dockerfile, re.MULTILINE)  # no second torch
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for requirement in map(Requirement, project["project"]["optional-dependencies"]["worker"]):
        if requirement.name in {"torch", "diffusers", "transformers"}:
            version = _pinned(requirement.name)
            assert requirement.specifier.contains(version), (requirement, version)
    floor = next(
        Requirement(r)
        for r in project["project"]["optional-dependencies"]["worker"]
        if r.startswith("torch")
    )
    assert not floor.specifier.contains("2.5.1")  # below what transformers 5 runs with


# The worker's own entry point, as `python -m worker` runs it, saying whether torch got
# imported before it stopped.
WORKER_PROBE = (
    "import sys\n"
    "from worker.__main__ import main\n"
    "code = main([])\n"
    "print('torch imported' if 'torch' in sys.modules else 'no torch')\n"
    "sys.exit(code)\n"
)


@pytest.mark.e2e  # starts the worker process
@pytest.mark.parametrize("model_id", ["{tmp}/no-such-model", "segmind/SSD-1B"])
def test_worker_without_model_stops_with_instructions(tmp_path: Path, model_id: str) -> None:
    """It stops with what to set, and before importing torch and diffusers
    (worker/model_source.py): the 15-20 s of CPU they cost are not spent on a worker
    that stops. HF_HUB_OFFLINE and an empty cache: the hub id cannot be loaded, and the
    test never connects anywhere."""
    env = {
        **os.environ,
        "MODEL_ID": model_id.format(tmp=tmp_path),
        "MODEL_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
    }
    result = subprocess.run(
        [sys.executable, "-c", WORKER_PROBE],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "MODEL_ID" in result.stderr
    assert "make-tiny" in result.stderr
    assert result.stdout.strip() == "no torch"
