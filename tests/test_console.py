"""The web console's files as the API serves them (api/console/): the security headers,
no inline script anywhere, no HTML built from strings, every API path its script calls
a route of this API, and the files shipped in the wheel. The browser drives it in
tests/test_console_browser.py."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from html.parser import HTMLParser

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.console import MEDIA_TYPES, STATIC
from tests.support.live import ROOT


@pytest.fixture(scope="module")
def app() -> FastAPI:
    from api.main import create_app

    return create_app()


@pytest.fixture(scope="module")
def client(app: FastAPI) -> TestClient:
    return TestClient(app)  # no lifespan: the console needs no service


def test_the_console_is_served_with_a_policy_that_allows_no_inline_script(
    client: TestClient,
) -> None:
    page = client.get("/console")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    policy = dict(
        directive.split(" ", 1) for directive in page.headers["content-security-policy"].split("; ")
    )
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'" and policy["style-src"] == "'self'"
    assert policy["connect-src"] == "'self'" and policy["frame-ancestors"] == "'none'"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    for name, media_type in MEDIA_TYPES.items():
        served = client.get(f"/console/{name}")
        assert served.status_code == 200 and served.headers["content-type"] == media_type
        assert served.content == (STATIC / name).read_bytes()
    missing = client.get("/console/secrets.txt")
    assert missing.status_code == 404 and "secrets.txt" in missing.json()["error"]
    assert client.get("/console/..%2Fconsole%2F__init__.py").status_code == 404


class _Inline(HTMLParser):
    """Script elements with a body, event-handler and style attributes, javascript: URLs."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name.startswith("on") or name == "style":
                self.found.append(f"<{tag} {name}>")
            if value and value.strip().lower().startswith("javascript:"):
                self.found.append(f"<{tag} {name}=javascript:>")
        if tag == "script":
            if not dict(attrs).get("src"):
                self.found.append("<script> without src")
            self._in_script = True

    def handle_endtag(self, tag: str) -> None:
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.found.append("<script> with a body")


def test_the_page_has_no_inline_script_or_style_and_the_script_builds_no_html() -> None:
    parser = _Inline()
    parser.feed((STATIC / "index.html").read_text())
    assert parser.found == []
    script = (STATIC / "console.js").read_text()
    # Text goes in with textContent: nothing the service or a tenant wrote is parsed.
    for risky in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "Function(",
    ):
        assert risky not in script, risky
    # The key lives in the tab only.
    assert "localStorage" not in script and "document.cookie" not in script
    assert "sessionStorage.setItem(KEY" in script


def _route_pattern(path: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$")


def test_every_path_the_console_calls_is_a_route_of_the_api(app: FastAPI) -> None:
    routes = [
        (method.upper(), _route_pattern(path))
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    ]
    script = (STATIC / "console.js").read_text()
    calls = re.findall(r'api\("([A-Z]+)", [`"](/v[12]/[^`"?]*)', script)
    calls += [("GET", p) for p in re.findall(r"events\(`(/v2/[^`]*)`", script)]
    assert len(calls) >= 15, calls
    missing = []
    for method, path in calls:
        concrete = re.sub(r"\$\{[^}]+\}", "x", path)
        if not any(m == method and pattern.match(concrete) for m, pattern in routes):
            missing.append(f"{method} {path}")
    assert missing == []


def test_the_package_data_ships_every_console_file() -> None:
    """What pyproject.toml puts in the wheel (and so in the API image) covers each file
    the console serves."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["api"]
    for name in MEDIA_TYPES:
        assert any(fnmatch.fnmatch(f"console/static/{name}", p) for p in patterns), name
    assert sorted(p.name for p in STATIC.iterdir()) == sorted(MEDIA_TYPES)
