"""`ssd-img2img accounts ...` and `ssd-img2img keys ...`: the /admin API's operations,
run directly against the database through the same service (common.account_admin).

With --json each command prints exactly the body the matching /admin endpoint answers.
Limits shown as "in force" use this process's settings (DEFAULT_* variables), so run
the CLI with the service's environment.
"""

from __future__ import annotations

import uuid
from typing import Any

import click

from cli.commands import emit, json_option, operation
from common import account_admin
from common import account_views as views
from common.models import AccountStatus, LedgerReason
from common.settings import get_settings


class LimitValue(click.ParamType):
    """A positive integer, or `default` for the service's default (stored as NULL)."""

    name = "N|default"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int) or value is None:
            return value
        if str(value).lower() == "default":
            return None
        try:
            number = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a positive integer nor 'default'", param, ctx)
        if number < 1:
            self.fail(f"{number} is not positive", param, ctx)
        return number


_json_option = json_option("Print the admin API's JSON.")


def _describe(account: views.AccountView) -> str:
    overrides = account.limit_overrides
    return (
        f"{account.id}  {account.name}  {account.status.value}  balance {account.balance}  "
        f"rate {account.limits.rate_limit_per_minute}/min"
        f"{'' if overrides.rate_limit_per_minute is not None else ' (default)'}  "
        f"in flight max {account.limits.max_jobs_in_flight}"
        f"{'' if overrides.max_jobs_in_flight is not None else ' (default)'}  "
        f"weight {account.limits.scheduling_weight}"
        f"{'' if overrides.scheduling_weight is not None else ' (default)'}  "
        f"URL fetches max {account.limits.max_url_fetches}"
        f"{'' if overrides.max_url_fetches is not None else ' (default)'}  "
        f"streams max {account.limits.max_streams}"
        f"{'' if overrides.max_streams is not None else ' (default)'}"
    )


def _describe_key(key: views.KeyView) -> str:
    state = f"revoked {key.revoked_at.isoformat()}" if key.revoked_at else "active"
    return (
        f"{key.id}  {key.prefix}…  {key.name or '-'}  created {key.created_at.isoformat()}  {state}"
    )


# --- accounts ---------------------------------------------------------------------------


@click.command("list")
@click.option("--limit", type=click.IntRange(1, 200), default=50, show_default=True)
@click.option("--cursor", help="next_cursor of the previous page.")
@click.option("--status", type=click.Choice([s.value for s in AccountStatus]))
@_json_option
def accounts_list(limit: int, cursor: str | None, status: str | None, as_json: bool) -> None:
    """Accounts, newest first."""
    settings = get_settings()
    with operation() as session:
        page = account_admin.list_accounts(
            session, limit=limit, cursor=cursor, status=AccountStatus(status) if status else None
        )
        body = views.AccountPage(
            accounts=[views.account_view(a, settings) for a in page.accounts],
            next_cursor=page.next_cursor,
        )
    lines = [_describe(a) for a in body.accounts]
    if body.next_cursor:
        lines.append(f"more: --cursor {body.next_cursor}")
    emit(body, as_json, "\n".join(lines) or "no accounts")


@click.command("show")
@click.argument("account_id", type=click.UUID)
@_json_option
def accounts_show(account_id: uuid.UUID, as_json: bool) -> None:
    """One account: balance, limits, jobs in flight, keys, newest ledger entries."""
    with operation() as session:
        account = account_admin.get_account(session, account_id)
        body = views.account_detail(
            account, account_admin.account_facts(session, account.id), get_settings()
        )
    lines = [
        _describe(body),
        f"jobs in flight {body.jobs_in_flight}, active keys {body.active_keys}",
        *(
            f"  {e.created_at.isoformat()}  {e.amount:+d}  {e.reason.value}"
            f"{'  job ' + str(e.job_id) if e.job_id else ''}{'  ' + e.note if e.note else ''}"
            for e in body.recent_ledger
        ),
    ]
    emit(body, as_json, "\n".join(lines))


@click.command("add-credits")
@click.argument("account_id", type=click.UUID)
@click.argument("amount", type=int)
@click.option(
    "--adjust",
    is_flag=True,
    help="Record an adjustment (either sign; needs --note) instead of a grant. "
    "Give a negative AMOUNT after `--`: add-credits ID --adjust --note why -- -50",
)
@click.option("--note", help="Why; kept in the ledger.")
@_json_option
def accounts_add_credits(
    account_id: uuid.UUID, amount: int, adjust: bool, note: str | None, as_json: bool
) -> None:
    """Add AMOUNT credits (a ledger GRANT), or adjust the balance with --adjust."""
    reason = LedgerReason.ADJUSTMENT if adjust else LedgerReason.GRANT
    with operation() as session:
        account, entry = account_admin.add_credits(session, account_id, amount, reason, note)
        body = views.CreditsChanged(
            account=views.account_view(account, get_settings()),
            entry=views.ledger_entry_view(entry),
        )
    emit(body, as_json, f"{reason.value} {amount:+d}: balance {body.account.balance}")


