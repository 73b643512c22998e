"""Purge: delete expired, idle, over-age, soft-revoked and over-cap sessions without hurting the app.

``purge_sessions(engine=..., settings=...)`` is the job (the CLI, the demo and the tests call it);
``purge_task`` is its Celery door. One run at a time per table: a transaction-level advisory lock
held for the run on PostgreSQL, a lease on the job-runs table on SQLite; the second run is
recorded as skipped. Statements live in tasks/purge_sql.py, batch loops in tasks/purge_batch.py.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tasks import purge_partition as part
from tasks import purge_sql as q
from tasks.purge_batch import Bounds, Pacer, PgBatcher, Progress, Tally, sqlite_purge
from tasks.purge_result import PurgeResult, describe
from worker import db, models
from worker.celery_app import app, periodic_options
from worker.jobruns import job_run
from worker.observability import configure_logging
from worker.sessiontable import SessionTable, load_mapping, utcnow
from worker.settings import LoggingSettings, PolicySettings, Settings, get_settings

__all__ = ["PurgeResult", "demo_report", "describe", "purge_sessions", "purge_task"]

JOB = "purge"
#: the mapped column each row reason is decided on (its index decides the trickle strategy)
REASON_KEYS = {
    "expired": "expires_at",
    "idle": "last_activity_at",
    "absolute": "created_at",
    "revoked": "revoked",
}
#: a backlog smaller than this share of the heap's blocks is followed by index, not walked
WALK_ROWS_PER_BLOCK = 0.25
#: ... and so is any backlog under this many rows (on a small table either order is cheap)
WALK_MIN_ROWS = 500


def purge_sessions(
    *,
    engine: Engine,
    settings: Settings,
    dry_run: bool = False,
    fast: bool = False,
    max_seconds: float | None = None,
    batch_size: int | None = None,
    max_rows: int | None = None,
    trigger: str = "cli",
    task_id: str | None = None,
    progress: Progress | None = None,
) -> PurgeResult:
    """Run one purge (or, with ``dry_run``, count per reason what one would delete).

    Raises MappingMismatch before a row is touched when the mapping does not fit the table, and
    DatabaseUnavailable when the database cannot be reached (the Celery task retries on it).
    """
    cfg = settings.purge
    if dry_run:  # read-only preview: not a run of the job, so not recorded in job_runs
        with db.translate_errors(engine), engine.connect() as conn:
            st = _reflect(conn, settings)
            result = PurgeResult(table=st.mapping.qualified_name, dialect=conn.dialect.name, dry_run=True)
            now = utcnow()
            if db.is_postgres(conn):
                cutoff = (
                    st.time_value("expires_at", now - settings.policy.grace)
                    if st.c("expires_at") is not None
                    else None
                )
                whole = part.expired_partitions(conn, st, cutoff) if cutoff is not None else []
                result.partitions_dropped = [f"{p.schema}.{p.name}" for p in whole]
            _measure_left(conn, st, now, settings.policy, result, settings)
        return result

    started = time.monotonic()
    result = PurgeResult(table="?", dialect=engine.dialect.name, fast=fast)
    with job_run(engine, JOB, trigger=trigger, task_id=task_id) as run:
        result.run_id = run.id
        with db.translate_errors(engine), engine.connect() as conn:
            st = _reflect(conn, settings)  # MappingMismatch here: before any row is touched
            result.table = st.mapping.qualified_name
            run.figures["table"] = result.table
            lock = _hold_lock(engine, conn, st, run.id, settings)
            if lock is False:
                result.outcome, result.skipped = "skipped", "another purge of this table is running"
                run.skip(result.skipped)
            try:
                bounds = Bounds(
                    deadline=started
                    + (max_seconds if max_seconds is not None else cfg.max_run_seconds.total_seconds()),
                    max_rows=max_rows if max_rows is not None else cfg.max_rows_per_run,
                    batch_size=batch_size or (cfg.fast_batch_size if fast else cfg.batch_size),
                )
                tally = Tally()
                now = utcnow()
                deleting = time.monotonic()
                if db.is_postgres(conn):
                    _purge_postgres(
                        engine, conn, st, now, settings, bounds, tally, result, fast=fast, progress=progress
                    )
                else:
                    victims = st.cap_victims(now, settings.policy)
                    sqlite_purge(
                        conn,
                        st.table,
                        st.purge_reasons(now, settings.policy),
                        cap=(st.id_col, victims) if victims is not None else None,
                        tally=tally,
                        bounds=bounds,
                        progress=progress,
                    )
                    result.strategy = "rowid"
                result.deleted = {k: v for k, v in tally.deleted.items() if v}
                result.batches, result.max_batch_ms = tally.batches, tally.max_batch_ms
                result.max_partition_ms = tally.max_partition_ms
                result.paced_seconds, result.stopped = tally.paced_seconds, tally.stopped
                result.timeouts = dict(tally.timeouts)
                result.wal_bytes = tally.wal_bytes if db.is_postgres(conn) else None
                result.delete_seconds = time.monotonic() - deleting
                _measure_left(conn, st, utcnow(), settings.policy, result, settings)
                result.seconds = time.monotonic() - started
            finally:
                if lock is not None and lock is not True:
                    lock.rollback()
                    lock.close()
            run.figures.update(result.figures())
    if result.outcome != "skipped":
        result.outcome = run.outcome
    result.seconds = result.seconds or time.monotonic() - started
    return result


def _reflect(conn: Connection, settings: Settings) -> SessionTable:
    # Reflected afresh each run (a few ms), not cached: an app migration that renames a column
    # must stop the next purge with exit 2 before it touches a row.
    table = load_mapping(settings).reflect(conn)
    conn.commit()
    return table


def _hold_lock(engine: Engine, conn: Connection, st: SessionTable, run_id: int, settings: Settings) -> Any:
    """PostgreSQL: a connection whose open transaction holds the table's advisory lock, or False.

    The lock is transaction-level (session-level locks misbehave behind poolers) and lives on its
    own connection, so the batches can commit every few milliseconds while it stays held; if this
    process dies, the connection closes and the lock goes with it. SQLite: True or False, from a
    lease on job_runs (the lowest id among recent running purges wins).
    """
    if db.is_postgres(conn):
        holder = engine.connect()
        holder.begin()
        if db.try_advisory_xact_lock(holder, JOB, st.mapping.qualified_name):
            return holder
        holder.rollback()
        holder.close()
        return False
    stale = max(settings.purge.max_run_seconds, settings.worker.time_limit) + timedelta(minutes=1)
    runs = models.job_runs
    first = conn.execute(
        sa.select(sa.func.min(runs.c.id)).where(
            runs.c.job == JOB, runs.c.outcome == "running", runs.c.started_at > utcnow() - stale
        )
    ).scalar()
    conn.commit()
    return first is None or first >= run_id


def _purge_postgres(
    engine: Engine,
    conn: Connection,
    st: SessionTable,
    now: datetime,
    settings: Settings,
    bounds: Bounds,
    tally: Tally,
    result: PurgeResult,
    *,
    fast: bool,
    progress: Progress | None,
) -> None:
    cfg = settings.purge
    max_wal, checkpoint_seconds = conn.execute(q.WAL_SETTINGS).one()
    conn.commit()
    rate = cfg.wal_budget_share * float(max_wal) / max(1, int(checkpoint_seconds))
    result.wal_budget_bytes_per_second = None if fast else round(rate)
    batcher = PgBatcher(
        conn,
        tally=tally,
        bounds=bounds,
        pacer=Pacer(None if fast else rate),
        lock_timeout_ms=int(cfg.lock_timeout.total_seconds() * 1000),
        statement_timeout_ms=int(cfg.statement_timeout.total_seconds() * 1000),
        progress=progress,
    )
    reasons = st.purge_reasons(now, settings.policy)
    targets = [st.table]
    if part.partitions(conn, st) is not None:
        if "expired" in reasons:
            cutoff = st.time_value("expires_at", now - settings.policy.grace)
            whole = part.expired_partitions(conn, st, cutoff)
            conn.commit()
            if whole:
                result.partitions_dropped, result.partitions_detached = part.take_partitions(
                    engine,
                    st,
                    whole,
                    drop=cfg.partitions == "drop",
                    lock_timeout_ms=int(cfg.lock_timeout.total_seconds() * 1000),
                    tally=tally,
                    deadline_left=bounds.deadline - time.monotonic(),
                )
        targets = part.leaf_tables(conn, st)
        conn.commit()
    strategies = []
    for target in targets:
        if batcher.stop():
            break
        here = {name: q.retarget(clause, st.table, target) for name, clause in reasons.items()}
        if not here:
            continue
        indexed = _indexed_reasons(conn, st, target, here)
        strategy = _choose_strategy(conn, target, here, indexed, cfg.strategy)
        strategies.append(strategy)
        order = {name: _order_column(st, target, name) for name in here}
        if strategy == "walk":
            # Rows the walk skipped (held by the app) wait for the next run: sweeping them along the
            # index now would first wade through every index entry the walk just killed (measured:
            # one 0.8-1.5 s batch at 5M rows) until vacuum removes them.
            batcher.walk(target, here)
        else:
            batcher.by_index(target, here, order)
    victims = st.cap_victims(now, settings.policy)
    if victims is not None and not batcher.stop():
        batcher.cap(st.table, st.id_col, victims)
    result.strategy = "+".join(sorted(set(strategies))) or None


def _order_column(st: SessionTable, target: sa.Table, reason: str) -> sa.ColumnElement[Any] | None:
    if reason == "revoked" and st.mapping.revoked_when != "not_null":
        return None  # a boolean flag has no useful order
    col = st.c(REASON_KEYS[reason])
    return target.c[col.name] if col is not None else None


def _indexed_reasons(conn: Connection, st: SessionTable, target: sa.Table, reasons: q.Reasons) -> set[str]:
    """The reasons whose column leads an index of the target table."""
    indexes = sa.inspect(conn).get_indexes(target.name, schema=target.schema)
    conn.commit()
    leading = {ix["column_names"][0] for ix in indexes if ix.get("column_names")}
    columns = {reason: st.c(REASON_KEYS[reason]) for reason in reasons}
    return {reason for reason, col in columns.items() if col is not None and col.name in leading}


def _choose_strategy(
    conn: Connection, target: sa.Table, reasons: q.Reasons, indexed: set[str], setting: str
) -> str:
    """Walk the heap for a backlog (or a reason no index serves); follow the indexes for a trickle."""
    if setting in {"walk", "index"}:
        return setting
    if set(reasons) - indexed:
        return "walk"
    rel = conn.dialect.identifier_preparer.format_table(target)
    blocks = int(conn.execute(q.heap_facts(target), {"rel": rel}).one()[0] or 0)
    threshold = max(WALK_MIN_ROWS, int(blocks * WALK_ROWS_PER_BLOCK))
    seen = 0
    for clause in reasons.values():
        seen += int(conn.execute(q.pg_probe(target, clause), {"limit": threshold - seen}).scalar_one())
        if seen >= threshold:
            break
    conn.commit()
    return "walk" if seen >= threshold else "index"


def _measure_left(
    conn: Connection,
    st: SessionTable,
    now: datetime,
    policy: PolicySettings,
    result: PurgeResult,
    settings: Settings,
) -> None:
    """Rows that would still go now per reason, and the purge lag (oldest purgeable expiry)."""
    if conn.in_transaction():
        conn.commit()
    with conn.begin():
        if db.is_postgres(conn):
            timeout = f"{int(settings.purge.statement_timeout.total_seconds() * 1000)}ms"
            conn.execute(q.pg_set_timeouts(), {"lock_timeout": timeout, "statement_timeout": timeout})
        reasons = st.purge_reasons(now, policy)
        pending = (
            {str(r): int(n) for r, n in conn.execute(q.pending_by_reason(st.table, reasons))}
            if reasons
            else {}
        )
        victims = st.cap_victims(now, policy)
        if victims is not None:
            pending["cap"] = int(conn.execute(q.cap_pending(victims)).scalar_one())
        result.pending = {k: v for k, v in pending.items() if v}
        if "expired" in reasons:
            n, oldest = conn.execute(
                q.oldest_expired(st.table, reasons["expired"], st.need("expires_at"))
            ).one()
            result.expired_pending = int(n)
            when = st.to_datetime("expires_at", oldest)
            if when is not None:
                result.lag_seconds = max(0.0, (now - policy.grace - when).total_seconds())


def demo_report(engine: Engine, settings: Settings) -> dict[str, Any]:
    """For ``sessionkeeper demo``: a dry run, then the purge, as readable lines and figures."""
    # The demo prints its own report on stdout: job log lines must go to stderr, and only warnings.
    configure_logging(LoggingSettings(level="WARNING"))
    preview = purge_sessions(engine=engine, settings=settings, dry_run=True)
    done = purge_sessions(engine=engine, settings=settings, trigger="demo")
    return {"lines": describe(preview) + describe(done), "dry_run": preview.pending, **done.figures()}


@app.task(name="sessionkeeper.purge", **periodic_options())
def purge_task(self: Any, trigger: str = "beat", fast: bool = False) -> dict[str, Any]:
    """Celery: one purge run; DatabaseUnavailable makes Celery retry with backoff."""
    settings = get_settings()
    result = purge_sessions(
        engine=db.get_engine(settings), settings=settings, fast=fast, trigger=trigger, task_id=self.request.id
    )
    return {
        "outcome": result.outcome,
        "run_id": result.run_id,
        "deleted": result.deleted,
        "lag_seconds": result.lag_seconds,
    }
