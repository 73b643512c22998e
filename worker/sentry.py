"""Sentry for the worker, beat and API processes: initialised from settings, never at import."""

from __future__ import annotations

from typing import Any

from worker.settings import Settings

_SCRUB_KEYS = ("token", "session", "cookie", "authorization", "password", "secret", "keep_session_id")


def _scrub(event: Any, _hint: Any) -> Any:
    # Task arguments and request data may hold session ids: drop them from every event.
    for frame_holder in (event.get("extra") or {}, (event.get("request") or {}).get("headers") or {}):
        for key in list(frame_holder):
            if any(word in key.lower() for word in _SCRUB_KEYS):
                frame_holder[key] = "[scrubbed]"
    event.get("request", {}).pop("cookies", None)
    event.get("request", {}).pop("data", None)
    return event


def init_sentry(settings: Settings, *, process: str) -> bool:
    """Initialise sentry-sdk when a DSN is configured; returns whether it was."""
    if settings.sentry.dsn is None:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.logging import LoggingIntegration

    sentry_sdk.init(
        dsn=settings.sentry.dsn.get_secret_value(),
        environment=settings.sentry.environment,
        traces_sample_rate=settings.sentry.traces_sample_rate,
        # PII stays off: sentry-sdk's default when neither send_default_pii (deprecated since
        # 2.76) nor data_collection is passed; tests/acceptance/test_sentry.py checks events.
        server_name=None,
        before_send=_scrub,
        integrations=[
            CeleryIntegration(monitor_beat_tasks=True),
            # Errors are reported explicitly; ERROR log lines would otherwise make a second event.
            LoggingIntegration(event_level=None),
        ],
    )
    sentry_sdk.set_tag("process", process)
    return True
