"""Webhook signatures and the retry schedule."""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from worker.alert import dispatch, webhook

BODY = b'{"event":"new"}'


def test_signature_format_and_value() -> None:
    header = webhook.sign("s3cret", BODY, timestamp=1_780_000_000)
    t, v1 = header.split(",")
    assert t == "t=1780000000"
    expected = hmac.new(b"s3cret", b"1780000000." + BODY, hashlib.sha256).hexdigest()
    assert v1 == f"v1={expected}"


def test_verify_accepts_fresh_and_refuses_tampering() -> None:
    header = webhook.sign("s3cret", BODY, timestamp=1000)
    assert webhook.verify("s3cret", header, BODY, now=1000)
    assert webhook.verify("s3cret", header, BODY, now=1299)
    assert not webhook.verify("s3cret", header, BODY, now=1301)
    assert not webhook.verify("other", header, BODY, now=1000)
    assert not webhook.verify("s3cret", header, BODY + b" ", now=1000)
    forged = header.replace("t=1000", "t=1001")
    assert not webhook.verify("s3cret", forged, BODY, now=1000)
    assert not webhook.verify("s3cret", "garbage", BODY, now=1000)
    assert not webhook.verify("s3cret", "t=x,v1=00", BODY, now=1000)


def test_verify_accepts_any_of_several_v1_while_rotating() -> None:
    old = webhook.sign("old", BODY, timestamp=1000).split(",")[1]
    new = webhook.sign("new", BODY, timestamp=1000)
    assert webhook.verify("old", f"{new},{old}", BODY, now=1000)


def test_encode_is_compact_and_stable() -> None:
    assert webhook.encode({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()


def test_backoff_doubles_up_to_the_cap() -> None:
    base, cap = timedelta(seconds=30), timedelta(hours=1)
    delays = [dispatch.retry_delay(n, base=base, cap=cap).total_seconds() for n in range(1, 10)]
    assert delays == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert dispatch.retry_delay(10_000, base=base, cap=cap) == cap


def test_backoff_honours_retry_after_within_the_cap() -> None:
    base, cap = timedelta(seconds=30), timedelta(hours=1)
    assert dispatch.retry_delay(1, base=base, cap=cap, retry_after=120).total_seconds() == 120
    assert dispatch.retry_delay(3, base=base, cap=cap, retry_after=5).total_seconds() == 120
    assert dispatch.retry_delay(1, base=base, cap=cap, retry_after=86400) == cap


def test_backoff_counts_from_one() -> None:
    with pytest.raises(ValueError, match="starts at 1"):
        dispatch.retry_delay(0, base=timedelta(seconds=1), cap=timedelta(seconds=2))


def test_the_receiver_snippet_in_the_docs_works() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "alerts.md").read_text()
    snippet = doc.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(snippet, "docs/alerts.md", "exec"), namespace)  # noqa: S102 - our own doc
    verify = namespace["verify"]
    header = webhook.sign("s3cret", BODY, timestamp=int(time.time()))
    assert verify("s3cret", header, BODY)
    assert not verify("wrong", header, BODY)
    assert not verify("s3cret", header, BODY + b"x")
    stale = webhook.sign("s3cret", BODY, timestamp=int(time.time()) - 301)
    assert not verify("s3cret", stale, BODY)
