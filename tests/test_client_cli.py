"""`ssd-img2img client` (cli/client/) against the live stack, over HTTP only: login and
its config file, account, requests, show, wait and cancel, human and `--json` output,
and the service's refusals as exit status 1 with its message."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli.main import main
from common.models import JobStatus
from tests.support.helpers import image_b64, insert_job, job_body
from tests.support.live import Stack


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    for name in ("SSD_API_URL", "SSD_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    yield tmp_path


def client(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, ["client", *args], env=env, input=stdin)


def test_login_keeps_the_key_for_the_owner_only_and_later_commands_use_it(
    live_stack: Stack, config_home: Path
) -> None:
    _, key = live_stack.create_account(credits=300, name="client-login")
    done = client("login", "--api-url", live_stack.api_url, stdin=f"{key}\n")
    assert done.exit_code == 0, done.output
    assert "signed in as client-login (300 credits)" in done.output
    path = config_home / "ssd-img2img" / "client.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"api_url": live_stack.api_url, "api_key": key}

    account = client("account", "--json")  # no flags, no environment: the file
    assert account.exit_code == 0, account.output
    assert json.loads(account.stdout)["balance"] == 300

    os.chmod(path, 0o644)
    refused = client("account")
    assert refused.exit_code == 1 and "chmod 600" in refused.output


def test_a_wrong_key_is_refused_with_the_services_message(
    live_stack: Stack, config_home: Path
) -> None:
    result = client("--api-url", live_stack.api_url, "--api-key", "sk-wrong", "account")
    assert result.exit_code == 1
    assert "401:" in result.output
    nothing = client("account")  # no key anywhere
    assert nothing.exit_code == 1 and "no API key" in nothing.output


def test_a_request_seen_listed_waited_for_and_another_cancelled(
    live_stack: Stack, config_home: Path
) -> None:
    account_id, key = live_stack.create_account(credits=1000, name="client-requests")
    env = {"SSD_API_URL": live_stack.api_url, "SSD_API_KEY": key}
    with live_stack.client(key) as http:
        submitted = http.post("/v2/ssd-img2img", json=job_body(image=image_b64(64, 64)))
    assert submitted.status_code == 200, submitted.text
    request_id = submitted.json()["request_id"]

    waited = client("wait", request_id, "--timeout", "120", env=env)
    assert waited.exit_code == 0, waited.output
    assert f"{request_id}  COMPLETED" in waited.output
    shown = json.loads(client("show", request_id, "--json", env=env).stdout)
    assert (shown["status"], shown["progress"]) == ("COMPLETED", 1)
    listed = client("requests", "--status", "COMPLETED", env=env)
    assert request_id in listed.output and "20 credits" in listed.output

    held = str(insert_job(account_id, JobStatus.QUEUED))  # a pool no worker serves
    cancelled = client("cancel", held, "--json", env=env)
    assert cancelled.exit_code == 0, cancelled.output
    assert json.loads(cancelled.stdout)["status"] == "CANCELLED"
    ended = client("wait", held, env=env)
    assert ended.exit_code == 1 and f"{held}  CANCELLED" in ended.output
    missing = client("show", "00000000-0000-0000-0000-000000000000", env=env)
    assert missing.exit_code == 1 and "404:" in missing.output
