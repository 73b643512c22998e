"""Operational rules: cleanup stopped (purge lag) and the session table growing out of bounds.

Purge lag reads the session table once (the oldest expiry past the allowance, an index probe)
and the purge job's runs; table growth reads the stats job's snapshots. Neither needs
``created_at``, so they run even where creation-rate detection is unavailable.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.engine import Connection

from tasks.anomaly import queries
from tasks.anomaly.detectors import Finding, Severity
from worker import jobruns
from worker.durations import parse_duration
from worker.sessiontable import SessionTable
from worker.settings import Settings

#: the purge interval assumed when purge.schedule is a crontab rather than a period
CRON_PURGE_INTERVAL = timedelta(hours=1)
#: lag beyond this many purge intervals is critical
CRITICAL_INTERVALS = 6
#: a growth rate needs snapshots at least this far apart to mean anything
MIN_GROWTH_SPAN = timedelta(hours=12)


def purge_interval(settings: Settings) -> timedelta:
    """The purge period from its schedule ("5m"), or CRON_PURGE_INTERVAL for a crontab."""
    try:
        return parse_duration(settings.purge.schedule)
    except ValueError:
        return CRON_PURGE_INTERVAL


def purge_lag(conn: Connection, st: SessionTable, settings: Settings, *, now: datetime) -> Finding | None:
    """Expired rows older than twice the purge interval, or the purge failing or not running."""
    if st.c("expires_at") is None:
        return None
    interval = purge_interval(settings)
    allowance = 2 * interval
    grace = settings.policy.grace
    problems: list[str] = []
    severity: Severity = "warning"
    lag = timedelta(0)
    oldest = queries.oldest_expired(conn, st, now - grace - allowance)
    if oldest is not None:
        lag = now - grace - oldest
        pending = queries.count_expired(conn, st, now - grace - allowance, limit=1_000_000)
        problems.append(
            f"{pending:,}{'+' if pending >= 1_000_000 else ''} expired rows are more than "
            f"{_fmt(allowance)} past their expiry (oldest {_fmt(lag)})"
        )
        if lag >= CRITICAL_INTERVALS * interval:
            severity = "critical"
    runs = jobruns.last_runs(conn, "purge", limit=1, finished_only=True)
    if runs and runs[0]["outcome"] == "failed":
        problems.append(f"the last purge failed: {(runs[0]['error'] or 'no error recorded')[:200]}")
    succeeded = jobruns.last_success(conn, "purge")
    overdue = allowance + settings.purge.max_run_seconds
    if succeeded is not None and now - succeeded > overdue:
        problems.append(
            f"no purge has succeeded for {_fmt(now - succeeded)} (expected every {_fmt(interval)})"
        )
        if now - succeeded >= CRITICAL_INTERVALS * interval:
            severity = "critical"
    if not problems:
        return None
    return Finding(
        rule="purge_lag",
        entity="purge",
        window=allowance,
        observed=lag.total_seconds(),
        expected=interval.total_seconds(),
        baseline_method="purge schedule",
        baseline_window=interval,
        threshold=allowance.total_seconds(),
        score=lag / interval,
        score_kind="ratio",
        severity=severity,
        reason="cleanup is falling behind: " + "; ".join(problems),
        details={"last_purge_success": succeeded.isoformat() if succeeded else None},
    )


def table_growth(conn: Connection, settings: Settings, *, now: datetime) -> Finding | None:
    """Rows or bytes beyond the configured limits, or rows growing faster than allowed per day."""
    cfg = settings.anomaly
    if cfg.table_max_rows is None and cfg.table_max_bytes is None and cfg.table_max_growth_per_day is None:
        return None
    snaps = queries.snapshots_since(conn, now - timedelta(days=2))
    if not snaps:
        return None
    last = snaps[-1]
    rows = int(last["total_rows"])
    size = int((last["table_bytes"] or 0) + (last["index_bytes"] or 0))
    problems: list[str] = []
    observed, threshold, score = float(rows), 0.0, 0.0
    if cfg.table_max_rows is not None and rows > cfg.table_max_rows:
        problems.append(f"{rows:,} rows, above the limit of {cfg.table_max_rows:,}")
        threshold, score = float(cfg.table_max_rows), rows / cfg.table_max_rows
    if cfg.table_max_bytes is not None and size > cfg.table_max_bytes:
        problems.append(f"{size:,} bytes with indexes, above the limit of {cfg.table_max_bytes:,}")
        score = max(score, size / cfg.table_max_bytes)
    growth = None
    if cfg.table_max_growth_per_day is not None:
        then = next((s for s in snaps if last["taken_at"] - s["taken_at"] >= MIN_GROWTH_SPAN), None)
        if then is not None and then["total_rows"]:
            span = last["taken_at"] - then["taken_at"]
            growth = (rows - then["total_rows"]) / then["total_rows"] * (timedelta(days=1) / span)
            if growth > cfg.table_max_growth_per_day:
                problems.append(f"rows grow {growth:.0%} per day, above {cfg.table_max_growth_per_day:.0%}")
                score = max(score, growth / cfg.table_max_growth_per_day)
    if not problems:
        return None
    return Finding(
        rule="table_growth",
        entity="sessions_table",
        # resolved after two clear hours; the limits themselves are not windowed
        window=timedelta(hours=1),
        observed=observed,
        expected=threshold,
        baseline_method="configured limits",
        baseline_window=timedelta(days=1),
        threshold=threshold,
        score=score,
        score_kind="ratio",
        severity="critical" if score >= 2 else "warning",
        reason="the session table is growing out of bounds: " + "; ".join(problems),
        details={"rows": rows, "bytes": size, "growth_per_day": growth},
    )


def _fmt(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds >= 86400:
        return f"{seconds / 86400:.1f}d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds // 60}m" if seconds >= 60 else f"{seconds}s"
