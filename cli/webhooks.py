"""`ssd-img2img webhooks ...`: an account's webhook endpoints, signing secret and
deliveries, for the operator: the `/v2/webhooks` operations, run directly against the
database for the account named, through the same service (common.webhooks.manage).

With --json each command prints exactly the body the matching API endpoint answers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import click
from sqlalchemy.orm import Session

from cli.commands import emit, json_option, operation
from common.models import WebhookDeliveryState
from common.settings import get_settings
from common.webhooks import manage, views
from common.webhooks.events import EVENT_NAMES

_json_option = json_option("Print the API's JSON.")


@contextmanager
def _operation(account_id: uuid.UUID) -> Iterator[Session]:
    """One transaction for an existing account; refusals become CLI errors (exit 1)."""
    with operation() as session:
        manage.require_account(session, account_id)
        yield session


def _describe(endpoint: views.EndpointView) -> str:
    state = "enabled" if endpoint.enabled else f"disabled ({endpoint.disabled_reason})"
    return f"{endpoint.id}  {endpoint.url}  {','.join(endpoint.events)}  {state}"


def _describe_delivery(d: views.DeliveryView) -> str:
    codes = ",".join(str(a.status_code or "-") for a in d.attempts) or "-"
    return (
        f"{d.id}  {d.event_type.value}  request {d.request_id}  {d.url}  {d.state.value}"
        f"  attempts {d.attempt_count} [{codes}]{'  ' + d.last_error if d.last_error else ''}"
    )


@click.group("webhooks")
def webhooks_group() -> None:
    """Webhook endpoints, signing secrets and deliveries of an account."""


@webhooks_group.command("create")
@click.argument("account_id", type=click.UUID)
@click.argument("url")
@click.option(
    "--event",
    "events",
    multiple=True,
    type=click.Choice(EVENT_NAMES),
    help="An event to receive (repeat it); default: started and completed.",
)
@click.option("--description", help="A note for people.")
@_json_option
def webhooks_create(
    account_id: uuid.UUID,
    url: str,
    events: tuple[str, ...],
    description: str | None,
    as_json: bool,
) -> None:
    """Add an endpoint receiving events of all the account's requests."""
    with _operation(account_id) as session:
        endpoint = manage.create_endpoint(
            session, get_settings(), account_id, url, list(events) or None, description
        )
        body = views.endpoint_view(endpoint)
    emit(body, as_json, _describe(body))


@webhooks_group.command("list")
@click.argument("account_id", type=click.UUID)
@_json_option
def webhooks_list(account_id: uuid.UUID, as_json: bool) -> None:
    """The account's endpoints."""
    with _operation(account_id) as session:
        body = views.EndpointList(
            endpoints=[views.endpoint_view(e) for e in manage.list_endpoints(session, account_id)]
        )
    emit(body, as_json, "\n".join(_describe(e) for e in body.endpoints) or "no endpoints")


@webhooks_group.command("delete")
@click.argument("account_id", type=click.UUID)
@click.argument("endpoint_id", type=click.UUID)
def webhooks_delete(account_id: uuid.UUID, endpoint_id: uuid.UUID) -> None:
    """Delete an endpoint, with its deliveries."""
    with _operation(account_id) as session:
        manage.delete_endpoint(session, account_id, endpoint_id)
    click.echo(f"deleted {endpoint_id}")


def _enable_command(name: str, enabled: bool, doc: str) -> click.Command:
    @click.command(name, help=doc)
    @click.argument("account_id", type=click.UUID)
    @click.argument("endpoint_id", type=click.UUID)
    @_json_option
    def command(account_id: uuid.UUID, endpoint_id: uuid.UUID, as_json: bool) -> None:
        with _operation(account_id) as session:
            endpoint = manage.set_endpoint_enabled(session, account_id, endpoint_id, enabled)
            body = views.endpoint_view(endpoint)
        emit(body, as_json, _describe(body))

    return command


webhooks_group.add_command(_enable_command("disable", False, "Send an endpoint nothing."))
webhooks_group.add_command(_enable_command("enable", True, "Send an endpoint events again."))


@webhooks_group.command("secret")
@click.argument("account_id", type=click.UUID)
@_json_option
def webhooks_secret(account_id: uuid.UUID, as_json: bool) -> None:
    """The signing secret(s) in force (the first is made on first use)."""
    with _operation(account_id) as session:
        body = views.secret_view(manage.get_secrets(session, account_id))
    emit(body, as_json, _describe_secret(body))


@webhooks_group.command("rotate-secret")
@click.argument("account_id", type=click.UUID)
@click.option(
    "--overlap-seconds",
    type=click.IntRange(0, 30 * 24 * 3600),
    help="How long the old secret signs too; default WEBHOOK_SECRET_OVERLAP_SECONDS. "
    "0 = it stops at once.",
)
@_json_option
def webhooks_rotate_secret(
    account_id: uuid.UUID, overlap_seconds: int | None, as_json: bool
) -> None:
    """A new signing secret."""
    with _operation(account_id) as session:
        secrets = manage.rotate_secret(session, get_settings(), account_id, overlap_seconds)
        body = views.secret_view(secrets)
    emit(body, as_json, _describe_secret(body))


def _describe_secret(body: views.SecretView) -> str:
    lines = [f"secret: {body.secret}"]
    if body.previous_secret and body.previous_secret_expires_at:
        expires = body.previous_secret_expires_at.isoformat()
        lines.append(f"previous (signs too until {expires}): {body.previous_secret}")
    return "\n".join(lines)


@webhooks_group.command("deliveries")
@click.argument("account_id", type=click.UUID)
@click.option("--request-id", type=click.UUID, help="Only this request's.")
@click.option("--endpoint-id", type=click.UUID, help="Only this endpoint's.")
@click.option("--state", type=click.Choice([s.value for s in WebhookDeliveryState]))
@click.option("--limit", type=click.IntRange(1, 200), default=50, show_default=True)
@click.option("--cursor", help="next_cursor of the previous page.")
@_json_option
def webhooks_deliveries(
    account_id: uuid.UUID,
    request_id: uuid.UUID | None,
    endpoint_id: uuid.UUID | None,
    state: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> None:
    """Deliveries, newest first, with their attempts."""
    with _operation(account_id) as session:
        page = manage.list_deliveries(
            session,
            account_id,
            limit=limit,
            request_id=request_id,
            endpoint_id=endpoint_id,
            state=WebhookDeliveryState(state) if state else None,
            cursor=cursor,
        )
        body = views.DeliveryPage(
            deliveries=[views.delivery_view(d, page.attempts[d.id]) for d in page.deliveries],
            next_cursor=page.next_cursor,
        )
    lines = [_describe_delivery(d) for d in body.deliveries]
    if body.next_cursor:
        lines.append(f"more: --cursor {body.next_cursor}")
    emit(body, as_json, "\n".join(lines) or "no deliveries")


@webhooks_group.command("replay")
@click.argument("account_id", type=click.UUID)
@click.argument("delivery_id", type=click.UUID)
@_json_option
def webhooks_replay(account_id: uuid.UUID, delivery_id: uuid.UUID, as_json: bool) -> None:
    """Send a finished delivery again (same webhook-id, a new series of attempts)."""
    with _operation(account_id) as session:
        delivery = manage.replay_delivery(session, account_id, delivery_id)
        body = views.delivery_view(
            delivery, manage.attempts_of(session, [delivery_id])[delivery_id]
        )
    emit(body, as_json, _describe_delivery(body))
