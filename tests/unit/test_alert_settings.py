"""Alert delivery settings: clear errors, and webhook URLs never echoed back."""

from __future__ import annotations

import json

import pytest

from worker.alert import sink
from worker.errors import ConfigurationError
from worker.settings import Settings, load_settings


def problems(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for key, value in env.items():
        monkeypatch.setenv(f"SESSIONKEEPER_ALERTS__{key}", value)
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    return "\n".join(info.value.problems)


@pytest.mark.parametrize(
    ("hooks", "message"),
    [
        (
            [{"url": "https://a.example/t0k3n"}, {"url": "https://b.example/t0k3n"}],
            "two webhooks are named 'webhook'",
        ),
        ([{"name": "log", "url": "https://a.example/t0k3n"}], "'log' is reserved"),
        ([{"name": "a b", "url": "https://a.example/t0k3n"}], "should match pattern"),
        ([{"name": "a", "url": "ftp://a.example/t0k3n"}], "http:// or https:// URL"),
        ([{"name": "a", "url": "https://a.example/t0k3n", "timeout": "2m"}], "at most 60s"),
        ([{"name": "a", "url": "https://a.example/t0k3n", "format": "teams"}], "must be one of"),
    ],
)
def test_webhook_mistakes_are_named_without_the_url(
    monkeypatch: pytest.MonkeyPatch, hooks: list[dict[str, str]], message: str
) -> None:
    text = problems(monkeypatch, WEBHOOKS=json.dumps(hooks))
    assert message in text
    assert "t0k3n" not in text


def test_retry_settings_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    text = problems(monkeypatch, RETRY_BASE="1m", RETRY_MAX="10s", DELIVER_MAX_SECONDS="1h")
    assert "alerts.retry_max" in text and "at least retry_base (1m)" in text
    assert "alerts.deliver_max_seconds" in text and "between 1s and 5m" in text


def test_configured_sinks() -> None:
    plain = Settings()
    assert [s.name for s in sink.configured_sinks(plain)] == ["log"]
    full = Settings(
        sentry={"dsn": "https://k@sentry.example/1"},
        alerts={
            "webhooks": [
                {"name": "ops", "url": "https://ops.example/hook"},
                {"name": "chat", "url": "https://hooks.slack.example/x", "format": "slack"},
            ]
        },
    )
    specs = sink.configured_sinks(full)
    assert [(s.name, s.kind) for s in specs] == [
        ("log", "log"),
        ("sentry", "sentry"),
        ("ops", "webhook"),
        ("chat", "slack"),
    ]
    assert [s.name for s in specs if s.accepts("resolved")] == ["log", "ops", "chat"]
    muted = Settings(sentry={"dsn": "https://k@sentry.example/1"}, alerts={"sentry": False})
    assert [s.name for s in sink.configured_sinks(muted)] == ["log"]
