"""`ssd-img2img client run IMAGE_OR_URL --prompt ...`: submit one request, show it on its
way (queue position, then a progress bar: cli/client/display.py), write its JPEGs.

Exit status: 0 once the images are written; 1 when the service refuses the request or
the job ends FAILED or CANCELLED (with the service's message); 130 after Ctrl-C. On
Ctrl-C the job goes on running on the server unless it is cancelled:
`--cancel-on-interrupt` cancels it at once, otherwise a terminal asks.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import click

from cli.client.api import Api, api_of, json_option
from cli.client.display import Display
from cli.client.follow import Update, follow

# Final bodies come with these codes: FAILED answers 422 on the status URL, an expired
# result 410.
FINAL_CODES = (200, 410, 422)


def image_field(image: str) -> str:
    """An http(s) URL goes as it is (the service fetches it); anything else is a file,
    sent as base64."""
    if image.startswith(("http://", "https://")):
        return image
    path = Path(image)
    if not path.is_file():
        raise click.BadParameter(f"{image}: no such file (or give an http(s) URL)")
    return base64.b64encode(path.read_bytes()).decode("ascii")


def request_body(image: str, options: dict[str, Any]) -> dict[str, Any]:
    """The submit body: only what was given; the service applies its own defaults and
    limits, and refuses what is out of range with a message."""
    body = {"image": image_field(image)}
    body.update({name: value for name, value in options.items() if value is not None})
    return body


def save_outputs(api: Api, final: dict[str, Any], out: Path) -> list[Path]:
    """Each output JPEG, downloaded through the API with the caller's key (it answers
    whatever the deployment's `OUTPUT_URL_MODE`), as `out/<request_id>-<i>.jpg`."""
    out.mkdir(parents=True, exist_ok=True)
    request_id = final["request_id"]
    paths = []
    for index in range(len(final.get("output") or [])):
        response = api.send("GET", f"/v2/requests/{request_id}/outputs/{index}")
        path = out / f"{request_id}-{index}.jpg"
        path.write_bytes(response.content)
        paths.append(path)
    return paths


def on_interrupt(api: Api, request_id: str, cancel: bool, display: Display) -> None:
    """Ctrl-C while following: cancel the job on the server if asked to, or if a person
    at the terminal says so; otherwise say how to cancel it later."""
    display.clear()
    if not cancel and sys.stdin.isatty():
        try:
            cancel = click.confirm(f"cancel {request_id} on the server?", default=True)
        except click.Abort:  # a second Ctrl-C at the question: leave it running
            cancel = False
    if cancel:
        body = api.call("POST", f"/v2/requests/{request_id}/cancel", ok=(200, 202, 409))
        said = body.get("error") or (
            "CANCELLED (refunded)" if body["status"] == "CANCELLED" else "stopping"
        )
        click.echo(f"{request_id}: {said}", err=True)
    else:
        click.echo(
            f"{request_id} goes on running; `ssd-img2img client cancel {request_id}` cancels it",
            err=True,
        )


@click.command("run")
@click.argument("image", metavar="IMAGE_OR_URL")
@click.option("--prompt", required=True, help="What to render.")
@click.option("--negative-prompt", help="What to keep out of the image.")
@click.option("--samples", type=int, help="Images (1-4; cost = samples x steps).")
@click.option("--steps", "num_inference_steps", type=int, help="Denoising steps (20-100).")
@click.option("--strength", type=float, help="How far from the input (0-0.99).")
@click.option("--guidance", "guidance_scale", type=float, help="Guidance scale (1-25).")
@click.option("--seed", type=int, help="-1: the service picks one (printed).")
@click.option("--scheduler", help="Sampler, e.g. 'DPM2 Karras' (the default), 'Euler'.")
@click.option("--webhook", "webhook_url", help="URL that receives this job's webhooks.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Folder for the JPEGs.",
)
@click.option("--cancel-on-interrupt", is_flag=True, help="Ctrl-C cancels the job without asking.")
@json_option
@click.pass_context
def run(
    ctx: click.Context,
    image: str,
    out: Path,
    cancel_on_interrupt: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Generate from an image file or URL and write the results."""
    api = api_of(ctx)
    body = request_body(image, options)
    submitted = api.send("POST", "/v2/ssd-img2img", json=body)
    request_id = submitted.json()["request_id"]
    display = Display(sys.stderr if as_json else sys.stdout)
    if not as_json:
        balance = submitted.headers.get("x-remaining-credits")
        display.line(
            f"request {request_id}" + (f"  (balance {balance} credits)" if balance else "")
        )

    final: Update | None = None
    try:
        for update in follow(api.http, _final_getter(api), request_id):
            display.update(update)
            if update.final:
                final = update
    except KeyboardInterrupt:
        on_interrupt(api, request_id, cancel_on_interrupt, display)
        raise SystemExit(130) from None
    assert final is not None  # follow() always ends with the final body
    result = final.body
    paths = save_outputs(api, result, out) if result.get("status") == "COMPLETED" else []
    if as_json:
        click.echo(json.dumps({**result, "files": [str(p) for p in paths]}, indent=2))
    else:
        for path in paths:
            display.line(str(path))
        status = display.status_word(result["status"])
        seed = f"  seed {result['seed']}" if result.get("seed") is not None else ""
        display.line(f"{status}{seed}")
    if result["status"] != "COMPLETED":
        message = result.get("error") or f"request {request_id} is {result['status']}"
        click.echo(f"Error: {message}", err=True)
        raise SystemExit(1)


def _final_getter(api: Api) -> Any:
    return lambda path: api.call("GET", path, ok=FINAL_CODES)
