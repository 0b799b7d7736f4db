"""`ssd-img2img`: the operator's command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType

import click

from cli import accounts as accounts_commands
from cli import reliability
from cli import webhooks as webhooks_commands
from cli.client import commands as client_commands
from common import accounts
from common.db import session_scope


@click.group()
def main() -> None:
    """Operate an ssd-img2img service."""


@main.group("accounts")
def accounts_group() -> None:
    """Tenant accounts and their API keys."""


@accounts_group.command("create")
@click.option("--name", default="default", show_default=True, help="Account name.")
@click.option(
    "--credits", "initial_credits", type=click.IntRange(min=0), default=0, show_default=True
)
@click.option("--json", "as_json", is_flag=True, help="Print {id, api_key} as JSON.")
def accounts_create(name: str, initial_credits: int, as_json: bool) -> None:
    """Create an account with a first API key (shown once)."""
    with session_scope() as session:
        account = accounts.create_account(session, name, initial_credits)
        key = accounts.create_api_key(session, account.id, name="default")
        account_id = str(account.id)
    if as_json:
        click.echo(json.dumps({"id": account_id, "api_key": key.raw}))
    else:
        click.echo(f"account {account_id} ({name}) with {initial_credits} credits")
        click.echo(f"api key (shown once): {key.raw}")


# list, show, add-credits, suspend, reactivate, set-limits; and the `keys` group.
for _command in accounts_commands.ACCOUNT_COMMANDS:
    accounts_group.add_command(_command)
main.add_command(accounts_commands.keys_group)
main.add_command(reliability.reconcile_command)  # `ssd-img2img reconcile`
main.add_command(webhooks_commands.webhooks_group)  # `ssd-img2img webhooks ...`
main.add_command(client_commands.client_group)  # `ssd-img2img client ...`: tenants, HTTP only


@main.group("model")
def model_group() -> None:
    """Model weights."""


@model_group.command("make-tiny")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
def model_make_tiny(directory: Path, seed: int) -> None:
    """Build a tiny random-weight SDXL-architecture pipeline for tests and demos."""
    try:
        from worker.tiny_model import make_tiny_pipeline  # needs the [worker] extra
    except ImportError as exc:
        raise click.ClickException(f"install the worker extra first: {exc}") from exc
    path = make_tiny_pipeline(directory, seed=seed)
    click.echo(str(path))


@model_group.command("make-random")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--arch",
    type=click.Choice(["ssd-1b"]),
    default="ssd-1b",
    show_default=True,
    help="The architecture to build.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
def model_make_random(directory: Path, arch: str, seed: int) -> None:
    """Build a FULL-SIZE pipeline with the real architecture and random weights (fp16,
    saved as variant fp16: load it with MODEL_VARIANT=fp16), for GPU timings without
    downloading the model. About 4.5 GB and a minute or two on a CPU."""
    try:
        from worker.random_model import make_random_pipeline  # needs the [worker] extra
    except ImportError as exc:
        raise click.ClickException(f"install the worker extra first: {exc}") from exc
    path = make_random_pipeline(directory, arch=arch, seed=seed)
    click.echo(str(path))


@main.group("storage")
def storage_group() -> None:
    """Object storage."""


@storage_group.command("ensure-bucket")
def storage_ensure_bucket() -> None:
    """Create the configured bucket if it does not exist."""
    from common.storage import get_storage

    store = get_storage()
    store.ensure_bucket()
    click.echo(f"bucket {store.bucket} is ready")


_MODEL_ID_HELP = (
    "A real model instead of the tiny test one: a hub id (segmind/SSD-1B) or a diffusers "
    "folder; downloaded when not cached (unless HF_HUB_OFFLINE=1), device chosen "
    "automatically."
)


@main.group("stack")
def stack_group() -> None:
    """The embedded local stack (PostgreSQL, Redis, SeaweedFS, API, worker)."""


def _local_stack() -> ModuleType:
    """cli/stack.py, which needs the development stack (devstack/, a source checkout
    installed with the `stack` extra): production images carry neither."""
    try:
        from cli import stack
    except ImportError as exc:
        raise click.ClickException(
            f"the local stack needs a source checkout installed with the [stack] extra ({exc})"
        ) from exc
    return stack


@stack_group.command("up")
@click.option(
    "--state-dir", type=click.Path(path_type=Path), default=Path(".stack"), show_default=True
)
@click.option("--api-port", default=8000, show_default=True)
@click.option("--model-id", help=_MODEL_ID_HELP)
def stack_up(state_dir: Path, api_port: int, model_id: str | None) -> None:
    """Start everything and return once it is healthy."""
    if model_id:
        click.echo(
            f"model {model_id}: loading (downloading it first if it is not in the "
            f"Hugging Face cache; see {state_dir / 'logs' / 'worker.log'})"
        )
    local_stack = _local_stack()
    try:
        env = local_stack.up(state_dir, api_port=api_port, model_id=model_id)
    except local_stack.StackError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"stack is up: API {env['API_URL']}; settings in {state_dir / 'env'}")
    installed = Path(sys.executable).with_name("ssd-img2img")
    command = installed if installed.exists() else "ssd-img2img"
    click.echo(
        f"web console: {env['API_URL']}/console; sign in with an API key from\n"
        f"  source {state_dir / 'env'} && {command} accounts create --name NAME --credits 1000"
    )


@stack_group.command("down")
@click.option(
    "--state-dir", type=click.Path(path_type=Path), default=Path(".stack"), show_default=True
)
def stack_down(state_dir: Path) -> None:
    """Stop everything `stack up` started."""
    _local_stack().down(state_dir)
    click.echo("stack is down")


@main.command("demo")
@click.option(
    "--state-dir", type=click.Path(path_type=Path), default=Path(".stack"), show_default=True
)
@click.option(
    "--out", "out_dir", type=click.Path(path_type=Path), default=Path("out"), show_default=True
)
@click.option("--keep-up", is_flag=True, help="Leave the stack running afterwards.")
@click.option("--model-id", help=_MODEL_ID_HELP)
def demo(state_dir: Path, out_dir: Path, keep_up: bool, model_id: str | None) -> None:
    """Start the stack, send one img2img job through the HTTP API, save the input and
    the output JPEGs side by side."""
    local_stack = _local_stack()
    from cli.demo import run_demo

    try:
        outcome = run_demo(state_dir, out_dir, keep_up=keep_up, model_id=model_id)
    except local_stack.StackError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"input  {outcome.input}")
    for path in outcome.outputs:
        click.echo(f"output {path}")
    if outcome.tiny_model:
        click.echo(
            "NOTE: these outputs come from the tiny RANDOM-weight test model: they are noise, "
            "by design. For real images: make demo MODEL_ID=segmind/SSD-1B (downloads about "
            "7 GB; a CUDA GPU strongly advised)."
        )


if __name__ == "__main__":
    sys.exit(main())
