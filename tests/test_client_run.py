"""`ssd-img2img client run` against the live stack: a file or URL in, JPEGs out; the
queue position and a progress bar on a terminal (a real pseudo-terminal), plain lines
on a pipe; the service's refusals; Ctrl-C with and without cancelling; polling when a
proxy will not pass the event stream."""

from __future__ import annotations

import base64
import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from cli.main import main
from tests.support.helpers import image_b64, wait_terminal
from tests.support.live import Stack
from tests.support.loopback_http import loopback_server, respond, serving
from tests.support.reads import balance
from tests.support.terminal import Terminal
from tests.support.webhook_receiver import webhook_receiver

COLOUR = re.compile(r"\x1b\[[0-9;]*m")
# Enough step callbacks (DPM2 is second order: about 2 × 99) for several progress events.
MANY_STEPS = ["--steps", "100", "--strength", "0.99", "--scheduler", "DPM2 Karras"]
# Running long enough to be interrupted (tests/test_cancel.py LONG).
LONG = ["--samples", "4", "--steps", "100", "--strength", "0.99", "--scheduler", "DPM2 Karras"]


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands run without `--out` write into the test's own folder."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def picture(tmp_path: Path) -> Path:
    path = tmp_path / "in.png"
    path.write_bytes(base64.b64decode(image_b64(96, 64)))
    return path


def account_env(live_stack: Stack, credits: int = 2000) -> tuple[str, dict[str, str]]:
    account_id, key = live_stack.create_account(credits=credits, name="client-run")
    return account_id, {"SSD_API_URL": live_stack.api_url, "SSD_API_KEY": key}


def run(*args: str, env: dict[str, str]) -> Result:
    return CliRunner().invoke(main, ["client", "run", *args], env=env)


def terminal(env: dict[str, str], *args: str, stdin_tty: bool = True) -> Terminal:
    """`ssd-img2img client run ARGS` on a pseudo-terminal, as its own process."""
    command = [sys.executable, "-m", "cli.main", "client", "run", *args]
    return Terminal(command, {**os.environ, **env, "TERM": "xterm"}, stdin_tty)


def jpegs(paths: list[Path]) -> list[tuple[str, tuple[int, int]]]:
    decoded = []
    for path in paths:
        with Image.open(path) as image:
            image.load()  # the whole file decodes
            decoded.append((image.format or "", image.size))
    return decoded


def test_a_file_in_jpegs_out_with_plain_lines_on_a_pipe(
    live_stack: Stack, picture: Path, tmp_path: Path
) -> None:
    account_id, env = account_env(live_stack)
    out = tmp_path / "out"
    args = [str(picture), "--prompt", "a boat", "--samples", "2", "--steps", "20"]
    result = run(*args, "--strength", "0.5", "--seed", "41", "--out", str(out), env=env)
    assert result.exit_code == 0, result.output
    request_id = re.search(r"request (\S+)", result.output).group(1)  # type: ignore[union-attr]
    files = [out / f"{request_id}-{i}.jpg" for i in range(2)]
    assert jpegs(files) == [("JPEG", (96, 64))] * 2
    lines = result.output.splitlines()
    assert lines[0] == f"request {request_id}  (balance {2000 - 40} credits)"
    assert lines[-3:] == [str(files[0]), str(files[1]), "COMPLETED  seed 41"]
    assert "PROCESSING" in lines  # one line per change of status, never a bar
    assert "\r" not in result.output and not COLOUR.search(result.output)
    assert balance(account_id) == 2000 - 40


def test_a_url_in_and_json_out(live_stack: Stack, tmp_path: Path) -> None:
    _, env = account_env(live_stack)
    with loopback_server() as server:
        server.routes["/in.png"] = respond(200, base64.b64decode(image_b64(64, 64)))
        url = server.url("/in.png")
        result = run(url, "--prompt", "a boat", "--json", "--out", str(tmp_path), env=env)
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["status"] == "COMPLETED" and isinstance(body["seed"], int)
    assert jpegs([Path(p) for p in body["files"]]) == [("JPEG", (64, 64))]
    assert [seen.path for seen in server.requests] == ["/in.png"]  # the service fetched it


def test_refusals_exit_1_with_the_services_message_and_charge_nothing(
    live_stack: Stack, picture: Path
) -> None:
    account_id, env = account_env(live_stack, credits=100)
    too_few = run(str(picture), "--prompt", "x", "--steps", "5", env=env)
    assert too_few.exit_code == 1
    assert "400: num_inference_steps" in too_few.output
    too_dear = run(str(picture), "--prompt", "x", "--samples", "4", "--steps", "50", env=env)
    assert too_dear.exit_code == 1 and "406:" in too_dear.output
    missing = run("no-such.png", "--prompt", "x", env=env)
    assert missing.exit_code == 2 and "no such file" in missing.output
    assert balance(account_id) == 100


def test_the_webhook_flag_gets_the_jobs_events(live_stack: Stack, picture: Path) -> None:
    _, env = account_env(live_stack)
    with webhook_receiver() as receiver:
        url = receiver.url("/hook")
        result = run(str(picture), "--prompt", "a boat", "--webhook", url, "--json", env=env)
        assert result.exit_code == 0, result.output
        request_id = json.loads(result.stdout)["request_id"]
        events = [r.payload() for r in receiver.wait_for("/hook", 2)]
    assert {e["data"]["request_id"] for e in events} == {request_id}


