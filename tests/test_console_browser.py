"""The web console (api/console/) in headless Chromium against the live stack: sign in,
submit and watch the progress reach 100%, the result decoded at the input's size,
cancel a running job, page the requests and open one, the account, a webhook endpoint
and its deliveries, the service's errors in words, and a phone-width page. Screenshots
of each page: tests/support/browser.py `screenshot` (UPDATE_SCREENSHOTS=1 for docs/img/)."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.models import JobStatus
from tests.support.browser import chromium, screenshot
from tests.support.helpers import HELD_POOL, image_b64, insert_job, job_body, wait_terminal
from tests.support.live import Stack
from tests.support.waiting import wait_until
from tests.support.webhook_receiver import webhook_receiver


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as session:
        yield session


@pytest.fixture
def picture(tmp_path: Path) -> Path:
    path = tmp_path / "in.png"
    path.write_bytes(base64.b64decode(image_b64(96, 64)))
    return path


def choose(element: Any, value: str) -> None:
    from selenium.webdriver.support.select import Select

    Select(element).select_by_value(value)


def by_id(browser: Any, element_id: str) -> Any:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, element_id)


def sign_in(browser: Any, stack: Stack, key: str) -> None:
    browser.get(f"{stack.api_url}/console")
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{stack.api_url}/console#/try")
    by_id(browser, "api-key").send_keys(key)
    by_id(browser, "sign-in-form").submit()
    wait_until(lambda: by_id(browser, "nav").is_displayed(), "the signed-in menu")


def go(browser: Any, page: str, ready_id: str) -> Any:
    browser.execute_script(f"location.hash = '#/{page}'")
    return wait_until(lambda: browser.find_elements("id", ready_id), f"the {page} page")[0]


def set_value(browser: Any, element_id: str, value: str) -> None:
    element = by_id(browser, element_id)
    element.clear()
    element.send_keys(value)


def text_of(browser: Any, element_id: str) -> str:
    """The element's text, "" while it is not there; a service error shown instead
    fails the test with its words."""
    shown = error_text(browser)
    assert not shown, shown
    # Read in one script: the page may redraw the element between a find and a read.
    read = "const e = document.getElementById(arguments[0]); return e ? e.innerText : ''"
    return str(browser.execute_script(read, element_id))


def error_text(browser: Any) -> str:
    box = by_id(browser, "error")
    return str(box.text) if box.is_displayed() else ""


def test_a_wrong_key_is_refused_in_words(browser: Any, live_stack: Stack) -> None:
    browser.get(f"{live_stack.api_url}/console")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    by_id(browser, "api-key").send_keys("sk-not-a-key")
    by_id(browser, "sign-in-form").submit()
    message = wait_until(lambda: error_text(browser), "the error")
    assert message.startswith("401: ")
    assert browser.execute_script("return sessionStorage.length") == 0
    assert not by_id(browser, "nav").is_displayed()


def test_try_it_shows_the_cost_the_progress_and_the_result(
    browser: Any, live_stack: Stack, picture: Path, tmp_path: Path
) -> None:
    _, key = live_stack.create_account(credits=1000, name="console-try")
    sign_in(browser, live_stack, key)
    assert browser.execute_script("return document.cookie") == ""
    by_id(browser, "image-file").send_keys(str(picture))
    by_id(browser, "prompt").send_keys("a lighthouse at dusk")
    set_value(browser, "samples", "2")
    set_value(browser, "steps", "100")
    set_value(browser, "strength", "0.99")
    assert by_id(browser, "cost").text.startswith("200 credits")
    by_id(browser, "try-form").submit()

    seen: list[float] = []

    def finished() -> bool:
        bars = browser.find_elements("id", "run-progress")
        if bars:
            seen.append(float(bars[0].get_attribute("value")))
        return text_of(browser, "run-state").startswith("COMPLETED")

    wait_until(finished, "the job to complete", timeout=300)
    assert seen[-1] == 1 and any(0 < value < 1 for value in seen), seen

    def outputs() -> list[Any]:
        found: list[Any] = browser.find_elements("css selector", "img.output")
        return found if len(found) == 2 else []

    def natural_size(image: Any) -> list[int] | None:
        """[width, height] once decoded (a broken image has none)."""
        size = "return [arguments[0].naturalWidth, arguments[0].naturalHeight]"
        width_height: list[int] = browser.execute_script(size, image)
        return width_height if width_height[0] else None

    images = wait_until(outputs, "two outputs")
    sizes = [wait_until(lambda i=i: natural_size(i), "decoded") for i in images]
    assert sizes == [[96, 64], [96, 64]]
    assert by_id(browser, "balance").text == "Balance: 800 credits"
    code = browser.find_element("css selector", "#run details").get_attribute("textContent")
    assert '"num_inference_steps": 100' in code and "/v2/ssd-img2img" in code
    assert 'client.run("ssd-img2img", **{' in code
    browser.execute_script("document.getElementById('run').scrollIntoView()")
    screenshot(browser, "console-try", tmp_path)
    assert not error_text(browser)


def test_cancel_stops_a_running_job(browser: Any, live_stack: Stack, picture: Path) -> None:
    _, key = live_stack.create_account(credits=2000, name="console-cancel")
    sign_in(browser, live_stack, key)
    by_id(browser, "image-file").send_keys(str(picture))
    by_id(browser, "prompt").send_keys("a boat")
    set_value(browser, "samples", "4")
    set_value(browser, "steps", "100")
    set_value(browser, "strength", "0.99")
    by_id(browser, "try-form").submit()
    wait_until(lambda: "PROCESSING: step" in text_of(browser, "run-state"), "denoising")
    request_id = by_id(browser, "run").find_element("tag name", "h3").text.split()[-1]
    by_id(browser, "cancel").click()
    wait_until(lambda: text_of(browser, "run-state").startswith("CANCELLED"), "cancelled", 300)
    with live_stack.client(key) as client:
        final = wait_terminal(client, f"/v2/requests/{request_id}/status")
    assert final["status"] == "CANCELLED"


def test_requests_are_paged_and_one_opens_with_its_parameters(
    browser: Any, live_stack: Stack, tmp_path: Path
) -> None:
    account_id, key = live_stack.create_account(credits=1000, name="console-requests")
    with live_stack.client(key) as client:
        done = client.post("/v2/ssd-img2img", json=job_body(prompt="a green kite")).json()
        wait_terminal(client, done["status_url"])
    for _ in range(11):  # never run: a pool no worker serves
        insert_job(account_id, JobStatus.QUEUED, cost=20, queue=HELD_POOL)
    sign_in(browser, live_stack, key)
    listing = go(browser, "requests", "request-list")
    wait_until(lambda: len(listing.find_elements("css selector", "tbody tr")) == 10, "page 1")
    older = listing.find_element("xpath", ".//button[text()='Older']")
    older.click()
    wait_until(lambda: "page 2" in listing.text, "page 2")
    rows = listing.find_elements("css selector", "tbody tr")
    assert len(rows) == 2 and done["request_id"] in listing.text  # the oldest: the real job
    choose(by_id(browser, "status-filter"), "COMPLETED")
    wait_until(lambda: "page 1" in listing.text and "QUEUED" not in listing.text, "filtered")
    assert len(listing.find_elements("css selector", "tbody tr")) == 1
    listing.find_element("xpath", f"//button[text()='{done['request_id']}']").click()
    detail = by_id(browser, "request-detail")
    wait_until(lambda: "a green kite" in text_of(browser, "request-detail"), "its parameters", 30)
    assert "COMPLETED" in detail.text and "seed" in detail.text
    image = wait_until(lambda: detail.find_elements("css selector", "img.output"), "output")[0]
    wait_until(lambda: browser.execute_script("return arguments[0].naturalWidth", image), "decode")
    assert browser.execute_script("return arguments[0].naturalWidth", image) == 96
    screenshot(browser, "console-requests", tmp_path)


def test_the_account_page_shows_the_balance_and_ledger(
    browser: Any, live_stack: Stack, tmp_path: Path
) -> None:
    _, key = live_stack.create_account(credits=750, name="console-account")
    sign_in(browser, live_stack, key)
    balance = go(browser, "account", "account-balance")
    assert balance.text == "750 credits"
    page = by_id(browser, "main").text
    assert "Limits" in page and "Recent ledger entries" in page
    screenshot(browser, "console-account", tmp_path)


def test_a_webhook_endpoint_made_in_the_console_shows_its_deliveries(
    browser: Any, live_stack: Stack, tmp_path: Path
) -> None:
    _, key = live_stack.create_account(credits=1000, name="console-webhooks")
    sign_in(browser, live_stack, key)
    with webhook_receiver() as receiver:
        go(browser, "webhooks", "endpoint-form")
        set_value(browser, "endpoint-url", receiver.url("/console-hook"))
        by_id(browser, "endpoint-form").submit()
        endpoints = by_id(browser, "endpoint-list")
        wait_until(lambda: "/console-hook" in endpoints.text, "the endpoint listed")
        with live_stack.client(key) as client:
            job = client.post("/v2/ssd-img2img", json=job_body()).json()
            wait_terminal(client, job["status_url"])
        receiver.wait_for("/console-hook", 2)
        wait_until(lambda: _deliveries_shown(browser), "deliveries in the log", timeout=60)
        log = by_id(browser, "delivery-log").text
        assert "job.completed" in log and re.search(r"200 \(\d+ ms\), succeeded", log)
        by_id(browser, "reveal-secret").click()
        secret = wait_until(lambda: browser.find_elements("id", "secret-value"), "the secret")[0]
        assert secret.text.startswith("whsec_")
        screenshot(browser, "console-webhooks", tmp_path)
        endpoints = by_id(browser, "endpoint-list")  # the page was drawn again
        endpoints.find_element("xpath", ".//button[text()='Disable']").click()
        wait_until(lambda: "disabled" in text_of(browser, "endpoint-list"), "disabled")
        button(browser, "endpoint-list", "Enable").click()
        wait_until(
            lambda: re.search(r"\benabled\b", text_of(browser, "endpoint-list")), "enabled again"
        )

        # A replay sends the delivery again, with the same webhook-id.
        first = receiver.at("/console-hook")
        button(browser, "delivery-log", "Replay").click()
        again = receiver.wait_for("/console-hook", len(first) + 1)[-1]
        assert again.headers["webhook-id"] in {r.headers["webhook-id"] for r in first}

        old_secret = text_of(browser, "secret-value")
        by_id(browser, "main").find_element("xpath", ".//button[text()='Rotate secret']").click()
        accept_dialog(browser)
        wait_until(lambda: text_of(browser, "secret-value") not in ("", old_secret), "rotated")
        assert text_of(browser, "secret-value").startswith("whsec_")

        button(browser, "endpoint-list", "Delete").click()
        accept_dialog(browser)
        wait_until(lambda: "No endpoints." in text_of(browser, "endpoint-list"), "deleted")


def accept_dialog(browser: Any) -> None:
    """OK on the page's confirm() question, once it is open."""
    from selenium.common.exceptions import NoAlertPresentException

    def dialog() -> Any:
        try:
            return browser.switch_to.alert
        except NoAlertPresentException:
            return None

    wait_until(dialog, "the confirmation question", timeout=30).accept()


def button(browser: Any, within: str, label: str) -> Any:
    found = wait_until(
        lambda: by_id(browser, within).find_elements("xpath", f".//button[text()='{label}']"),
        f"a {label} button",
    )
    return found[0]


def _deliveries_shown(browser: Any) -> bool:
    """Draws the page again (as a reader's reload would) and looks at the log."""
    browser.execute_script("window.dispatchEvent(new HashChangeEvent('hashchange'))")
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        if "job.completed" in text_of(browser, "delivery-log"):
            return True
        time.sleep(0.1)
    return False


def test_the_console_fits_a_phone(live_stack: Stack, tmp_path: Path) -> None:
    _, key = live_stack.create_account(credits=100, name="console-phone")
    with chromium(width=390, height=844) as phone:
        sign_in(phone, live_stack, key)
        for page, ready in (("try", "try-form"), ("account", "account-balance")):
            go(phone, page, ready)
            overflow = phone.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth"
            )
            assert overflow <= 0, (page, overflow)
        go(phone, "try", "try-form")
        screenshot(phone, "console-phone", tmp_path)
