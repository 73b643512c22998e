"""Sign a user out of other devices: the outbox, the revocation job, its Celery task and the sweep.

A request becomes a row in ``sessionkeeper.revocation_jobs`` (committed first), then a Celery
message whose task id is the job id. The job moves queued -> running -> succeeded | failed by
guarded UPDATEs; the revocation and the final status commit in one transaction, so a duplicate
delivery finds the job finished and does nothing, and a worker lost mid-job leaves it ``running``
to be redone. The sweep re-publishes what the broker never got. Queries live in the section below.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
import sqlalchemy as sa
from celery import Celery
from sqlalchemy.engine import Connection, Engine

from worker import db, models
from worker.celery_app import app, periodic_options
from worker.errors import (
    CapabilityUnavailable,
    Conflict,
    DatabaseUnavailable,
    InvalidInput,
    JobFailed,
    NotFound,
)
from worker.jobruns import job_run
from worker.observability import get_logger
from worker.sessiontable import SessionTable, open_table, table_for, utcnow
from worker.settings import Settings, get_settings

log = get_logger("sessionkeeper.revoke")
jobs = models.revocation_jobs
TERMINAL = ("succeeded", "failed")
TASK_NAME = "sessionkeeper.revoke"
#: at most this many jobs re-published per sweep (the next sweep takes the rest)
SWEEP_BATCH = 1000


@dataclass(frozen=True)
class Submitted:
    job: dict[str, Any]
    #: False when an Idempotency-Key replay returned an earlier job
    created: bool


# --- queries ------------------------------------------------------------------------------------


def _claim(job_id: str, now: datetime) -> sa.Update:
    # queued -> running, or running -> running again when an earlier delivery was lost mid-job.
    return (
        sa.update(jobs)
        .where(jobs.c.id == job_id, jobs.c.status.in_(("queued", "running")))
        .values(status="running", attempts=jobs.c.attempts + 1, started_at=now)
        .returning(jobs.c.attempts, jobs.c.user_id, jobs.c.keep_session_id)
    )


def _hold_running(job_id: str, now: datetime) -> sa.Update:
    # First statement of the work transaction: it row-locks the job, so a concurrent duplicate
    # waits here and then matches nothing, because the job is no longer running.
    return sa.update(jobs).where(jobs.c.id == job_id, jobs.c.status == "running").values(finished_at=now)


def _finish(job_id: str, now: datetime, **values: Any) -> sa.Update:
    return (
        sa.update(jobs)
        .where(jobs.c.id == job_id, jobs.c.status == "running")
        .values(finished_at=now, **values)
    )


def _keep_owned(st: SessionTable, user: Any, keep: Any) -> sa.Select[Any]:
    return sa.select(st.id_col).where(st.id_col == keep, user_expr(st) == user).limit(1)


def _revocation(st: SessionTable, settings: Settings, user: Any, keep: Any, now: datetime) -> Any:
    """The one set-based statement: the user's live sessions but ``keep``, deleted or marked revoked."""
    where = [user_expr(st) == user, st.active_clause(now, settings.policy)]
    if keep is not None:
        where.append(st.id_col != keep)
    revoked = st.c("revoked")
    if revoked is None:
        return sa.delete(st.table).where(*where).returning(st.id_col)
    when = st.mapping.revoked_when
    mark: Any = st.time_value("revoked", now) if when == "not_null" else when == "true"
    return sa.update(st.table).where(*where).values({revoked: mark}).returning(st.id_col)


