"""Reading alerts and their delivery state, for `sessionkeeper alerts` and the API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from worker import db, models
from worker.durations import parse_duration

#: alerts listed when no --limit is given
DEFAULT_LIMIT = 100


def parse_since(text: str, *, now: datetime) -> datetime:
    """A --since value: a duration back from now ("2h", "7d") or an ISO 8601 time (UTC if naive)."""
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration like 2h or 7d nor a time like 2026-12-04T09:00Z"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def list_alerts(
    engine: Engine,
    *,
    open_only: bool = False,
    since: datetime | None = None,
    limit: int = DEFAULT_LIMIT,
) -> list[dict[str, Any]]:
    """Alerts, most recently seen first, each with its delivery counts by status."""
    a, d = models.alerts, models.alert_deliveries
    query = sa.select(a).order_by(a.c.last_seen.desc(), a.c.id.desc()).limit(limit)
    if open_only:
        query = query.where(a.c.state == "open")
    if since is not None:
        query = query.where(a.c.last_seen >= since)
    with db.translate_errors(engine), engine.connect() as conn:
        alerts = [dict(r._mapping) for r in conn.execute(query)]
        ids = [row["id"] for row in alerts]
        counts = (
            conn.execute(
                sa.select(d.c.alert_id, d.c.status, sa.func.count())
                .where(d.c.alert_id.in_(ids))
                .group_by(d.c.alert_id, d.c.status)
            ).all()
            if ids
            else []
        )
    deliveries: dict[int, dict[str, int]] = {}
    for alert_id, status, count in counts:
        deliveries.setdefault(alert_id, {})[status] = count
    for row in alerts:
        row["deliveries"] = {
            "sent": 0,
            "pending": 0,
            "failed": 0,
            **deliveries.get(row["id"], {}),
        }
    return alerts


def delivery_backlog(engine: Engine) -> dict[str, Any]:
    """Pending and given-up notifications per sink: what a dashboard or health check wants."""
    d = models.alert_deliveries
    query = (
        sa.select(d.c.sink, d.c.status, sa.func.count(), sa.func.min(d.c.created_at))
        .where(d.c.status.in_(["pending", "failed"]))
        .group_by(d.c.sink, d.c.status)
    )
    with db.translate_errors(engine), engine.connect() as conn:
        rows = conn.execute(query).all()
    backlog: dict[str, Any] = {}
    for sink, status, count, oldest in rows:
        entry = backlog.setdefault(sink, {"pending": 0, "failed": 0, "oldest_pending": None})
        entry[status] = count
        if status == "pending":
            entry["oldest_pending"] = oldest
    return backlog
