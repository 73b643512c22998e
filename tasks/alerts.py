"""Alert delivery as a Celery task: one outbox pass (scans also run one at their end)."""

from __future__ import annotations

from typing import Any

from worker import db
from worker.alert import outbox
from worker.celery_app import app, periodic_options
from worker.settings import get_settings


def deliver_alerts(*, trigger: str = "cli") -> dict[str, Any]:
    """Send every due notification once; the figures of the pass."""
    settings = get_settings()
    report = outbox.deliver_pending(db.get_engine(settings), settings)
    return {"trigger": trigger, **report.as_dict()}


@app.task(name="sessionkeeper.deliver_alerts", **periodic_options())
def deliver_alerts_task(self: Any, trigger: str = "beat") -> dict[str, Any]:
    """Beat entry `deliver_alerts` (alerts.deliver_schedule, default every minute)."""
    return deliver_alerts(trigger=trigger)