def _stale_jobs(now: datetime, settings: Settings) -> sa.Select[Any]:
    """Jobs the broker never got, lost, or whose worker died: the outbox sweep re-publishes them."""
    delay = settings.revoke.outbox_delay
    never_published = sa.and_(
        jobs.c.status == "queued", jobs.c.published_at.is_(None), jobs.c.created_at < now - delay
    )
    # A published message sits in Redis until delivered; only past the visibility timeout is it
    # taken as lost (re-publishing earlier would pile duplicates onto a long queue).
    lost = sa.and_(jobs.c.status == "queued", jobs.c.published_at < now - settings.broker.visibility_timeout)
    # No run outlives the hard time limit: a job running longer lost its worker. Once
    # re-published, it waits as long again before the next copy.
    dead_cutoff = now - settings.worker.time_limit - delay
    dead = sa.and_(
        jobs.c.status == "running",
        jobs.c.started_at < dead_cutoff,
        sa.or_(jobs.c.published_at.is_(None), jobs.c.published_at < dead_cutoff),
    )
    return (
        sa.select(jobs.c.id)
        .where(sa.or_(never_published, lost, dead))
        .order_by(jobs.c.created_at)
        .limit(SWEEP_BATCH)
    )


def _mark_published(job_ids: list[str], now: datetime) -> sa.Update:
    return sa.update(jobs).where(jobs.c.id.in_(job_ids)).values(published_at=now)


# --- submitting and reading jobs ------------------------------------------------------------------


