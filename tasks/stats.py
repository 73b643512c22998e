"""Statistics: per-user active-session figures and the global snapshot history (job "stats").

``refresh_stats`` computes everything inside the database (statements in tasks.stats_sql) in one
REPEATABLE READ transaction, so every figure of a run describes the same instant; the read
functions below serve the CLI and the API from what the last run stored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tasks import stats_sql as q
from worker import db, models
from worker.celery_app import app, periodic_options
from worker.errors import ConfigurationError
from worker.jobruns import job_run
from worker.sessiontable import open_table, utcnow
from worker.settings import Settings, get_settings

#: the snapshot figures, in the order the CLI shows them
SNAPSHOT_FIGURES = (
    "total_rows",
    "active",
    "expired_pending",
    "null_expiry",
    "users_active",
    "per_user_p50",
    "per_user_p95",
    "per_user_p99",
    "per_user_max",
    "created_since_previous",
    "purge_lag_seconds",
    "idle_mean_seconds",
    "idle_p95_seconds",
    "table_bytes",
    "index_bytes",
)


def refresh_stats(
    engine: Engine,
    settings: Settings,
    *,
    trigger: str = "cli",
    task_id: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any] | None:
    """Recompute per-user stats and append a global snapshot; the snapshot, or None when skipped.

    One run at a time per session table (advisory lock; a second run is recorded as skipped).
    """
    result: dict[str, Any] | None = None
    with job_run(engine, "stats", trigger=trigger, task_id=task_id) as run, _our_tables(engine):
        with engine.connect() as conn:
            if db.is_postgres(conn):
                # One snapshot for every statement: the global and per-user figures agree.
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                st = open_table(conn, settings)
                if not db.try_advisory_xact_lock(conn, "stats", st.mapping.qualified_name):
                    run.skip("another stats run holds the lock")
                plan = q.Plan(st=st, now=now or utcnow(), policy=settings.policy, config=settings.stats)
                result = _compute(conn, plan)
        run.figures.update({k: result[k] for k in (*SNAPSHOT_FIGURES, "users_written", "users_removed")})
        run.figures["snapshot_id"] = result["id"]
        run.figures.update({f"seconds_{k}": v for k, v in result["step_seconds"].items()})
        run.figures["unavailable"] = sorted(result["unavailable"]) or None
    return result


def _compute(conn: Connection, plan: q.Plan) -> dict[str, Any]:
    st, now = plan.st, plan.now
    if plan.postgres and plan.config.work_mem:
        conn.execute(sa.select(sa.func.set_config("work_mem", plan.config.work_mem, True)))
    previous = conn.execute(q.previous_snapshot_time()).scalar()
    snap: dict[str, Any] = dict.fromkeys(SNAPSHOT_FIGURES)
    with plan.step("global"):
        g = dict(conn.execute(q.global_figures(plan, previous)).one()._mapping)
    for key in ("total_rows", "active", "expired_pending", "null_expiry", "created_since_previous"):
        snap[key] = g.get(key)
    if "oldest_purgeable_expiry" in g:
        oldest = st.to_datetime("expires_at", g["oldest_purgeable_expiry"])
        purgeable_since = now - plan.policy.grace
        snap["purge_lag_seconds"] = (purgeable_since - oldest).total_seconds() if oldest else 0.0
    if st.c("last_activity_at") is not None:
        _idle_figures(conn, plan, snap)
    written, removed = _per_user(conn, plan, snap)
    if plan.postgres:
        quoted = conn.dialect.identifier_preparer.format_table(st.table)
        sizes = conn.execute(q.table_bytes(quoted)).one()
        snap["table_bytes"], snap["index_bytes"] = sizes.table_bytes, sizes.index_bytes
    else:
        for figure in ("table_bytes", "index_bytes"):
            plan.missing(figure, "table and index sizes are measured on PostgreSQL only")
    snapshot_id = conn.execute(
        sa.insert(models.stats_snapshots)
        .values(taken_at=now, unavailable=plan.unavailable, **snap)
        .returning(models.stats_snapshots.c.id)
    ).scalar_one()
    return {
        "id": snapshot_id,
        "taken_at": now,
        **snap,
        "unavailable": dict(plan.unavailable),
        "users_written": written,
        "users_removed": removed,
        "step_seconds": dict(plan.step_seconds),
    }


def _idle_figures(conn: Connection, plan: q.Plan, snap: dict[str, Any]) -> None:
    summary, value, rows = q.idle_figures(plan)
    with plan.step("idle"):
        idle = dict(conn.execute(summary).one()._mapping)
        if not plan.postgres:
            ps = {"idle_p95_seconds": 0.95}
            idle.update(q.percentiles_by_offset(conn, value, rows, idle["idle_count"], ps))
    snap["idle_mean_seconds"], snap["idle_p95_seconds"] = idle["idle_mean_seconds"], idle["idle_p95_seconds"]
    if not idle["idle_count"]:
        for figure in ("idle_mean_seconds", "idle_p95_seconds"):
            plan.missing(figure, "no active session has a last activity time")


def _per_user(conn: Connection, plan: q.Plan, snap: dict[str, Any]) -> tuple[int, int]:
    """Refresh user_stats from one grouped scan; fill the per-user distribution figures."""
    if plan.st.user_expr is None:
        for figure in ("users_active", *q.PERCENTILES, "per_user_max"):
            plan.missing(figure, "no user column mapped")
        # Rows left from an earlier mapping cannot be vouched for any more.
        return 0, conn.execute(sa.delete(models.user_stats)).rowcount
    agg = q.user_agg_table(plan)
    if not plan.postgres:  # a run that failed on this pooled connection may have left it behind
        conn.execute(sa.schema.DropTable(agg, if_exists=True))
    agg.create(conn)
    with plan.step("aggregate"):
        conn.execute(q.fill_user_agg(plan, agg))
    with plan.step("upsert"):
        written = conn.execute(q.upsert_user_stats(plan, agg)).rowcount
    with plan.step("delete"):
        removed = conn.execute(q.delete_vanished_users(agg)).rowcount
    with plan.step("distribution"):
        dist = dict(conn.execute(q.user_distribution(plan, agg)).one()._mapping)
    if not plan.postgres:
        value = agg.c.active_sessions.label("v")
        dist.update(
            q.percentiles_by_offset(conn, value, sa.select(value), dist["users_active"], q.PERCENTILES)
        )
        agg.drop(conn)
    snap.update({k: dist[k] for k in ("users_active", "per_user_max", *q.PERCENTILES)})
    if not dist["users_active"]:
        for figure in (*q.PERCENTILES, "per_user_max"):
            plan.missing(figure, "no user has an active session")
    return written, removed


@contextlib.contextmanager
def _our_tables(engine: Engine) -> Iterator[None]:
    """Driver errors translated; a missing sessionkeeper table becomes a sentence about migrate."""
    try:
        with db.translate_errors(engine):
            yield
    except (sa.exc.ProgrammingError, sa.exc.OperationalError) as exc:
        text = str(exc.orig).lower()
        if "sessionkeeper." in text and ("does not exist" in text or "no such table" in text):
            raise ConfigurationError(
                "sessionkeeper's tables are missing",
                problems=[f"database {db.safe_url(engine)}: run `sessionkeeper migrate` first"],
            ) from exc
        raise


# --- reads for the CLI and the API ----------------------------------------------------------


def _rows(engine: Engine, query: sa.Select[Any]) -> list[dict[str, Any]]:
    with _our_tables(engine), engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def latest_snapshot(engine: Engine) -> dict[str, Any] | None:
    """The most recent global snapshot, or None before the first run."""
    rows = snapshot_history(engine, limit=1)
    return rows[0] if rows else None


def snapshot_history(engine: Engine, *, limit: int = 20) -> list[dict[str, Any]]:
    """The latest snapshots, newest first."""
    s = models.stats_snapshots
    return _rows(engine, sa.select(s).order_by(s.c.taken_at.desc(), s.c.id.desc()).limit(limit))


def user_stats(engine: Engine, user_id: str) -> dict[str, Any] | None:
    """One user's stored figures, or None when the user has no active session (or no run yet)."""
    us = models.user_stats
    rows = _rows(engine, sa.select(us).where(us.c.user_id == str(user_id)))
    return rows[0] if rows else None


