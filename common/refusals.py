"""Refusals of the services (common/account_admin.py, common/webhooks/manage.py): what
the caller asked for cannot be done. Each front end turns them into its own answer:
the API into 404 / 400 / 409 JSON errors (api/errors.py `refusals`), the CLI into an
error message and exit status 1 (cli/commands.py `operation`)."""

from __future__ import annotations


class Refusal(Exception):
    """A refusal meant for the caller; its message says why."""


class NotFound(Refusal):
    pass


class InvalidInput(Refusal):
    pass


class Conflict(Refusal):
    pass