def test_a_terminal_sees_a_coloured_progress_bar_reach_100_percent(
    live_stack: Stack, picture: Path, tmp_path: Path
) -> None:
    _, env = account_env(live_stack)
    env.pop("NO_COLOR", None)
    out = ["--out", str(tmp_path)]
    shell = terminal(env, str(picture), "--prompt", "a boat", *MANY_STEPS, *out)
    assert shell.finish() == 0, shell.output
    frames = [COLOUR.sub("", f) for f in shell.output.split("\r\x1b[2K")]
    percents = [int(m.group(1)) for f in frames if (m := re.search(r"\] +(\d+)%", f))]
    assert percents[-1] == 100 and any(0 < p < 100 for p in percents), frames
    assert percents == sorted(percents)
    assert COLOUR.search(shell.output)
    assert re.search(rf"{tmp_path}/\S+-0\.jpg\r\n", shell.output)

    plain = terminal({**env, "NO_COLOR": "1"}, str(picture), "--prompt", "x", *out)
    assert plain.finish() == 0, plain.output
    assert "100%" in plain.output and not COLOUR.search(plain.output)


def test_ctrl_c_asks_and_cancels_the_job_on_the_server(live_stack: Stack, picture: Path) -> None:
    account_id, env = account_env(live_stack)
    shell = terminal(env, str(picture), "--prompt", "a boat", *LONG)
    request_id = re.search(r"request (\S+)", shell.read_until("credits)")).group(1)  # type: ignore[union-attr]
    shell.read_until(" steps")  # the bar: it runs
    shell.interrupt()
    shell.read_until(f"cancel {request_id} on the server? [Y/n]")
    shell.type("y\r")
    assert shell.finish() == 130, shell.output
    with live_stack.client(env["SSD_API_KEY"]) as client:
        final = wait_terminal(client, f"/v2/requests/{request_id}/status", timeout=300)
    assert final["status"] == "CANCELLED"
    assert balance(account_id) == 2000  # refunded


def test_ctrl_c_off_a_terminal_leaves_the_job_or_cancels_it_with_the_flag(
    live_stack: Stack, picture: Path
) -> None:
    _, env = account_env(live_stack, credits=5000)
    with live_stack.client(env["SSD_API_KEY"]) as client:
        for flag, expected in (([], "PROCESSING"), (["--cancel-on-interrupt"], "CANCELLED")):
            # stdin not a terminal: nobody to ask.
            shell = terminal(env, str(picture), "--prompt", "x", *LONG, *flag, stdin_tty=False)
            found = re.search(r"request (\S+)", shell.read_until("credits)"))
            request_id = found.group(1)  # type: ignore[union-attr]
            shell.read_until(" steps")
            shell.interrupt()
            assert shell.finish() == 130, shell.output
            status = client.get(f"/v2/requests/{request_id}/status").json()
            if expected == "PROCESSING":
                assert "goes on running" in shell.output
                assert status["status"] == "PROCESSING" and not status["cancel_requested"]
                client.post(f"/v2/requests/{request_id}/cancel")  # not to hold the worker
            else:
                assert status["cancel_requested"] is True
            final = wait_terminal(client, f"/v2/requests/{request_id}/status", timeout=300)
            assert final["status"] == "CANCELLED"


@contextmanager
def proxy_without_streams(upstream: str) -> Iterator[tuple[str, list[str]]]:
    """A reverse proxy on loopback that passes every call but the event stream (as a
    buffering proxy would break it): 502 there. Yields its URL and the paths asked."""
    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            paths.append(self.path)
            if self.path.endswith("/events"):
                body = b'{"error": "this proxy does not stream"}'
                self.send_response(502)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            length = int(self.headers.get("Content-Length") or 0)
            answer = httpx.request(
                self.command,
                upstream + self.path,
                headers={k: v for k, v in self.headers.items() if k.lower() != "host"},
                content=self.rfile.read(length) if length else None,
                timeout=60,
            )
            self.send_response(answer.status_code)
            for name, value in answer.headers.items():
                if name.lower() not in {"content-length", "transfer-encoding", "connection"}:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        do_GET = do_POST = _forward

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    with serving(httpd):
        yield f"http://127.0.0.1:{httpd.server_address[1]}", paths


def test_without_the_event_stream_it_polls_to_the_end(
    live_stack: Stack, picture: Path, tmp_path: Path
) -> None:
    _, env = account_env(live_stack)
    with proxy_without_streams(live_stack.api_url) as (proxied, paths):
        result = run(
            str(picture), "--prompt", "a boat", "--out", str(tmp_path),
            env={**env, "SSD_API_URL": proxied},
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1].startswith("COMPLETED  seed ")
    assert len(list(tmp_path.glob("*.jpg"))) == 1
    asked = [path.rsplit("/", 1)[-1] for path in paths]
    assert asked[:2] == ["ssd-img2img", "events"]  # the stream first, refused
    assert "status" in asked  # then polling
