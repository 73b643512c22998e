"""The structured-log sink: every notification as one log line with its figures, always."""

from __future__ import annotations

from typing import Any

from worker.alert.notification import Notification, describe_entity, summary
from worker.observability import get_logger

#: payload keys copied onto the log line as figures
_FIGURES = (
    "rule",
    "severity",
    "window",
    "observed",
    "expected",
    "threshold",
    "score",
    "count",
    "suppressed",
    "first_seen",
    "reason",
)

log = get_logger("sessionkeeper.alert")


class LogSink:
    """Logs notifications; never fails, so the log always has the alert even when others do not."""

    name = "log"
    kind = "log"
    timeout = 5.0

    async def send(self, note: Notification) -> int | None:
        """Write the notification as an `alert_notification` event."""
        figures: dict[str, Any] = {k: note.payload[k] for k in _FIGURES if k in note.payload}
        quiet = note.event in {"resolved", "test"} or figures.get("severity") == "info"
        # WARNING at most: Sentry's LoggingIntegration turns ERROR lines into events, and the
        # Sentry sink already sends this alert with a fingerprint; an error here would double it.
        emit = log.info if quiet else log.warning
        emit(
            "alert_notification",
            alert_event=note.event,
            alert_id=note.alert_id,
            delivery_id=note.delivery_id,
            entity=describe_entity(note.payload),
            summary=summary(note),
            **figures,
        )
        return None

    async def aclose(self) -> None:
        """Nothing to release."""
