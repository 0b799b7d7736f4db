"""Webhook building blocks without the stack: signatures checked by the
`standardwebhooks` library, retry timing rules, the progress throttle, and the POST
of common.urlsafety against a real loopback receiver."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from common import urlsafety
from common.webhooks import delivery, signing
from common.webhooks.events import ProgressThrottle, event_type
from tests.support.webhook_receiver import Answer, webhook_receiver


def _headers(webhook_id: str, timestamp: int, signature: str) -> dict[str, str]:
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def test_signature_verifies_with_the_standardwebhooks_library() -> None:
    secret = signing.generate_secret()
    assert secret.startswith("whsec_")
    assert len(signing.secret_key(secret)) == signing.SECRET_BYTES
    body = delivery.encode_body({"type": "job.completed", "data": {"request_id": "x"}})
    webhook_id, now = signing.new_webhook_id(), int(time.time())
    header = signing.signature_header([secret], webhook_id, now, body)
    assert Webhook(secret).verify(body, _headers(webhook_id, now, header))["type"] == (
        "job.completed"
    )
    # Any change to the id, the timestamp or the body breaks it.
    for wid, ts, data in ((webhook_id + "x", now, body), (webhook_id, now + 1, body)):
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(data, _headers(wid, ts, header))
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", _headers(webhook_id, now, header))
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.generate_secret()).verify(body, _headers(webhook_id, now, header))


def test_signature_is_plain_hmac_sha256() -> None:
    """What a receiver without the library computes (README)."""
    secret, body, webhook_id, now = signing.generate_secret(), b'{"a":1}', "msg_1", 1700000000
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(
        hmac.new(key, f"{webhook_id}.{now}.".encode() + body, hashlib.sha256).digest()
    ).decode()
    assert signing.sign(secret, webhook_id, now, body) == f"v1,{expected}"


def test_two_secrets_give_two_signatures_each_verifying_alone() -> None:
    old, new = signing.generate_secret(), signing.generate_secret()
    body, webhook_id, now = b"{}", signing.new_webhook_id(), int(time.time())
    first, second = signing.signature_header([new, old], webhook_id, now, body).split(" ")
    Webhook(new).verify(body, _headers(webhook_id, now, first))
    Webhook(old).verify(body, _headers(webhook_id, now, second))
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(body, _headers(webhook_id, now, first))


def test_bad_secrets_are_refused() -> None:
    for bad in ("secret", "whsec_", "whsec_***"):
        with pytest.raises(ValueError):
            signing.secret_key(bad)


def test_event_names() -> None:
    assert event_type("started").value == "job.started"
    assert event_type("job.completed").short == "completed"
    with pytest.raises(ValueError):
        event_type("finished")


def test_classify_answers() -> None:
    assert [delivery.classify(s) for s in (200, 204, 299)] == ["delivered"] * 3
    assert [delivery.classify(s) for s in (429, 500, 502, 503)] == ["retry"] * 4
    assert delivery.classify(410) == "gone"
    assert [delivery.classify(s) for s in (301, 302, 307, 400, 401, 404, 422)] == ["failed"] * 7


def test_retry_after_in_seconds_or_as_a_date() -> None:
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    assert delivery.parse_retry_after("120") == 120
    assert delivery.parse_retry_after(format_datetime(now + timedelta(seconds=90), True), now) == 90
    assert delivery.parse_retry_after(format_datetime(now - timedelta(hours=1), True), now) == 0
    assert delivery.parse_retry_after("soon") is None
    assert delivery.parse_retry_after(None) is None


def test_retry_delay_equal_jitter_and_retry_after_cap() -> None:
    rng = random.Random(1)
    delays = [delivery.retry_delay(10, None, 3600, rng) for _ in range(500)]
    assert 5 <= min(delays) < 5.5 and 9.5 < max(delays) <= 10  # spread over [bound/2, bound]
    assert all(delivery.retry_delay(10, 60, 3600, rng) == 60 for _ in range(20))  # not before
    assert delivery.retry_delay(10, 10**9, 3600, rng) == 3600  # capped
    assert delivery.retry_delay(100, 1, 3600, random.Random(2)) >= 1


def test_progress_throttle_allows_one_per_interval_per_job() -> None:
    now = [0.0]
    throttle = ProgressThrottle(5, clock=lambda: now[0], max_jobs=2)
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert throttle.allow(a) and throttle.allow(b)
    assert not throttle.allow(a)
    now[0] = 4.9
    assert not throttle.allow(a)
    now[0] = 5.0
    assert throttle.allow(a)
    assert throttle.allow(c)  # a third job pushes the oldest (b) out
    assert throttle.allow(b)


# --- urlsafety.post ---------------------------------------------------------------------


def test_post_sends_the_body_and_returns_any_status() -> None:
    with webhook_receiver() as receiver:
        receiver.script("/h", Answer(503, {"Retry-After": "7"}))
        response = urlsafety.post(
            receiver.url("/h"),
            b'{"x":1}',
            headers={"content-type": "application/json", "webhook-id": "msg_1"},
            timeout=5,
            allow_loopback=True,
        )
        assert response.status == 503 and response.header("retry-after") == "7"
        (seen,) = receiver.at("/h")
        assert seen.method == "POST" and seen.body == b'{"x":1}'
        assert seen.headers["webhook-id"] == "msg_1"
        assert seen.headers["host"] == f"127.0.0.1:{receiver.port}"


def test_post_follows_no_redirect() -> None:
    with webhook_receiver() as receiver:
        receiver.script("/from", Answer(307, {"Location": receiver.url("/to")}))
        response = urlsafety.post(
            receiver.url("/from"), b"{}", headers={}, timeout=5, allow_loopback=True
        )
        assert response.status == 307
        assert receiver.at("/to") == []


def test_post_refuses_private_targets_before_connecting() -> None:
    with pytest.raises(urlsafety.UnsafeUrlError, match="private"):
        urlsafety.post("http://10.0.0.7/h", b"{}", headers={}, timeout=5, allow_loopback=True)
    with pytest.raises(urlsafety.UnsafeUrlError, match="link-local"):
        urlsafety.post(
            "http://hooks.example.com/h",
            b"{}",
            headers={},
            timeout=5,
            allow_loopback=True,
            resolver=lambda host, port: ["169.254.169.254"],
        )
    with pytest.raises(urlsafety.UnsafeUrlError, match="loopback"):
        urlsafety.post("http://127.0.0.1:9/h", b"{}", headers={}, timeout=5, allow_loopback=False)


def test_post_without_an_answer_is_a_fetch_error() -> None:
    with webhook_receiver() as receiver:
        port = receiver.port
    with pytest.raises(urlsafety.FetchError, match="could not connect"):
        urlsafety.post(
            f"http://127.0.0.1:{port}/h", b"{}", headers={}, timeout=5, allow_loopback=True
        )