def request_hash(user_id: str, keep_session_id: str | None, reason: str | None) -> str:
    """SHA-256 of what was asked, to tell an Idempotency-Key replay from a conflicting reuse."""
    body = json.dumps([user_id, keep_session_id, reason], separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def user_expr(st: SessionTable) -> sa.ColumnElement[Any]:
    """The mapping's user expression; CapabilityUnavailable when it has none."""
    expr = st.user_expr
    if expr is None:
        raise CapabilityUnavailable(
            "this needs a user column",
            problems=["sessions.user_id (or user_id_json): map the column holding the user id"],
        )
    return expr


def session_table(engine: Engine, settings: Settings) -> SessionTable:
    """The reflected mapping, refusing mappings that cannot revoke (no user column)."""
    with db.translate_errors(engine):
        st = table_for(engine, settings)
    user_expr(st)
    return st


def submit_job(
    engine: Engine,
    settings: Settings,
    *,
    user_id: str,
    keep_session_id: str | None = None,
    reason: str | None = None,
    idempotency_key: str | None = None,
    source: str = "api",
) -> Submitted:
    """Validate and commit a queued job (the outbox row); the same key and body returns the same job."""
    st = session_table(engine, settings)
    st.user_value(user_id)  # raise InvalidInput now rather than fail the job later
    if keep_session_id is not None:
        st.id_value(keep_session_id)
    digest = request_hash(user_id, keep_session_id, reason)
    row = {
        "id": str(uuid.uuid4()),
        "user_id": user_id,
        "keep_session_id": keep_session_id,
        "reason": reason,
        "idempotency_key": idempotency_key,
        "request_hash": digest,
        "status": "queued",
        "source": source,
        "created_at": utcnow(),
    }
    try:
        with db.translate_errors(engine), engine.begin() as conn:
            conn.execute(sa.insert(jobs).values(row))
    except sa.exc.IntegrityError:
        if idempotency_key is None:
            raise
        with db.translate_errors(engine), engine.connect() as conn:
            earlier = conn.execute(sa.select(jobs).where(jobs.c.idempotency_key == idempotency_key)).first()
        if earlier is None:  # the conflicting row was deleted since: extremely unlikely, say so
            raise Conflict("idempotency key in use; retry the request") from None
        if earlier.request_hash != digest:
            raise Conflict(
                "this Idempotency-Key was used for a different request",
                problems=[f"job {earlier.id} was created with this key and another user or body"],
            ) from None
        return Submitted(job=_public(earlier._mapping), created=False)
    log.info("revocation_queued", job_id=row["id"], source=source, keep=keep_session_id is not None)
    return Submitted(job=_public(row), created=True)


def _public(row: Any) -> dict[str, Any]:
    return {
        "job_id": row["id"],
        "status": row["status"],
        "user_id": row["user_id"],
        "keep_session_id": row["keep_session_id"],
        "revoked_count": row.get("revoked_count"),
        "created_at": row["created_at"],
        "started_at": row.get("started_at"),
        "finished_at": row.get("finished_at") if row["status"] in TERMINAL else None,
        "error": row.get("error"),
    }


def get_job(engine: Engine, job_id: str) -> dict[str, Any]:
    """A job's public status; NotFound when there is none with this id."""
    with db.translate_errors(engine), engine.connect() as conn:
        row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
    if row is None:
        raise NotFound(f"no revocation job {job_id[:64]}")
    return _public(row._mapping)


# --- publishing -----------------------------------------------------------------------------------


@functools.cache
def _publisher(broker_url: str) -> Celery:
    # A producer bound to the settings' broker (the global app reads the process environment,
    # which the API's or a test's Settings object may not match). Same transport options.
    pub = Celery("sessionkeeper-publisher", set_as_current=False)
    pub.conf.update(
        broker_url=broker_url,
        broker_transport_options=app.conf.broker_transport_options,
        broker_connection_timeout=3,
        task_default_queue=app.conf.task_default_queue,
        task_serializer="json",
        task_publish_retry_policy=app.conf.task_publish_retry_policy,
    )
    return pub


#: after a failed publish, requests skip the broker this long (the sweep publishes their jobs)
BROKER_BACKOFF_SECONDS = 5.0
_broker_down_until: dict[str, float] = {}


def publish_job(settings: Settings, job_id: str, *, backoff: bool = False) -> bool:
    """Send the job to the broker (task id = job id); False when the broker is unreachable.

    A failure loses nothing: the committed row stays queued and the outbox sweep re-publishes it.
    With ``backoff`` (the API), a recent failure skips the attempt, so that during an outage each
    request answers at once instead of waiting out the publish retries.
    """
    url = settings.broker.url.get_secret_value()
    if backoff and time.monotonic() < _broker_down_until.get(url, 0.0):
        return False
    try:
        _publisher(url).send_task(TASK_NAME, args=[job_id], task_id=job_id)
    except Exception as exc:  # kombu and redis raise many kinds; every one means "not sent"
        _broker_down_until[url] = time.monotonic() + BROKER_BACKOFF_SECONDS
        log.warning("revocation_publish_failed", job_id=job_id, error=type(exc).__name__)
        return False
    return True


def mark_published(engine: Engine, job_ids: list[str]) -> None:
    """Record that the broker has these jobs, so the sweep leaves them alone."""
    with db.translate_errors(engine), engine.begin() as conn:
        conn.execute(_mark_published(job_ids, utcnow()))


class PublishedMarks:
    """Records ``published_at`` for many jobs in one UPDATE, off the request path.

    A mark lost in a crash costs one duplicate message from the sweep, which the task ignores.
    """

    #: seconds a mark waits so that marks from concurrent requests share one UPDATE
    GATHER_SECONDS = 0.02

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._ids: list[str] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def add(self, job_id: str) -> None:
        with self._lock:
            self._ids.append(job_id)
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="published-marks", daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            time.sleep(self.GATHER_SECONDS)
            self.flush()

    def flush(self) -> None:
        with self._lock:
            ids, self._ids = self._ids, []
        if not ids:
            return
        try:
            mark_published(self.engine, ids)
        except (sa.exc.SQLAlchemyError, DatabaseUnavailable) as exc:
            log.warning("revocation_marks_not_recorded", jobs=len(ids), error=type(exc).__name__)

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()


@functools.cache
def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)


def publish_event(settings: Settings, *, user_id: str, session_ids: list[str], job_id: str) -> bool:
    """Tell apps that cache sessions which ids are gone; best effort, after the commit."""
    payload = json.dumps({"user_id": user_id, "session_ids": session_ids, "job_id": job_id})
    try:
        _redis(settings.broker.url.get_secret_value()).publish(settings.revoke.event_channel, payload)
    except redis.RedisError as exc:
        log.warning("revocation_event_not_published", job_id=job_id, error=type(exc).__name__)
        return False
    return True