def _status_command(name: str, new: AccountStatus, doc: str) -> click.Command:
    @click.command(name, help=doc)
    @click.argument("account_id", type=click.UUID)
    @_json_option
    def command(account_id: uuid.UUID, as_json: bool) -> None:
        with operation() as session:
            account = account_admin.set_status(session, account_id, new)
            body = views.account_view(account, get_settings())
        emit(body, as_json, _describe(body))

    return command


accounts_suspend = _status_command(
    "suspend",
    AccountStatus.SUSPENDED,
    "Refuse every API call of the account (403) until reactivated.",
)
accounts_reactivate = _status_command(
    "reactivate", AccountStatus.ACTIVE, "Let a suspended account use the API again."
)


@click.command("set-limits")
@click.argument("account_id", type=click.UUID)
@click.option("--rate-limit", type=LimitValue(), help="Requests per minute per key, or 'default'.")
@click.option("--max-in-flight", type=LimitValue(), help="Jobs queued+processing, or 'default'.")
@click.option(
    "--weight", type=LimitValue(), help="Share of the GPUs in the fair order, or 'default' (1)."
)
@click.option(
    "--max-url-fetches",
    type=LimitValue(),
    help="Image URL fetches at once per API process, or 'default'.",
)
@click.option(
    "--max-streams",
    type=LimitValue(),
    help="Event streams + v1 waits open at once per API process, or 'default'.",
)
@_json_option
def accounts_set_limits(
    account_id: uuid.UUID,
    rate_limit: int | None,
    max_in_flight: int | None,
    weight: int | None,
    max_url_fetches: int | None,
    max_streams: int | None,
    as_json: bool,
) -> None:
    """Set the account's own limits; options left out stay as they are."""
    ctx = click.get_current_context()
    given = {
        "rate_limit_per_minute": ("rate_limit", rate_limit),
        "max_jobs_in_flight": ("max_in_flight", max_in_flight),
        "scheduling_weight": ("weight", weight),
        "max_url_fetches": ("max_url_fetches", max_url_fetches),
        "max_streams": ("max_streams", max_streams),
    }
    changes: dict[str, int | None] = {
        column: value
        for column, (option, value) in given.items()
        if ctx.get_parameter_source(option) != click.core.ParameterSource.DEFAULT
    }
    if not changes:
        raise click.UsageError(
            "give --rate-limit, --max-in-flight, --weight, --max-url-fetches and/or --max-streams"
        )
    with operation() as session:
        account = account_admin.set_limits(session, account_id, **changes)
        body = views.account_view(account, get_settings())
    emit(body, as_json, _describe(body))


ACCOUNT_COMMANDS: list[click.Command] = [
    accounts_list,
    accounts_show,
    accounts_add_credits,
    accounts_suspend,
    accounts_reactivate,
    accounts_set_limits,
]


# --- keys -------------------------------------------------------------------------------


@click.group("keys")
def keys_group() -> None:
    """API keys of accounts (only their prefixes are ever shown after creation)."""


@keys_group.command("create")
@click.argument("account_id", type=click.UUID)
@click.option("--name", help="A label for the key.")
@_json_option
def keys_create(account_id: uuid.UUID, name: str | None, as_json: bool) -> None:
    """A new API key for the account; the key is printed this once."""
    with operation() as session:
        body = views.new_key_view(account_admin.create_key(session, account_id, name))
    emit(body, as_json, f"{_describe_key(body)}\napi key (shown once): {body.api_key}")


@keys_group.command("list")
@click.argument("account_id", type=click.UUID)
@_json_option
def keys_list(account_id: uuid.UUID, as_json: bool) -> None:
    """The account's keys, revoked ones included."""
    with operation() as session:
        keys = account_admin.list_keys(session, account_id)
        body = views.KeyList(keys=[views.key_view(k) for k in keys])
    emit(body, as_json, "\n".join(_describe_key(k) for k in body.keys) or "no keys")


@keys_group.command("revoke")
@click.argument("key_id", type=click.UUID)
@_json_option
def keys_revoke(key_id: uuid.UUID, as_json: bool) -> None:
    """Revoke a key for good: its next request gets 401."""
    with operation() as session:
        body = views.key_view(account_admin.revoke_key(session, key_id))
    emit(body, as_json, _describe_key(body))
