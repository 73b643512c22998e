"""The Celery task ``sessionkeeper.scan``: read settings, run one scan, return its figures."""

from __future__ import annotations

from typing import Any

from tasks.anomaly import scan
from worker import db
from worker.celery_app import app, periodic_options
from worker.settings import get_settings


@app.task(name="sessionkeeper.scan", **periodic_options())
def scan_task(self: Any, trigger: str = "beat") -> dict[str, Any]:
    """Run one anomaly scan (beat: every minute by default); retried while the database is away."""
    settings = get_settings()
    result = scan.run_scan(db.get_engine(settings), settings, trigger=trigger, task_id=self.request.id)
    return {"figures": result.figures, "unavailable": result.unavailable, "skipped": result.skipped}
