"""`/v2/webhooks`: the caller's webhook endpoints, signing secret and deliveries.

Everything is scoped to the caller's account (another tenant's endpoint or delivery is
404); the work is done by common.webhooks.manage, which the CLI calls too.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from api.deps import CurrentAccount, SessionDep, SettingsDep
from api.errors import error_responses, parse_id
from api.webhooks import schemas
from common.models import WebhookDeliveryState
from common.webhooks import manage, views

router = APIRouter(prefix="/v2/webhooks", tags=["webhooks"])

_ERRORS = error_responses(400, 401, 403, 429)
_WITH_404 = error_responses(400, 401, 403, 404, 429)
_WITH_409 = error_responses(400, 401, 403, 404, 409, 429)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=views.EndpointView,
    responses=_WITH_409,
)
def create_endpoint(
    body: schemas.CreateEndpointBody,
    session: SessionDep,
    settings: SettingsDep,
    account: CurrentAccount,
) -> views.EndpointView:
    """An endpoint that receives the chosen events of all the account's requests."""
    endpoint = manage.create_endpoint(
        session, settings, account.id, body.url, body.events, body.description
    )
    return views.endpoint_view(endpoint)


@router.get("", response_model=views.EndpointList, responses=_ERRORS)
def list_endpoints(session: SessionDep, account: CurrentAccount) -> views.EndpointList:
    endpoints = manage.list_endpoints(session, account.id)
    return views.EndpointList(endpoints=[views.endpoint_view(e) for e in endpoints])


@router.get("/secret", response_model=views.SecretView, responses=_ERRORS)
def get_secret(session: SessionDep, account: CurrentAccount) -> views.SecretView:
    """The secret(s) webhooks are signed with; the first is made on first use."""
    secrets = manage.get_secrets(session, account.id)
    return views.secret_view(secrets)


@router.post("/secret/rotate", response_model=views.SecretView, responses=_ERRORS)
def rotate_secret(
    session: SessionDep,
    settings: SettingsDep,
    account: CurrentAccount,
    body: schemas.RotateSecretBody | None = None,
) -> views.SecretView:
    """A new secret; the old one keeps signing too (a second signature) for the overlap."""
    secrets = manage.rotate_secret(
        session, settings, account.id, body.overlap_seconds if body else None
    )
    return views.secret_view(secrets)


@router.get("/deliveries", response_model=views.DeliveryPage, responses=_WITH_404)
def list_deliveries(
    session: SessionDep,
    account: CurrentAccount,
    request_id: Annotated[str | None, Query(description="Only this request's.")] = None,
    endpoint_id: Annotated[str | None, Query(description="Only this endpoint's.")] = None,
    state: Annotated[WebhookDeliveryState | None, Query(description="Only this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="Page size.")] = 50,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
) -> views.DeliveryPage:
    """Deliveries (one per event and target), newest first, with every attempt."""
    page = manage.list_deliveries(
        session,
        account.id,
        limit=limit,
        request_id=parse_id(request_id, "request") if request_id else None,
        endpoint_id=parse_id(endpoint_id, "webhook endpoint") if endpoint_id else None,
        state=state,
        cursor=cursor,
    )
    return views.DeliveryPage(
        deliveries=[views.delivery_view(d, page.attempts[d.id]) for d in page.deliveries],
        next_cursor=page.next_cursor,
    )


@router.get("/deliveries/{delivery_id}", response_model=views.DeliveryView, responses=_WITH_404)
def get_delivery(
    delivery_id: str, session: SessionDep, account: CurrentAccount
) -> views.DeliveryView:
    delivery = manage.get_delivery(session, account.id, parse_id(delivery_id, "webhook delivery"))
    return views.delivery_view(delivery, manage.attempts_of(session, [delivery.id])[delivery.id])


@router.post(
    "/deliveries/{delivery_id}/replay",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=views.DeliveryView,
    responses=_WITH_409,
)
def replay_delivery(
    delivery_id: str, session: SessionDep, account: CurrentAccount
) -> views.DeliveryView:
    """Send a finished (succeeded or failed) delivery again, with the same webhook-id:
    a new series of attempts."""
    delivery = manage.replay_delivery(
        session, account.id, parse_id(delivery_id, "webhook delivery")
    )
    attempts = manage.attempts_of(session, [delivery.id])[delivery.id]
    return views.delivery_view(delivery, attempts)


@router.get("/{endpoint_id}", response_model=views.EndpointView, responses=_WITH_404)
def get_endpoint(
    endpoint_id: str, session: SessionDep, account: CurrentAccount
) -> views.EndpointView:
    endpoint = manage.get_endpoint(session, account.id, parse_id(endpoint_id, "webhook endpoint"))
    return views.endpoint_view(endpoint)


@router.delete("/{endpoint_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_WITH_404)
def delete_endpoint(endpoint_id: str, session: SessionDep, account: CurrentAccount) -> Response:
    """Delete the endpoint, with its deliveries and their attempts."""
    manage.delete_endpoint(session, account.id, parse_id(endpoint_id, "webhook endpoint"))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _set_enabled(
    endpoint_id: str, session: SessionDep, account: CurrentAccount, enabled: bool
) -> views.EndpointView:
    endpoint = manage.set_endpoint_enabled(
        session, account.id, parse_id(endpoint_id, "webhook endpoint"), enabled
    )
    return views.endpoint_view(endpoint)


@router.post("/{endpoint_id}/disable", response_model=views.EndpointView, responses=_WITH_404)
def disable_endpoint(
    endpoint_id: str, session: SessionDep, account: CurrentAccount
) -> views.EndpointView:
    """Send it nothing until enabled again; its waiting deliveries fail."""
    return _set_enabled(endpoint_id, session, account, False)


@router.post("/{endpoint_id}/enable", response_model=views.EndpointView, responses=_WITH_404)
def enable_endpoint(
    endpoint_id: str, session: SessionDep, account: CurrentAccount
) -> views.EndpointView:
    """Send it events again (after a 410 Gone disabled it, say)."""
    return _set_enabled(endpoint_id, session, account, True)
