"""Every sink against a real local HTTP server: signed webhook, Slack, Sentry, a hanging sink."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.receiver import HANG, Answer, Receiver
from worker.alert import dispatch, webhook
from worker.settings import Settings, load_settings

pytestmark = pytest.mark.integration
SECRET = "whsec-test"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


def settings_for(monkeypatch: pytest.MonkeyPatch, **sections: Any) -> Settings:
    """Settings from the environment, as an operator would set them."""
    for section, values in sections.items():
        for key, value in values.items():
            env = f"SESSIONKEEPER_{section.upper()}__{key.upper()}"
            monkeypatch.setenv(env, value if isinstance(value, str) else json.dumps(value))
    return load_settings()


def by_sink(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["sink"]: r for r in results}


def test_test_send_reaches_every_sink(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_for(
        monkeypatch,
        alerts={
            "webhooks": [
                {"name": "ops", "url": receiver.url("/ops"), "secret": SECRET},
                {"name": "chat", "url": receiver.url("/chat"), "format": "slack"},
            ]
        },
        sentry={"dsn": receiver.url("/").replace("http://", "http://publickey@") + "42"},
    )
    results = by_sink(dispatch.send_test(settings))
    assert set(results) == {"log", "sentry", "ops", "chat"}
    assert all(r["ok"] for r in results.values()), results

    (ops,) = receiver.received("/ops")
    assert webhook.verify(SECRET, ops.headers["x-sessionkeeper-signature"], ops.body)
    doc = json.loads(ops.body)
    assert doc["event"] == "test"
    assert doc["alert"]["rule"] == "test"
    assert ops.headers["x-sessionkeeper-event"] == "test"

    (chat,) = receiver.received("/chat")
    assert "x-sessionkeeper-signature" not in chat.headers
    assert json.loads(chat.body)["text"].startswith(":information_source: TEST:")

    (envelope,) = receiver.received("/api/42/envelope/")
    assert "sentry_key=publickey" in envelope.headers["x-sentry-auth"]
    item = envelope.body.split(b"\n")[2]
    event = json.loads(item)
    assert event["fingerprint"] == ["sessionkeeper-alert", "test", "global"]
    assert event["tags"]["rule"] == "test"
    assert event["tags"]["severity"] == "info"


def test_failures_are_reported_per_sink_without_the_url(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver.script("/down/token-in-path", Answer(status=503, body=b"maintenance"))
    settings = settings_for(
        monkeypatch,
        alerts={
            "webhooks": [
                {"name": "down", "url": receiver.url("/down/token-in-path")},
                {"name": "closed", "url": "http://127.0.0.1:9/hook", "timeout": "1s"},
                {"name": "up", "url": receiver.url("/up")},
            ]
        },
    )
    results = by_sink(dispatch.send_test(settings))
    assert results["up"]["ok"]
    assert results["down"] == results["down"] | {
        "ok": False,
        "status_code": 503,
        "error": "HTTP 503: maintenance",
    }
    assert not results["closed"]["ok"]
    assert results["closed"]["error"].startswith("ConnectError")
    assert "token-in-path" not in json.dumps(results)


def test_a_hanging_sink_is_cut_off_and_others_still_deliver(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver.script("/hang", HANG)
    settings = settings_for(
        monkeypatch,
        alerts={
            "webhooks": [
                {"name": "hang", "url": receiver.url("/hang"), "timeout": "500ms"},
                {"name": "up", "url": receiver.url("/up")},
            ]
        },
    )
    started = time.monotonic()
    results = by_sink(dispatch.send_test(settings))
    elapsed = time.monotonic() - started
    assert results["up"]["ok"]
    assert not results["hang"]["ok"]
    assert "0.5s" in results["hang"]["error"] or "Timeout" in results["hang"]["error"]
    assert elapsed < 2
    assert len(receiver.received("/up")) == 1


def test_a_trickling_sink_is_cut_off_at_the_timeout_too(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # each byte arrives well within the read timeout; only the whole-attempt bound stops it
    receiver.script("/slow", Answer(body=b"x" * 100, trickle=0.1))
    settings = settings_for(
        monkeypatch,
        alerts={"webhooks": [{"name": "slow", "url": receiver.url("/slow"), "timeout": "500ms"}]},
    )
    started = time.monotonic()
    results = by_sink(dispatch.send_test(settings))
    assert not results["slow"]["ok"]
    assert results["slow"]["error"] == "no answer within 0.5s"
    assert time.monotonic() - started < 1.5
