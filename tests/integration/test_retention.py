"""Retention trims only what is older than its window, and never a running job or an open alert."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from tasks.retention import trim_history
from worker import db, models
from worker.sessiontable import utcnow

pytestmark = pytest.mark.integration


def test_trims_old_rows_only(any_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(any_url)
    engine = db.get_engine(settings)
    now = utcnow()
    old, recent = now - timedelta(days=400), now - timedelta(hours=1)
    with engine.begin() as conn:
        for started, outcome in ((old, "succeeded"), (recent, "succeeded"), (old, "running")):
            conn.execute(sa.insert(models.job_runs).values(job="purge", started_at=started, outcome=outcome))
        conn.execute(
            sa.insert(models.stats_snapshots),
            [
                {"taken_at": t, "total_rows": 1, "active": 1, "expired_pending": 0, "null_expiry": 0}
                for t in (old, recent)
            ],
        )
        for i, (state, resolved) in enumerate((("resolved", old), ("open", None), ("resolved", recent))):
            conn.execute(
                sa.insert(models.alerts).values(
                    fingerprint=f"f{i}",
                    rule="user_burst",
                    entity="u",
                    severity="warning",
                    state=state,
                    first_seen=old,
                    last_seen=old,
                    resolved_at=resolved,
                )
            )
        conn.execute(
            sa.insert(models.alert_deliveries),
            [
                {
                    "alert_id": None,
                    "sink": "log",
                    "event": "test",
                    "payload": {},
                    "status": status,
                    "next_attempt_at": created,
                    "created_at": created,
                }
                for status, created in (("sent", old), ("pending", old), ("sent", recent))
            ],
        )
    deleted = trim_history(engine, settings, trigger="test")
    assert deleted["job_runs"] == 1
    assert deleted["stats_snapshots"] == 1
    assert deleted["alerts"] == 1
    assert deleted["alert_deliveries"] == 1  # the old pending one stays: it is still owed
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(models.alerts)).scalar() == 2
        runs = conn.execute(sa.select(models.job_runs.c.outcome, models.job_runs.c.job)).all()
    assert ("running", "purge") in runs
    assert ("succeeded", "retention") in runs


def test_a_run_left_running_by_a_dead_process_is_closed_as_failed(any_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(any_url)
    engine = db.get_engine(settings)
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            sa.insert(models.job_runs),
            [
                {"job": "retention", "started_at": now - timedelta(hours=2), "outcome": "running"},
                {
                    "job": "retention",
                    "started_at": now - timedelta(minutes=1),
                    "outcome": "running",
                },  # may be alive
                {"job": "purge", "started_at": now - timedelta(hours=2), "outcome": "running"},  # another job
            ],
        )
    trim_history(engine, settings, trigger="test")
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(models.job_runs.c.job, models.job_runs.c.outcome, models.job_runs.c.error).order_by(
                models.job_runs.c.id
            )
        ).all()
    assert rows[0].outcome == "failed" and "interrupted" in rows[0].error
    assert rows[1].outcome == "running"
    assert rows[2].outcome == "running"
