"""Headless Chromium (Debian's `chromium` and `chromium-driver` packages) driven with
Selenium, for the console's tests.

Only loopback is reachable from it: every other address goes to a proxy on a closed
loopback port (so Chromium's own background calls fail without leaving the machine),
and its background services are off."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = ("chromium", "chromium-browser")
DRIVER = "chromedriver"
# Screenshots for the README go to docs/img/ when this is set (`make screenshots`).
SCREENSHOTS_ENV = "UPDATE_SCREENSHOTS"


def chromium_paths() -> tuple[str, str] | None:
    browser = next((p for name in CHROMIUM if (p := shutil.which(name))), None)
    driver = shutil.which(DRIVER)
    return (browser, driver) if browser and driver else None


def require_chromium() -> tuple[str, str]:
    """Chromium and its driver, else a skip saying how to install them; under CI (which
    installs them: .ci/run) a failure."""
    found = chromium_paths()
    if found is None:
        message = "no Chromium: apt-get update && apt-get install chromium chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(message + " (.ci/run installs them)")
        pytest.skip(message)
    return found


@contextmanager
def chromium(width: int = 1280, height: int = 1000) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = require_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",  # root in CI containers
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
        "--proxy-server=http://127.0.0.1:9",  # anything but loopback goes nowhere
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-domain-reliability",
        "--no-first-run",
        "--no-default-browser-check",
        "--metrics-recording-only",
    ):
        options.add_argument(flag)
    session = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    try:
        yield session
    finally:
        session.quit()


def screenshot(session: Any, name: str, tmp_path: Path) -> Path:
    """A PNG of the page, kept in the test's folder and, with UPDATE_SCREENSHOTS=1, in
    docs/img/ for the README."""
    path = tmp_path / f"{name}.png"
    assert session.save_screenshot(str(path))
    if os.environ.get(SCREENSHOTS_ENV):
        target = Path(__file__).resolve().parents[2] / "docs" / "img" / f"{name}.png"
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(path, target)
    return path
