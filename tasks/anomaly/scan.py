"""The incremental anomaly scan: roll new sessions up per minute, run the rules, update alerts.

One scan, in one transaction under an advisory lock (two scans never interleave):
1. read sessions created since the stored watermark minus ``anomaly.lateness`` (a transaction
   that commits late is still counted), or, on the very first scan, since
   ``anomaly.backfill_horizon`` ago, so detection works from the first run on an existing app;
2. add them to per-minute rollups (global, per user, per IP) that survive purges; re-read
   minutes keep the larger count, so overlapping reads never double count;
3. run the creation-rate rules on the rollups and the operational rules on the table, the
   purge runs and the stats snapshots;
4. fold the findings into the alerts table and queue notifications in the outbox.

Without a mapped ``created_at`` the creation-rate part is unavailable and says so; the
operational rules (purge lag, table growth) still run, as they do not need it.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection, Engine

from tasks.anomaly import alerting, operational, queries, rules
from tasks.anomaly.detectors import Finding
from tasks.anomaly.rules import floor_minute
from worker import db
from worker.jobruns import job_run
from worker.observability import get_logger
from worker.sessiontable import SessionTable, open_table, utcnow
from worker.settings import Settings

log = get_logger("sessionkeeper.scan")

#: distinct user ids kept per (IP, minute) rollup row; past this the IP is critical anyway
MAX_IP_USERS = 200
NO_CREATED_AT = "creation-rate detection unavailable: sessions.created_at is not mapped"


@dataclass
class ScanResult:
    """What one scan did, for the CLI, the task's return value and the demo."""

    figures: dict[str, Any] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    unavailable: str | None = None
    skipped: str | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-able summary (no user ids: those stay in the alerts table)."""
        return {
            "figures": self.figures,
            "unavailable": self.unavailable,
            "skipped": self.skipped,
            "findings": [{"rule": f.rule, "severity": f.severity, "reason": f.reason} for f in self.findings],
            "notifications": [{k: v for k, v in e.items() if k != "entity"} for e in self.events],
        }


def run_scan(
    engine: Engine,
    settings: Settings,
    *,
    now: datetime | None = None,
    trigger: str = "cli",
    task_id: str | None = None,
) -> ScanResult:
    """One scan at ``now`` (default: the clock); records a job run named "scan"."""
    result = ScanResult()
    with job_run(engine, "scan", trigger=trigger, task_id=task_id) as run:
        started = time.monotonic()
        with db.translate_errors(engine), engine.begin() as conn:
            st = open_table(conn, settings)
            key = st.mapping.qualified_name
            if not db.try_advisory_xact_lock(conn, "scan", key):
                result.skipped = "another scan of this table holds the lock"
                run.skip(result.skipped)
            scan_in(conn, st, settings, now=now or utcnow(), result=result)
        # job_run records and logs its own duration; "seconds" is for the CLI and the demo
        run.figures.update(result.figures)
        result.figures["seconds"] = round(time.monotonic() - started, 3)
    return result


def scan_in(
    conn: Connection, st: SessionTable, settings: Settings, *, now: datetime, result: ScanResult
) -> None:
    """The scan's work inside the caller's transaction (the benchmarks replay time through it)."""
    key = st.mapping.qualified_name
    cfg = settings.anomaly
    state = queries.read_state(conn, key) or {}
    detector_state: dict[str, Any] = dict(state.get("detector_state") or {})
    findings: list[Finding] = []
    values: dict[str, Any] = {"updated_at": now}
    if st.c("created_at") is None:
        result.unavailable = NO_CREATED_AT
    else:
        watermark = state.get("watermark")
        if watermark is None:
            start = floor_minute(now - cfg.backfill_horizon)
            history_start = start
            values["backfilled_at"] = now
            result.figures["backfill"] = True
        else:
            start = floor_minute(min(watermark, now) - cfg.lateness)
            history_start = state.get("history_start") or start
        read, rows, earliest = _roll_up(conn, st, start, now)
        result.figures.update(sessions_read=read, rollup_rows=rows)
        if watermark is None:
            # The horizon is not history: before the oldest session found, the app may not have
            # existed (or purged everything), so those minutes are unknown, not zero.
            history_start = max(start, earliest or now)
        ctx = rules.RuleContext(
            conn=conn,
            settings=cfg,
            now=now,
            history_start=history_start,
            state=detector_state,
            has_user=st.user_expr is not None,
            has_ip=st.c("ip") is not None,
        )
        # Global first: the IP rule scales each address's usual load by the site's current one.
        findings += rules.global_rates(ctx)
        findings += rules.user_bursts(ctx)
        findings += rules.ip_spreads(ctx)
        values.update(
            watermark=max(watermark, now) if watermark else now,
            history_start=history_start,
            detector_state=ctx.state,
        )
    for found in (
        operational.purge_lag(conn, st, settings, now=now),
        operational.table_growth(conn, settings, now=now),
    ):
        if found is not None:
            findings.append(found)
    outcome = alerting.apply(conn, findings, now=now, settings=settings)
    queries.save_state(conn, key, values)
    by_rule = Counter(f.rule for f in findings)
    result.findings = findings
    result.events = outcome.events
    result.figures.update(
        findings=sum(by_rule.values()),
        notifications=sum(outcome.notifications.values()),
        **{f"findings_{rule}": n for rule, n in sorted(by_rule.items())},
        mass_collapsed=outcome.mass_collapsed or None,
        resolved=outcome.resolved or None,
    )
    if result.unavailable:
        result.figures["creation_rate"] = "unavailable"


def _roll_up(
    conn: Connection, st: SessionTable, start: datetime, end: datetime
) -> tuple[int, int, datetime | None]:
    """Read sessions created in [start, end) and upsert their per-minute rollups.

    Returns sessions read, rollup rows written and the earliest minute seen.
    """
    if db.is_postgres(conn):
        # Aggregating in the server sends nothing over the wire: the scan's cost is a range
        # scan of the created_at index, whatever the table size.
        read, written = queries.rollup_in_database(conn, st, start, end, max_ip_users=MAX_IP_USERS)
        earliest = queries.earliest_created(conn, st, start, end)
        return read, written, floor_minute(earliest) if earliest else None
    glob: Counter[datetime] = Counter()
    per_user: Counter[tuple[str, datetime]] = Counter()
    per_ip: Counter[tuple[str, datetime]] = Counter()
    ip_users: dict[tuple[str, datetime], set[str]] = defaultdict(set)
    read = 0
    for created, user, ip in queries.new_sessions(conn, st, start, end):
        moment = st.to_datetime("created_at", created)
        if moment is None:
            continue
        read += 1
        minute = floor_minute(moment)
        glob[minute] += 1
        if user is not None:
            per_user[(str(user), minute)] += 1
        if ip is not None:
            # PostgreSQL renders inet as text with its mask ("203.0.113.5/32").
            address = str(ip).split("/", 1)[0]
            per_ip[(address, minute)] += 1
            seen = ip_users[(address, minute)]
            if user is not None and len(seen) < MAX_IP_USERS:
                seen.add(str(user))
    rows: list[dict[str, Any]] = [
        {"scope": "global", "entity": "", "minute": m, "count": n, "users": None} for m, n in glob.items()
    ]
    rows += [
        {"scope": "user", "entity": u, "minute": m, "count": n, "users": None}
        for (u, m), n in per_user.items()
    ]
    rows += [
        {"scope": "ip", "entity": a, "minute": m, "count": n, "users": sorted(ip_users[(a, m)])}
        for (a, m), n in per_ip.items()
    ]
    return read, queries.upsert_rollups(conn, rows), min(glob, default=None)