# --- running a job --------------------------------------------------------------------------------


def run_job(
    engine: Engine,
    settings: Settings,
    *,
    job_id: str,
    trigger: str = "worker",
    publish_events: bool = True,
) -> dict[str, Any]:
    """Execute one job: claim it, revoke in one statement, finish it; a finished job is a no-op.

    Raises JobFailed when the job ends failed (after recording it), NotFound for an unknown id.
    """
    result: dict[str, Any] = {"job_id": job_id, "status": None}
    revoked: list[str] | None = None
    with job_run(engine, "revoke", trigger=trigger, task_id=job_id) as run:
        now = utcnow()
        with db.translate_errors(engine), engine.begin() as conn:
            claimed = conn.execute(_claim(job_id, now)).first()
            if claimed is None:
                result["status"] = conn.execute(sa.select(jobs.c.status).where(jobs.c.id == job_id)).scalar()
        if claimed is None:
            if result["status"] is None:
                raise NotFound(f"no revocation job {job_id[:64]}")
            run.skip(f"job already {result['status']}")
        run.figures["attempt"] = claimed.attempts
        if claimed.attempts > settings.revoke.max_attempts:
            _fail(engine, job_id, f"gave up after {claimed.attempts - 1} attempts (worker lost each time)")
        with db.translate_errors(engine), engine.begin() as conn:
            if conn.execute(_hold_running(job_id, now)).rowcount == 0:
                run.skip("another delivery finished the job")
            outcome = _revoke_in(conn, settings, job_id, claimed.user_id, claimed.keep_session_id, now)
        if isinstance(outcome, str):
            raise JobFailed(f"revocation job {job_id} failed: {outcome}")
        revoked = outcome
        run.figures["revoked"] = len(revoked)
        result.update(status="succeeded", revoked_count=len(revoked))
    if revoked is None:  # skipped: a duplicate delivery
        result["noop"] = True
    elif publish_events:
        result["event_published"] = publish_event(
            settings, user_id=claimed.user_id, session_ids=revoked, job_id=job_id
        )
    return result


def _revoke_in(
    conn: Connection, settings: Settings, job_id: str, user_id: str, keep_id: str | None, now: datetime
) -> list[str] | str:
    """Inside the job's transaction: check the kept session, revoke, record the outcome.

    Returns the revoked ids, or the error the job failed with (recorded in the same transaction).
    """
    st = open_table(conn, settings)
    error = None
    try:
        user = st.user_value(user_id)
        keep = st.id_value(keep_id) if keep_id is not None else None
    except InvalidInput as exc:
        error = f"{exc.message}: {'; '.join(exc.problems)}"
    else:
        if keep is not None and conn.execute(_keep_owned(st, user, keep)).first() is None:
            error = "keep_session_id is not a session of this user: nothing was revoked"
    if error is not None:
        conn.execute(_finish(job_id, now, status="failed", revoked_count=0, error=error))
        return error
    ids = [str(i) for i in conn.execute(_revocation(st, settings, user, keep, now)).scalars()]
    conn.execute(_finish(job_id, utcnow(), status="succeeded", revoked_count=len(ids)))
    return ids


def _fail(engine: Engine, job_id: str, error: str) -> None:
    with db.translate_errors(engine), engine.begin() as conn:
        conn.execute(_finish(job_id, utcnow(), status="failed", error=error))
    raise JobFailed(f"revocation job {job_id} failed: {error}")


def wait_for(engine: Engine, job_id: str, *, timeout: float, poll: float = 0.1) -> dict[str, Any]:
    """Poll until the job is finished or ``timeout`` seconds pass; returns its last status."""
    deadline = time.monotonic() + timeout
    while True:
        job = get_job(engine, job_id)
        if job["status"] in TERMINAL or time.monotonic() >= deadline:
            return job
        time.sleep(poll)


# --- the outbox sweep -----------------------------------------------------------------------------


