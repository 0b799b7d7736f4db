"""The service's HTTP API as the client commands call it: the caller's URL and key
(cli/client/config.py), and every refusal turned into a click error that prints the
service's own message after its HTTP status (`401: ...`) and exits 1."""

from __future__ import annotations

import json
from typing import Any

import click
import httpx

from cli.client.config import ClientConfig, resolve


class Api:
    """The service's HTTP API with the caller's key; errors as click exceptions."""

    def __init__(self, config: ClientConfig, timeout: float = 30) -> None:
        self.config = config
        self.http = httpx.Client(
            base_url=config.api_url, headers={"x-api-key": config.api_key}, timeout=timeout
        )

    def send(
        self, method: str, path: str, ok: tuple[int, ...] = (200,), **kw: Any
    ) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise click.ClickException(
                f"cannot reach {self.config.api_url}: {type(exc).__name__}"
            ) from exc
        if response.status_code not in ok:
            raise click.ClickException(_error_of(response))
        return response

    def call(self, method: str, path: str, ok: tuple[int, ...] = (200,), **kw: Any) -> Any:
        """The answer's JSON."""
        return self.send(method, path, ok, **kw).json()


def _error_of(response: httpx.Response) -> str:
    try:
        message = response.json().get("error")
    except ValueError:
        message = None
    return f"{response.status_code}: {message or response.reason_phrase}"


def api_of(ctx: click.Context) -> Api:
    """The API as the group's `--api-url`/`--api-key`, the environment or the config
    file say."""
    api_url, api_key = ctx.obj
    return Api(resolve(api_url, api_key))


def emit(data: Any, as_json: bool, human: str) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else human)


json_option = click.option("--json", "as_json", is_flag=True, help="The service's JSON.")