def top_users(engine: Engine, n: int = 10) -> list[dict[str, Any]]:
    """The ``n`` users holding the most active sessions (ties by user id)."""
    us = models.user_stats
    query = sa.select(us).order_by(us.c.active_sessions.desc(), us.c.user_id).limit(max(0, n))
    return _rows(engine, query)


# --- the demo and the Celery task -----------------------------------------------------------


def demo_report(engine: Engine, settings: Settings) -> dict[str, Any]:
    """Run once on the demo database and describe the result in a few lines."""
    snap = refresh_stats(engine, settings, trigger="demo")
    if snap is None:
        return {"lines": ["skipped: another stats run holds the lock"]}
    top = top_users(engine, 3)
    lines = [
        f"{snap['active']:,} active of {snap['total_rows']:,} rows; "
        f"{snap['expired_pending'] or 0:,} awaiting purge, {snap['null_expiry'] or 0:,} without expiry",
        f"{snap['users_active'] or 0:,} users signed in; sessions per user "
        f"p50 {snap['per_user_p50']:g}, p95 {snap['per_user_p95']:g}, "
        f"p99 {snap['per_user_p99']:g}, max {snap['per_user_max']}",
        "most sessions: " + ", ".join(f"{u['user_id']} ({u['active_sessions']})" for u in top),
    ]
    if snap["idle_mean_seconds"] is not None:
        lines.append(
            f"idle time of active sessions: mean {snap['idle_mean_seconds'] / 3600:.1f} h, "
            f"p95 {snap['idle_p95_seconds'] / 3600:.1f} h"
        )
    return {"lines": lines, "snapshot": snap, "top_users": top}


@app.task(name="sessionkeeper.stats", **periodic_options())
def stats_task(self: Any, trigger: str = "beat") -> dict[str, Any]:
    """The beat entry: a run's headline figures (the full snapshot is in stats_snapshots)."""
    settings = get_settings()
    snap = refresh_stats(db.get_engine(settings), settings, trigger=trigger, task_id=self.request.id)
    if snap is None:
        return {"outcome": "skipped"}
    keys = ("id", "active", "users_active", "users_written", "users_removed")
    return {"outcome": "succeeded", **{k: snap[k] for k in keys}}
