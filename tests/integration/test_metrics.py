"""/metrics from a real migrated database: values from our tables, and every name ops rely on."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.test_deploy import HISTOGRAM_SUFFIXES, dashboard_exprs, metric_names, rule_exprs
from worker import db, metrics, models
from worker.errors import DatabaseUnavailable
from worker.sessiontable import utcnow

pytestmark = pytest.mark.integration


def samples(body: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text page as {(name, labels): value}."""
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(page: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return page[(name, frozenset(labels.items()))]


def seed(engine: sa.engine.Engine) -> dict[str, Any]:
    """A few rows in each table, some today (UTC) and some yesterday."""
    now = utcnow()
    midnight = metrics.start_of_day(now)
    today = midnight + (now - midnight) / 2  # in the past, and on today's side of midnight
    yesterday = midnight - timedelta(hours=3)
    runs = models.job_runs
    with engine.begin() as conn:

        def run(job: str, outcome: str, start: datetime, seconds: float, **figures: Any) -> None:
            conn.execute(
                sa.insert(runs).values(
                    job=job,
                    trigger="beat",
                    started_at=start,
                    finished_at=start + timedelta(seconds=seconds),
                    outcome=outcome,
                    figures=figures,
                )
            )

        run("purge", "succeeded", yesterday, 1.0, deleted_by_reason={"expired": 500})
        run(
            "purge",
            "succeeded",
            today + timedelta(seconds=1),
            2.5,
            deleted_by_reason={"expired": 10, "idle": 2},
        )
        run("purge", "failed", today + timedelta(seconds=10), 4.0, deleted_by_reason={"expired": 5})
        run("purge", "succeeded", today, 0.5, dry_run=True, deleted_by_reason={"expired": 1000})
        run("stats", "succeeded", today, 1.5)
        run("scan", "skipped", today, 0.1)
        conn.execute(sa.insert(runs).values(job="stats", trigger="beat", started_at=now, outcome="running"))
        snapshot = {
            "total_rows": 1000,
            "expired_pending": 40,
            "null_expiry": 0,
            "users_active": 300,
            "purge_lag_seconds": 90.0,
            "table_bytes": 8192 * 100,
            "index_bytes": 8192 * 40,
        }
        conn.execute(sa.insert(models.stats_snapshots).values(taken_at=yesterday, active=1, **snapshot))
        conn.execute(sa.insert(models.stats_snapshots).values(taken_at=today, active=900, **snapshot))
        conn.execute(
            sa.insert(models.creation_rollups),
            [
                {"scope": "global", "entity": "", "minute": midnight, "count": 7},
                {"scope": "global", "entity": "", "minute": yesterday, "count": 100},
                {
                    "scope": "user",
                    "entity": "u1",
                    "minute": today.replace(second=0, microsecond=0),
                    "count": 4,
                },
            ],
        )

        def alert(rule: str, severity: str, state: str, first_seen: datetime) -> dict[str, Any]:
            return {
                "fingerprint": uuid.uuid4().hex,
                "rule": rule,
                "entity": "",
                "severity": severity,
                "state": state,
                "first_seen": first_seen,
                "last_seen": first_seen,
            }

        conn.execute(
            sa.insert(models.alerts),
            [
                alert("global_spike", "critical", "open", today),
                alert("user_burst", "warning", "resolved", yesterday),
                alert("user_burst", "warning", "open", yesterday),
            ],
        )

        def job(status: str) -> dict[str, Any]:
            return {"id": str(uuid.uuid4()), "user_id": "u1", "status": status, "created_at": today}

        conn.execute(sa.insert(models.revocation_jobs), [job("succeeded"), job("succeeded"), job("queued")])
    return {"today": today}


def test_metrics_from_our_tables(any_url: str) -> None:
    engine = db.make_engine(any_url)
    try:
        seeded = seed(engine)
        body, content_type = metrics.render(engine)
    finally:
        engine.dispose()
    assert content_type.startswith("text/plain; version=0.0.4")
    page = samples(body)

    assert value(page, "sessionkeeper_job_runs_total", job="purge", outcome="succeeded") == 2
    assert value(page, "sessionkeeper_job_runs_total", job="purge", outcome="failed") == 1
    assert value(page, "sessionkeeper_job_runs_total", job="scan", outcome="skipped") == 1
    # Jobs that never ran are there with zero: increase() never misses a first failure.
    assert value(page, "sessionkeeper_job_runs_total", job="revoke", outcome="failed") == 0
    assert value(page, "sessionkeeper_job_last_success_timestamp_seconds", job="purge") == pytest.approx(
        (seeded["today"] + timedelta(seconds=3.5)).timestamp(), abs=1e-3
    )
    assert ("sessionkeeper_job_last_success_timestamp_seconds", frozenset({("job", "scan")})) not in page
    # The newest finished purge run is the failed one; the running stats run is not finished.
    assert value(page, "sessionkeeper_job_last_duration_seconds", job="purge") == pytest.approx(4.0)
    assert value(page, "sessionkeeper_job_last_duration_seconds", job="stats") == pytest.approx(1.5)

    # Today's real runs only: yesterday's 500 and the dry run's 1000 are not counted.
    assert value(page, "sessionkeeper_sessions_purged_total", reason="expired") == 15
    assert value(page, "sessionkeeper_sessions_purged_total", reason="idle") == 2
    assert value(page, "sessionkeeper_sessions_purged_total", reason="over_cap") == 0

    assert value(page, "sessionkeeper_sessions_active") == 900
    assert value(page, "sessionkeeper_users_active") == 300
    assert value(page, "sessionkeeper_sessions_expired_pending") == 40
    assert value(page, "sessionkeeper_purge_lag_seconds") == 90
    assert value(page, "sessionkeeper_table_bytes", kind="table") == 819200
    assert value(page, "sessionkeeper_table_bytes", kind="index") == 327680

    assert value(page, "sessionkeeper_sessions_created_total") == 7

    assert value(page, "sessionkeeper_alerts_open", rule="global_spike", severity="critical") == 1
    assert value(page, "sessionkeeper_alerts_open", rule="user_burst", severity="warning") == 1
    assert value(page, "sessionkeeper_alerts_total", rule="global_spike", severity="critical") == 1
    assert value(page, "sessionkeeper_alerts_total", rule="user_burst", severity="warning") == 0

    assert value(page, "sessionkeeper_revocation_jobs", status="succeeded") == 2
    assert value(page, "sessionkeeper_revocation_jobs", status="queued") == 1
    assert value(page, "sessionkeeper_revocation_jobs", status="failed") == 0


def test_every_metric_the_dashboard_and_rules_read_is_exported(pg_url: str) -> None:
    metrics.observe_request(method="GET", route="/v1/stats", status=200, seconds=0.012)
    engine = db.make_engine(pg_url)
    try:
        seed(engine)
        body, _ = metrics.render(engine)
    finally:
        engine.dispose()
    served = {name for name, _labels in samples(body)}
    for suffix in HISTOGRAM_SUFFIXES:
        served |= {name.removesuffix(suffix) for name in served if name.endswith(suffix)}
    used = set().union(*(metric_names(e) for e in [*dashboard_exprs(), *rule_exprs()]))
    assert used, "found no metric names in the dashboard and rules"
    assert used <= served, f"read by the dashboard or rules but not served: {sorted(used - served)}"
    assert set(metrics.METRIC_NAMES) <= served


def test_metrics_on_an_empty_database(pg_url: str) -> None:
    engine = db.make_engine(pg_url)
    try:
        page = samples(metrics.render(engine)[0])
    finally:
        engine.dispose()
    assert value(page, "sessionkeeper_job_runs_total", job="purge", outcome="succeeded") == 0
    assert value(page, "sessionkeeper_sessions_created_total") == 0
    assert value(page, "sessionkeeper_revocation_jobs", status="queued") == 0
    # No snapshot yet: no made-up zeros for figures nobody measured.
    assert not [key for key in page if key[0] == "sessionkeeper_sessions_active"]


def test_metrics_with_the_database_away() -> None:
    engine = db.make_engine("postgresql://postgres@127.0.0.1:9/none", connect_timeout=1)
    try:
        with pytest.raises(DatabaseUnavailable, match="database unreachable"):
            metrics.render(engine)
    finally:
        engine.dispose()
