"""Stand-in for the alerts helper's outbox: queue notifications in alert_deliveries.

Only ``enqueue`` with the agreed signature, so the anomaly scan can write its notifications in
its own transaction. The alerts branch replaces this module with the real outbox (sinks,
delivery, retries); this stub queues for the always-present log sink only.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from worker import models
from worker.settings import Settings

#: what happened to the alert; anything else is refused
EVENTS = ("new", "escalated", "repeat", "resolved", "mass", "test")


def enqueue(
    conn: sa.Connection,
    *,
    alert_id: int | None,
    event: str,
    payload: Mapping[str, Any],
    settings: Settings | None = None,
) -> None:
    """Queue a notification in the caller's transaction (rolled back with it)."""
    if event not in EVENTS:
        raise ValueError(f"unknown alert event {event!r}; expected one of {', '.join(EVENTS)}")
    now = datetime.now(UTC)
    conn.execute(
        sa.insert(models.alert_deliveries).values(
            alert_id=alert_id,
            sink="log",
            event=event,
            payload=dict(payload),
            status="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )
