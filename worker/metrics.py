"""Prometheus metrics for ``/metrics``: job and table figures read from our tables, API request metrics.

The job and table figures are read from the database at scrape time by :class:`TableCollector`,
so every API instance serves the same values and nothing is lost when a process restarts. The
API's own request counter and latency histogram live in process memory on :data:`REGISTRY`.

Counters derived from tables (``*_total``) count what happened since 00:00 UTC and restart from
zero at midnight. A plain count over the table would fall whenever retention trims old rows, and
Prometheus would read each fall as a counter reset and count the whole history again; a daily
window is a real reset that ``rate()``/``increase()`` handle. Labels known in advance are exported
with zero, so a series never springs from nothing (``increase()`` would miss its first value).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from sqlalchemy.engine import Connection, Engine

from worker import db, models
from worker.sessiontable import utcnow

#: every job that records runs in job_runs
JOBS = ("purge", "stats", "scan", "revoke", "outbox", "retention")
#: finished outcomes of job_runs (a "running" row is counted once it finishes)
OUTCOMES = ("succeeded", "failed", "skipped")
#: revocation_jobs.status values
REVOCATION_STATUSES = ("queued", "running", "succeeded", "failed")
#: the purge's reasons for deleting a row; others found in its figures are exported too
PURGE_REASONS = ("expired", "idle", "absolute", "revoked", "over_cap")
#: the purge run figure holding rows deleted per reason: {"expired": 120, "idle": 4, ...}
PURGED_BY_REASON_FIGURE = "deleted_by_reason"
#: a purge run figure that marks a dry run (it deleted nothing)
DRY_RUN_FIGURE = "dry_run"

#: the classic text format: every Prometheus 2.x and 3.x server reads it, and our names are ASCII
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: a run that finished today started at most this long before midnight (far above any time limit)
RUN_START_MARGIN = timedelta(days=1)

#: seconds; API latency buckets, from a cached read to a slow revocation enqueue
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: the metric names /metrics serves (the contract of deploy/prometheus and deploy/grafana)
METRIC_NAMES = (
    "sessionkeeper_job_last_success_timestamp_seconds",
    "sessionkeeper_job_last_duration_seconds",
    "sessionkeeper_job_runs_total",
    "sessionkeeper_sessions_purged_total",
    "sessionkeeper_purge_lag_seconds",
    "sessionkeeper_sessions_expired_pending",
    "sessionkeeper_sessions_active",
    "sessionkeeper_users_active",
    "sessionkeeper_sessions_created_total",
    "sessionkeeper_alerts_open",
    "sessionkeeper_alerts_total",
    "sessionkeeper_revocation_jobs",
    "sessionkeeper_api_requests_total",
    "sessionkeeper_api_request_duration_seconds",
    "sessionkeeper_table_bytes",
)
#: the metric names above that are histograms (served as _bucket, _sum and _count series)
HISTOGRAMS = ("sessionkeeper_api_request_duration_seconds",)

#: the API process's own metrics; private, so nothing a library registers globally leaks out
REGISTRY = CollectorRegistry()

API_REQUESTS = Counter(
    "sessionkeeper_api_requests",
    "HTTP requests served by the API, by route template and status code.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
API_LATENCY = Histogram(
    "sessionkeeper_api_request_duration_seconds",
    "Time from request received to response sent, by route template.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)


def observe_request(*, method: str, route: str, status: int, seconds: float) -> None:
    """Count one API request. ``route`` is the route template (``/v1/jobs/{job_id}``), never the
    raw path, so user and job ids do not become labels; use ``"unmatched"`` for a 404 on no route."""
    API_REQUESTS.labels(method=method, route=route, status=str(status)).inc()
    API_LATENCY.labels(method=method, route=route).observe(seconds)


def start_of_day(now: datetime) -> datetime:
    """00:00 UTC of ``now``'s day: where the table-derived counters start counting."""
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


