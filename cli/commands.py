"""What the CLI's command groups share: one transaction per command with the
services' refusals as CLI errors, and `--json` output in the shapes the admin API answers
(common/account_views.py, common/webhooks/views.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click
from pydantic import BaseModel
from sqlalchemy.orm import Session

from common.db import session_scope
from common.refusals import Refusal

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def operation() -> Iterator[Session]:
    """One transaction; the service's refusals become CLI errors (exit status 1)."""
    try:
        with session_scope() as session:
            yield session
    except Refusal as exc:
        raise click.ClickException(str(exc)) from exc


def json_option(help_text: str) -> Callable[[F], F]:
    """The `--json` flag (as `as_json`)."""

    def decorate(func: F) -> F:
        return click.option("--json", "as_json", is_flag=True, help=help_text)(func)

    return decorate


def emit(model: BaseModel, as_json: bool, text: str) -> None:
    click.echo(model.model_dump_json() if as_json else text)
