"""`ssd-img2img client ...`: a tenant's requests, account and cancels over HTTP.

Every command prints a short human summary, or the service's own JSON with `--json`
(for scripts). A refusal of the service exits 1 with its `error` message; a job that
ends FAILED or CANCELLED makes `wait` exit 1 too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click

from cli.client import run as run_command
from cli.client.api import Api, api_of, emit, json_option
from cli.client.config import ClientConfig, save
from common.models import TERMINAL_STATUSES, JobStatus


@click.group("client")
@click.option("--api-url", help="The service (else SSD_API_URL, else the config file).")
@click.option("--api-key", help="Your API key (else SSD_API_KEY, else the config file).")
@click.pass_context
def client_group(ctx: click.Context, api_url: str | None, api_key: str | None) -> None:
    """Your requests and account on an ssd-img2img service, over HTTP."""
    ctx.obj = (api_url, api_key)


@client_group.command("login")
@click.option("--api-url", "url", required=True, help="The service's base URL.")
@click.option("--api-key", "key", prompt=True, hide_input=True, help="Your API key.")
def login(url: str, key: str) -> None:
    """Check the key against the service, then keep URL and key in the config file
    (mode 0600)."""
    config = ClientConfig(api_url=url.rstrip("/"), api_key=key)
    account = Api(config).call("GET", "/v1/account")
    path = save(config)
    click.echo(f"signed in as {account['name']} ({account['balance']} credits); saved in {path}")


@client_group.command("account")
@json_option
@click.pass_context
def account(ctx: click.Context, as_json: bool) -> None:
    """Balance, limits and the latest ledger entries."""
    data = api_of(ctx).call("GET", "/v1/account")
    lines = [
        f"account   {data['name']} ({data['status']})",
        f"balance   {data['balance']} credits",
        f"in flight {data['jobs_in_flight']} jobs",
        "limits    " + ", ".join(f"{k}={v}" for k, v in data["limits"].items()),
    ]
    for entry in data["recent_ledger"]:
        job = f" job {entry['job_id']}" if entry.get("job_id") else ""
        lines.append(f"  {entry['created_at']}  {entry['amount']:+d}  {entry['reason']}{job}")
    emit(data, as_json, "\n".join(lines))


@client_group.command("requests")
@click.option(
    "--status",
    type=click.Choice([status.value for status in JobStatus]),
    help="Only requests in this status.",
)
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--cursor", help="`next_cursor` of the previous page.")
@json_option
@click.pass_context
def list_requests(
    ctx: click.Context, status: str | None, limit: int, cursor: str | None, as_json: bool
) -> None:
    """Your requests, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status
    if cursor:
        params["cursor"] = cursor
    data = api_of(ctx).call("GET", "/v2/requests", params=params)
    lines = [
        f"{item['request_id']}  {item['status']:<10}  {item['created_at']}  {item['cost']} credits"
        for item in data["requests"]
    ]
    if data.get("next_cursor"):
        lines.append(f"more: --cursor {data['next_cursor']}")
    emit(data, as_json, "\n".join(lines) or "no requests")


def _status_line(data: dict[str, Any]) -> str:
    line = f"{data['request_id']}  {data['status']}"
    if data.get("queue_position") is not None:
        line += f"  (position {data['queue_position']} in the queue)"
    if data.get("progress") is not None and data["status"] == "PROCESSING":
        line += f"  {data['progress']:.0%}"
    if data.get("error"):
        line += f"\n  {data['error']}"
    return line


def _request_command(name: str) -> Callable[[Callable[..., None]], click.Command]:
    """A `client NAME REQUEST_ID [--json]` command."""

    def decorate(function: Callable[..., None]) -> click.Command:
        with_options = click.argument("request_id")(json_option(click.pass_context(function)))
        return client_group.command(name)(with_options)

    return decorate


def _show_status(ctx: click.Context, as_json: bool, method: str, path: str) -> None:
    data = api_of(ctx).call(method, path, ok=(200, 202, 422))
    emit(data, as_json, _status_line(data))


@_request_command("show")
def show(ctx: click.Context, request_id: str, as_json: bool) -> None:
    """One request's status (a FAILED one with its error)."""
    _show_status(ctx, as_json, "GET", f"/v2/requests/{request_id}/status")


@_request_command("cancel")
def cancel(ctx: click.Context, request_id: str, as_json: bool) -> None:
    """Cancel a QUEUED request (at once, refunded) or a PROCESSING one (within a step)."""
    _show_status(ctx, as_json, "POST", f"/v2/requests/{request_id}/cancel")


@client_group.command("wait")
@click.argument("request_id")
@click.option("--timeout", type=float, default=600, show_default=True, help="Seconds.")
@json_option
@click.pass_context
def wait(ctx: click.Context, request_id: str, timeout: float, as_json: bool) -> None:
    """Until the request ends; exits 1 unless it COMPLETED."""
    api = api_of(ctx)
    deadline = time.monotonic() + timeout
    while True:
        data = api.call("GET", f"/v2/requests/{request_id}/status", ok=(200, 422))
        if data["status"] in TERMINAL_STATUSES:
            break
        if time.monotonic() > deadline:
            raise click.ClickException(f"{request_id} still {data['status']} after {timeout:g}s")
        time.sleep(0.5)
    emit(data, as_json, _status_line(data))
    if data["status"] != "COMPLETED":
        raise SystemExit(1)


client_group.add_command(run_command.run)