class TableCollector:
    """A custom collector that reads job runs, snapshots, rollups, alerts and revocations."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        now = utcnow()
        with db.translate_errors(self.engine), self.engine.connect() as conn:
            families = [
                *_job_metrics(conn, since=start_of_day(now)),
                _purged(conn, since=start_of_day(now)),
                *_snapshot_metrics(conn),
                _created(conn, since=start_of_day(now)),
                *_alert_metrics(conn, since=start_of_day(now)),
                _revocations(conn),
            ]
        yield from families


def _job_metrics(conn: Connection, *, since: datetime) -> list[Metric]:
    t = models.job_runs
    last_success = GaugeMetricFamily(
        "sessionkeeper_job_last_success_timestamp_seconds",
        "Unix time the newest succeeded run of each job finished.",
        labels=["job"],
    )
    last_duration = GaugeMetricFamily(
        "sessionkeeper_job_last_duration_seconds",
        "Duration of the newest finished run of each job, whatever its outcome.",
        labels=["job"],
    )
    # One backward walk of the (job, started_at) index per job and question, stopping at the
    # first match: constant cost however much history is kept (a GROUP BY over a month of
    # per-minute runs took 70 ms a scrape).
    newest = (t.c.started_at.desc(), t.c.id.desc())
    for job in JOBS:
        success = conn.execute(
            sa.select(t.c.finished_at)
            .where(t.c.job == job, t.c.outcome == "succeeded", t.c.finished_at.is_not(None))
            .order_by(*newest)
            .limit(1)
        ).first()
        if success is not None:
            last_success.add_metric([job], success.finished_at.timestamp())
        finished = conn.execute(
            sa.select(t.c.started_at, t.c.finished_at)
            .where(t.c.job == job, t.c.outcome != "running", t.c.finished_at.is_not(None))
            .order_by(*newest)
            .limit(1)
        ).first()
        if finished is not None:
            seconds = (finished.finished_at - finished.started_at).total_seconds()
            last_duration.add_metric([job], max(0.0, seconds))

    runs = CounterMetricFamily(
        "sessionkeeper_job_runs_total",
        "Job runs finished since 00:00 UTC, by outcome (restarts from zero at midnight).",
        labels=["job", "outcome"],
    )
    counts: dict[tuple[str, str], int] = {(job, outcome): 0 for job in JOBS for outcome in OUTCOMES}
    query = (
        sa.select(t.c.job, t.c.outcome, sa.func.count(t.c.id).label("n"))
        .where(*_finished_since(since), t.c.outcome != "running")
        .group_by(t.c.job, t.c.outcome)
    )
    for row in conn.execute(query):
        counts[(row.job, row.outcome)] = int(row.n)
    for (job, outcome), n in sorted(counts.items()):
        runs.add_metric([job, outcome], n)
    return [last_success, last_duration, runs]


def _finished_since(since: datetime, *, jobs: tuple[str, ...] = JOBS) -> tuple[Any, ...]:
    """Runs of ``jobs`` finished at or after ``since``, bounded by start time for the index."""
    t = models.job_runs
    return (
        t.c.job.in_(jobs),
        t.c.started_at >= since - RUN_START_MARGIN,
        t.c.finished_at >= since,
    )


def _purged(conn: Connection, *, since: datetime) -> Metric:
    t = models.job_runs
    family = CounterMetricFamily(
        "sessionkeeper_sessions_purged_total",
        "Session rows deleted by purge runs since 00:00 UTC, by reason (restarts at midnight).",
        labels=["reason"],
    )
    totals: dict[str, int] = dict.fromkeys(PURGE_REASONS, 0)
    query = sa.select(t.c.figures).where(
        *_finished_since(since, jobs=("purge",)), t.c.outcome.in_(("succeeded", "failed"))
    )
    # A failed run still deleted what its committed batches deleted, and says so in its figures.
    for (figures,) in conn.execute(query):
        for reason, n in _deleted_by_reason(figures).items():
            totals[reason] = totals.get(reason, 0) + n
    for reason, n in sorted(totals.items()):
        family.add_metric([reason], n)
    return family


def _deleted_by_reason(figures: Any) -> dict[str, int]:
    if not isinstance(figures, dict) or figures.get(DRY_RUN_FIGURE):
        return {}
    by_reason = figures.get(PURGED_BY_REASON_FIGURE)
    if not isinstance(by_reason, dict):
        return {}
    return {
        str(reason): int(n)
        for reason, n in by_reason.items()
        if isinstance(n, int | float) and not isinstance(n, bool) and n >= 0
    }


def _snapshot_metrics(conn: Connection) -> list[Metric]:
    t = models.stats_snapshots
    row = conn.execute(sa.select(t).order_by(t.c.taken_at.desc(), t.c.id.desc()).limit(1)).first()
    gauges = {
        "active": GaugeMetricFamily(
            "sessionkeeper_sessions_active", "Active sessions at the latest stats snapshot."
        ),
        "users_active": GaugeMetricFamily(
            "sessionkeeper_users_active", "Users with at least one active session (latest snapshot)."
        ),
        "expired_pending": GaugeMetricFamily(
            "sessionkeeper_sessions_expired_pending",
            "Expired session rows still in the table (latest snapshot).",
        ),
        "purge_lag_seconds": GaugeMetricFamily(
            "sessionkeeper_purge_lag_seconds",
            "How long the oldest purgeable row has waited past its expiry plus grace (latest snapshot).",
        ),
    }
    table_bytes = GaugeMetricFamily(
        "sessionkeeper_table_bytes",
        "Size of the application's session table (latest snapshot).",
        labels=["kind"],
    )
    if row is not None:
        # A figure the mapping cannot provide is NULL: leave the series out rather than report 0.
        for column, family in gauges.items():
            value = row._mapping[column]
            if value is not None:
                family.add_metric([], float(value))
        for kind, column in (("table", "table_bytes"), ("index", "index_bytes")):
            value = row._mapping[column]
            if value is not None:
                table_bytes.add_metric([kind], float(value))
    return [*gauges.values(), table_bytes]


def _created(conn: Connection, *, since: datetime) -> Metric:
    t = models.creation_rollups
    family = CounterMetricFamily(
        "sessionkeeper_sessions_created_total",
        "Sessions created since 00:00 UTC, from the per-minute creation rollups (restarts at midnight).",
    )
    total = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(t.c.count), 0)).where(
            t.c.scope == "global", t.c.minute >= since
        )
    ).scalar_one()
    family.add_metric([], int(total))
    return family


def _alert_metrics(conn: Connection, *, since: datetime) -> list[Metric]:
    t = models.alerts
    opened = GaugeMetricFamily(
        "sessionkeeper_alerts_open",
        "Alerts currently open, by rule and severity.",
        labels=["rule", "severity"],
    )
    raised = CounterMetricFamily(
        "sessionkeeper_alerts_total",
        "Alerts first seen since 00:00 UTC, by rule and severity (restarts at midnight).",
        labels=["rule", "severity"],
    )
    open_counts: dict[tuple[str, str], int] = defaultdict(int)
    raised_counts: dict[tuple[str, str], int] = defaultdict(int)
    query = sa.select(
        t.c.rule,
        t.c.severity,
        sa.func.sum(sa.case((t.c.state == "open", 1), else_=0)),
        sa.func.sum(sa.case((t.c.first_seen >= since, 1), else_=0)),
    ).group_by(t.c.rule, t.c.severity)
    # Every (rule, severity) in the table is exported, zero or not.
    for rule, severity, n_open, n_raised in conn.execute(query):
        open_counts[(rule, severity)] = int(n_open or 0)
        raised_counts[(rule, severity)] = int(n_raised or 0)
    for labels, n in sorted(open_counts.items()):
        opened.add_metric(list(labels), n)
    for labels, n in sorted(raised_counts.items()):
        raised.add_metric(list(labels), n)
    return [opened, raised]


def _revocations(conn: Connection) -> Metric:
    t = models.revocation_jobs
    family = GaugeMetricFamily(
        "sessionkeeper_revocation_jobs", "Revocation jobs in the table, by status.", labels=["status"]
    )
    counts = dict.fromkeys(REVOCATION_STATUSES, 0)
    for status, n in conn.execute(sa.select(t.c.status, sa.func.count(t.c.id)).group_by(t.c.status)):
        counts[status] = n
    for status, n in sorted(counts.items()):
        family.add_metric([status], n)
    return family


class _ApiMetrics:
    """Hands the process-wide API metrics to a per-scrape registry."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def render(engine: Engine) -> tuple[bytes, str]:
    """The /metrics body and its content type; raises DatabaseUnavailable when the database is away."""
    registry = CollectorRegistry()
    registry.register(TableCollector(engine))
    registry.register(_ApiMetrics())
    return generate_latest(registry), CONTENT_TYPE
