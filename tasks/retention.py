"""Retention: trim our own history tables (job runs, snapshots, rollups, resolved alerts, old jobs)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from worker import db, models
from worker.celery_app import app, periodic_options
from worker.jobruns import job_run
from worker.sessiontable import utcnow
from worker.settings import Settings, get_settings


def trim_history(engine: Engine, settings: Settings, *, trigger: str = "cli") -> dict[str, int]:
    """Delete our rows older than the retention settings; returns rows deleted per table."""
    keep = settings.retention
    now = utcnow()
    t = models
    statements: dict[str, Any] = {
        "job_runs": sa.delete(t.job_runs).where(
            t.job_runs.c.started_at < now - keep.job_runs, t.job_runs.c.outcome != "running"
        ),
        "stats_snapshots": sa.delete(t.stats_snapshots).where(
            t.stats_snapshots.c.taken_at < now - keep.snapshots
        ),
        "creation_rollups": sa.delete(t.creation_rollups).where(
            t.creation_rollups.c.minute < now - keep.rollups
        ),
        "alerts": sa.delete(t.alerts).where(
            t.alerts.c.state == "resolved", t.alerts.c.resolved_at < now - keep.resolved_alerts
        ),
        # Mass and test notifications have no alert row to cascade from: trim them by age.
        "alert_deliveries": sa.delete(t.alert_deliveries).where(
            t.alert_deliveries.c.status.in_(("sent", "failed")),
            t.alert_deliveries.c.created_at < now - keep.resolved_alerts,
        ),
        "revocation_jobs": sa.delete(t.revocation_jobs).where(
            t.revocation_jobs.c.status.in_(("succeeded", "failed")),
            t.revocation_jobs.c.finished_at < now - keep.finished_revocations,
        ),
    }
    deleted: dict[str, int] = {}
    with (
        job_run(engine, "retention", trigger=trigger) as run,
        db.translate_errors(engine),
        engine.begin() as conn,
    ):
        if not db.try_advisory_xact_lock(conn, "retention"):
            run.skip("another retention run holds the lock")
        deleted = {name: conn.execute(stmt).rowcount for name, stmt in statements.items()}
        run.figures.update(deleted)
    return deleted


@app.task(name="sessionkeeper.retention", **periodic_options())
def retention_task(self: Any, trigger: str = "beat") -> dict[str, int]:
    settings = get_settings()
    return trim_history(db.get_engine(settings), settings, trigger=trigger)
