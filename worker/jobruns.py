"""The job-runs table: every run of every job, with its outcome and figures."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NoReturn

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from worker import db, models
from worker.observability import get_logger
from worker.sessiontable import utcnow

log = get_logger("sessionkeeper.jobs")


class JobSkipped(Exception):
    """Raised inside a run to end it as skipped (another run holds the lock, nothing to do)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Run:
    id: int
    job: str
    figures: dict[str, Any] = field(default_factory=dict)
    outcome: str = "running"
    error: str | None = None
    started: float = field(default_factory=time.monotonic)

    def skip(self, reason: str) -> NoReturn:
        raise JobSkipped(reason)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


#: a run still "running" after this long was interrupted (worker killed, database lost): no run
#: outlives the Celery hard time limit, and CLI runs are bounded by their own max_run_seconds
STALE_AFTER = timedelta(minutes=30)


@contextlib.contextmanager
def job_run(engine: Engine, job: str, *, trigger: str = "cli", task_id: str | None = None) -> Iterator[Run]:
    """Record a run: a row when it starts, its outcome, figures and error when it ends.

    Logs the canonical line (``job_finished`` with every figure). A failure is recorded and
    re-raised; a skip is recorded and swallowed. Runs of the same job left "running" by a
    process that died are closed as failed first, so no half-state outlives it.
    """
    with db.translate_errors(engine), engine.begin() as conn:
        reaped = reap_interrupted(conn, job)
        run_id = conn.execute(
            sa.insert(models.job_runs)
            .values(job=job, trigger=trigger, task_id=task_id, started_at=utcnow(), outcome="running")
            .returning(models.job_runs.c.id)
        ).scalar_one()
    run = Run(id=run_id, job=job)
    if reaped:
        log.warning("job_runs_interrupted", job=job, closed=reaped)
    try:
        yield run
        run.outcome = "succeeded"
    except JobSkipped as exc:
        run.outcome, run.error = "skipped", exc.reason
    except BaseException as exc:
        run.outcome, run.error = "failed", f"{type(exc).__name__}: {exc}"[:2000]
        raise
    finally:
        _finish(engine, run)


def reap_interrupted(conn: Connection, job: str, *, older_than: timedelta = STALE_AFTER) -> int:
    """Close runs of ``job`` still marked running long after any live run could be: failed."""
    t = models.job_runs
    now = utcnow()
    result = conn.execute(
        sa.update(t)
        .where(t.c.job == job, t.c.outcome == "running", t.c.started_at < now - older_than)
        .values(
            outcome="failed",
            finished_at=now,
            error="interrupted: the process running it died or lost the database",
        )
    )
    return int(result.rowcount or 0)


def _finish(engine: Engine, run: Run) -> None:
    figures = {k: v for k, v in run.figures.items() if v is not None}
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.update(models.job_runs)
                .where(models.job_runs.c.id == run.id)
                .values(finished_at=utcnow(), outcome=run.outcome, figures=figures, error=run.error)
            )
    except sa.exc.SQLAlchemyError as exc:  # the database went away mid-run: the log line still tells
        log.warning("job_run_not_recorded", job=run.job, run_id=run.id, error=type(exc).__name__)
    level = "error" if run.outcome == "failed" else "info"
    getattr(log, level)(
        "job_finished",
        job=run.job,
        run_id=run.id,
        outcome=run.outcome,
        seconds=round(run.seconds, 3),
        error=run.error,
        **figures,
    )


def last_runs(
    bind: Engine | Connection, job: str | None = None, *, limit: int = 20, finished_only: bool = False
) -> list[dict[str, Any]]:
    """The latest runs (of ``job``, or of every job), newest first, as plain dicts."""
    t = models.job_runs
    query = sa.select(t).order_by(t.c.started_at.desc(), t.c.id.desc()).limit(limit)
    if job:
        query = query.where(t.c.job == job)
    if finished_only:
        query = query.where(t.c.outcome != "running")
    if isinstance(bind, Connection):
        return [dict(r._mapping) for r in bind.execute(query)]
    with db.translate_errors(bind), bind.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def last_success(conn: Connection, job: str) -> datetime | None:
    """When ``job`` last finished successfully, or None."""
    t = models.job_runs
    query = sa.select(sa.func.max(t.c.finished_at)).where(t.c.job == job, t.c.outcome == "succeeded")
    value = conn.execute(query).scalar()
    return models.UtcDateTime().process_result_value(value, conn.dialect)
