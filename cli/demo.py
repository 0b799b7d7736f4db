"""`make demo`: one real img2img job through the public HTTP API of the local stack."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image, ImageDraw

from cli import stack
from devstack.process import pidfile_path, pidfile_process_alive


def sample_image(size: int = 256) -> bytes:
    """A simple synthetic input (sky, sun, hills), so the demo needs no downloaded file."""
    img = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(img)
    for y in range(size):
        shade = int(120 + 100 * y / size)
        draw.line([(0, y), (size, y)], fill=(70, shade, 230))
    draw.ellipse([size * 0.6, size * 0.1, size * 0.85, size * 0.35], fill=(250, 210, 60))
    draw.polygon(
        [(0, size), (0, size * 0.7), (size * 0.4, size * 0.5), (size, size * 0.75), (size, size)],
        fill=(40, 140, 60),
    )
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def create_account(env: dict[str, str], credits: int) -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "accounts",
            "create",
            "--name",
            "demo",
            "--credits",
            str(credits),
            "--json",
        ],
        env={**os.environ, **env},
        cwd=stack.ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return str(json.loads(out)["api_key"])


def submit_and_wait(
    api_url: str, api_key: str, body: dict[str, object], timeout: float = 300
) -> dict:
    headers = {"x-api-key": api_key}
    with httpx.Client(base_url=api_url, headers=headers, timeout=30) as client:
        submitted = client.post("/v2/ssd-img2img", json=body)
        submitted.raise_for_status()
        urls = submitted.json()
        deadline = time.monotonic() + timeout
        while True:
            status = client.get(urls["status_url"]).json()["status"]
            if status in ("COMPLETED", "FAILED", "CANCELLED"):
                break
            if time.monotonic() > deadline:
                raise stack.StackError(f"the job did not finish within {timeout:.0f}s")
            time.sleep(0.2)
        result: dict = client.get(urls["response_url"]).json()
    if result["status"] != "COMPLETED":
        raise stack.StackError(f"the job ended {result['status']}: {result.get('error')}")
    return result


@dataclass(frozen=True)
class DemoOutcome:
    input: Path
    outputs: list[Path]
    tiny_model: bool  # the outputs are the tiny random model's noise


def run_demo(
    state_dir: Path,
    out_dir: Path,
    keep_up: bool = False,
    model_id: str | None = None,
    api_port: int = 8000,
) -> DemoOutcome:
    was_up = pidfile_process_alive(pidfile_path(state_dir.resolve(), stack.API)) is not None
    env = stack.up(state_dir, api_port=api_port, model_id=model_id)
    tiny = stack.is_tiny_model(env)
    try:
        api_key = create_account(env, credits=1000)
        source = sample_image(256 if tiny else 1024)  # SSD-1B's own size for a real model
        body = {
            "image": base64.b64encode(source).decode(),
            "prompt": "a watercolor painting of hills under a summer sky",
            "negative_prompt": "blurry, low quality",
            "samples": 2,
            "scheduler": "Euler a",
            "num_inference_steps": 20,
            "guidance_scale": 7.5,
            "seed": 42,
            "strength": 0.8,
        }
        result = submit_and_wait(env["API_URL"], api_key, body, timeout=300 if tiny else 3600)
        out_dir.mkdir(parents=True, exist_ok=True)
        prefix = f"demo-{result['request_id'][:8]}"
        given = out_dir / f"{prefix}-input.jpg"
        given.write_bytes(source)
        paths = []
        for index, url in enumerate(result["output"]):
            path = out_dir / f"{prefix}-{index}.jpg"
            path.write_bytes(httpx.get(url, timeout=30).raise_for_status().content)
            paths.append(path.resolve())
        return DemoOutcome(given.resolve(), paths, tiny)
    finally:
        if not (keep_up or was_up):
            stack.down(state_dir)
