"""The README's ten-line client, run as it is written against the live stack: it submits
an image, polls until the job ends and prints the presigned URLs of its JPEGs."""

from __future__ import annotations

import ast
import base64
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.helpers import image_b64
from tests.support.live import ROOT, Stack


def _client_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## A client in ten lines", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found, "the README's client section has no python block"
    return found.group(1)


def test_the_readmes_client_example_gets_the_images(live_stack: Stack, tmp_path: Path) -> None:
    code = _client_example()
    assert len([line for line in code.splitlines() if line.strip()]) <= 10
    _, api_key = live_stack.create_account(credits=1000, name="readme-example")
    (tmp_path / "input.png").write_bytes(base64.b64decode(image_b64()))
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "API_URL": live_stack.api_url, "API_KEY": api_key},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    urls = ast.literal_eval(result.stdout.strip())
    assert isinstance(urls, list) and urls
    for url in urls:
        jpeg = httpx.get(url, timeout=30)
        assert jpeg.status_code == 200
        assert jpeg.content[:3] == b"\xff\xd8\xff"