def sweep_outbox(engine: Engine, settings: Settings, *, trigger: str = "cli") -> dict[str, int]:
    """Re-publish jobs never published, lost by the broker, or left running by a dead worker."""
    figures = {"stale": 0, "republished": 0, "publish_failed": 0}
    with (
        job_run(engine, "outbox", trigger=trigger) as run,
        db.translate_errors(engine),
        engine.begin() as conn,
    ):
        if not db.try_advisory_xact_lock(conn, "outbox"):
            run.skip("another outbox sweep holds the lock")
        now = utcnow()
        stale = list(conn.execute(_stale_jobs(now, settings)).scalars())
        figures["stale"] = len(stale)
        sent: list[str] = []
        for job_id in stale:
            if not publish_job(settings, job_id):
                figures["publish_failed"] = len(stale) - len(sent)
                break  # the broker is away: the next sweep tries again
            sent.append(job_id)
        if sent:
            conn.execute(_mark_published(sent, now))
        figures["republished"] = len(sent)
        run.figures.update(figures)
    return figures


# --- Celery tasks ---------------------------------------------------------------------------------


@app.task(
    name=TASK_NAME,
    bind=True,
    ignore_result=True,
    acks_late=True,
    # A child killed mid-job (OOM, SIGKILL) requeues the message; our attempt counter ends a
    # poison job as failed instead of looping (celery#9082).
    reject_on_worker_lost=True,
    autoretry_for=(DatabaseUnavailable,),
    retry_backoff=2,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=10,
)
def revoke_task(self: Any, job_id: str) -> dict[str, Any]:
    settings = get_settings()
    try:
        return run_job(db.get_engine(settings), settings, job_id=job_id)
    except (JobFailed, NotFound) as exc:  # recorded and logged already: not a task error
        return {"job_id": job_id, "status": "failed", "error": exc.message}


@app.task(name="sessionkeeper.outbox_sweep", **periodic_options())
def outbox_sweep_task(self: Any, trigger: str = "beat") -> dict[str, int]:
    settings = get_settings()
    return sweep_outbox(db.get_engine(settings), settings, trigger=trigger)


# --- demo -----------------------------------------------------------------------------------------


def demo_report(engine: Engine, settings: Settings) -> dict[str, Any]:
    """Sign the demo's busiest account out of every device but its newest, inline."""
    st = session_table(engine, settings)
    now = utcnow()
    user_col = user_expr(st)
    with engine.connect() as conn:
        busiest = conn.execute(
            sa.select(user_col, sa.func.count())
            .where(st.active_clause(now, settings.policy))
            .group_by(user_col)
            .order_by(sa.func.count().desc(), user_col)
            .limit(1)
        ).first()
        if busiest is None:
            return {"lines": ["no active session to revoke"]}
        order = st.c("created_at") if st.c("created_at") is not None else st.id_col
        keep = conn.execute(
            sa.select(st.id_col)
            .where(user_col == busiest[0], st.active_clause(now, settings.policy))
            .order_by(order.desc())  # type: ignore[union-attr]
            .limit(1)
        ).scalar_one()
    started = time.monotonic()
    submitted = submit_job(
        engine, settings, user_id=str(busiest[0]), keep_session_id=str(keep), reason="demo", source="cli"
    )
    result = run_job(engine, settings, job_id=submitted.job["job_id"], trigger="demo", publish_events=False)
    ms = (time.monotonic() - started) * 1000
    return {
        "lines": [
            f"{busiest[0]} had {busiest[1]} active sessions; signed out of all but the newest: "
            f"{result['revoked_count']} revoked in one statement, {ms:.0f} ms (job {result['status']})",
            "Over HTTP: POST /v1/users/{id}/sessions/revoke answers 202 at once; "
            "a Celery worker runs the job (sessionkeeper api, sessionkeeper worker)",
        ],
        "user_id": str(busiest[0]),
        "revoked_count": result["revoked_count"],
        "ms": round(ms, 1),
    }
