"""The operator CLI (`ssd-img2img accounts ...`, `keys ...`) against the live stack's
database, checked through the HTTP API it governs."""

from __future__ import annotations

import json
from typing import Any

from tests.support.admin import MISSING, me
from tests.support.live import CliResult, Stack


def cli_json(live_stack: Stack, group: str, command: str, *args: str) -> Any:
    # --json right after the command: ARGS may end with `-- -5` (a negative amount).
    return json.loads(live_stack.cli(group, command, "--json", *args))


def cli_fails(live_stack: Stack, *args: str) -> CliResult:
    result = live_stack.run_cli(*args)
    assert result.exit_code != 0, result.stdout
    return result


def test_the_installed_command_runs_as_a_process_and_refuses_with_status_1(
    live_stack: Stack,
) -> None:
    """The other tests run the commands in-process (Stack.run_cli); this one the real
    process, as an operator does: its output, and a refusal's exit status and message."""
    account_id, _ = live_stack.create_account(credits=7, name="cli-process")
    shown = live_stack.cli_process("accounts", "show", account_id, "--json")
    assert shown.exit_code == 0, shown.stderr
    assert json.loads(shown.stdout)["balance"] == 7
    refused = live_stack.cli_process("accounts", "show", MISSING)
    assert refused.exit_code == 1
    assert "not found" in refused.stderr


def test_show_list_and_credits(live_stack: Stack) -> None:
    account_id, key = live_stack.create_account(credits=40, name="cli-shop")

    shown = cli_json(live_stack, "accounts", "show", account_id)
    assert shown["id"] == account_id
    assert shown["name"] == "cli-shop"
    assert shown["balance"] == 40
    assert shown["active_keys"] == 1
    assert [(e["amount"], e["reason"]) for e in shown["recent_ledger"]] == [(40, "grant")]

    listed = cli_json(live_stack, "accounts", "list", "--limit", "200")
    assert account_id in {a["id"] for a in listed["accounts"]}

    added = cli_json(live_stack, "accounts", "add-credits", account_id, "15")
    assert added["account"]["balance"] == 55
    assert added["entry"]["reason"] == "grant"
    adjusted = cli_json(
        live_stack, "accounts", "add-credits", "--adjust", "--note", "refund a typo",
        account_id, "--", "-5",
    )  # fmt: skip
    assert adjusted["account"]["balance"] == 50
    assert adjusted["entry"] | {"id": 0, "created_at": ""} == {
        "id": 0,
        "amount": -5,
        "reason": "adjustment",
        "job_id": None,
        "note": "refund a typo",
        "created_at": "",
    }
    assert me(live_stack, key).json()["balance"] == 50

    # Refusals are CLI errors naming the problem, and change nothing.
    assert (
        "grant must be positive"
        in cli_fails(live_stack, "accounts", "add-credits", account_id, "0").stderr
    )
    assert (
        "note"
        in cli_fails(live_stack, "accounts", "add-credits", "--adjust", account_id, "3").stderr
    )
    assert (
        "below zero"
        in cli_fails(
            live_stack,
            "accounts",
            "add-credits",
            "--adjust",
            "--note",
            "x",
            account_id,
            "--",
            "-51",
        ).stderr
    )
    assert "not found" in cli_fails(live_stack, "accounts", "show", MISSING).stderr
    assert "UUID" in cli_fails(live_stack, "accounts", "show", "nope").stderr
    assert me(live_stack, key).json()["balance"] == 50


def test_suspend_reactivate_and_limits(live_stack: Stack) -> None:
    account_id, key = live_stack.create_account(credits=10)

    assert cli_json(live_stack, "accounts", "suspend", account_id)["status"] == "suspended"
    response = me(live_stack, key)
    assert response.status_code == 403
    assert "suspended" in response.json()["error"]
    assert cli_json(live_stack, "accounts", "reactivate", account_id)["status"] == "active"
    assert me(live_stack, key).status_code == 200

    set_limits = ("accounts", "set-limits", account_id)
    limited = cli_json(
        live_stack,
        *set_limits,
        *("--rate-limit", "7", "--max-in-flight", "2", "--weight", "3"),
        *("--max-url-fetches", "1", "--max-streams", "6"),
    )
    assert limited["limits"] == {
        "rate_limit_per_minute": 7,
        "max_jobs_in_flight": 2,
        "scheduling_weight": 3,
        "max_url_fetches": 1,
        "max_streams": 6,
    }
    assert me(live_stack, key).json()["limits"] == limited["limits"]

    reset = cli_json(
        live_stack,
        *set_limits,
        *("--rate-limit", "default", "--weight", "default", "--max-streams", "default"),
    )
    assert reset["limit_overrides"] == {
        "rate_limit_per_minute": None,
        "max_jobs_in_flight": 2,
        "scheduling_weight": None,
        "max_url_fetches": 1,
        "max_streams": None,
    }

    assert "--rate-limit" in cli_fails(live_stack, *set_limits).stderr
    assert "not positive" in cli_fails(live_stack, *set_limits, "--max-in-flight", "0").stderr


def test_key_lifecycle(live_stack: Stack) -> None:
    account_id, first = live_stack.create_account()

    created = cli_json(live_stack, "keys", "create", account_id, "--name", "deploy")
    assert created["name"] == "deploy"
    second = created["api_key"]
    assert me(live_stack, second).status_code == 200

    keys = cli_json(live_stack, "keys", "list", account_id)["keys"]
    assert [k["name"] for k in keys] == ["default", "deploy"]
    assert all("api_key" not in k and "key_hash" not in k for k in keys)
    assert second not in json.dumps(keys) and first not in json.dumps(keys)

    revoked = cli_json(live_stack, "keys", "revoke", created["id"])
    assert revoked["revoked_at"] is not None
    response = me(live_stack, second)
    assert response.status_code == 401
    assert "revoked" in response.json()["error"]
    assert me(live_stack, first).status_code == 200

    assert "not found" in cli_fails(live_stack, "keys", "revoke", MISSING).stderr
    assert "not found" in cli_fails(live_stack, "keys", "create", MISSING).stderr


def test_text_output_never_shows_key_hashes(live_stack: Stack) -> None:
    account_id, key = live_stack.create_account()
    text = live_stack.cli("keys", "list", account_id)
    assert key[:11] in text  # the prefix tells keys apart
    assert key not in text
    assert account_id in live_stack.cli("accounts", "show", account_id)
