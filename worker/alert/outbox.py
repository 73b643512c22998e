"""The alert outbox: notifications written to alert_deliveries in the alert's own transaction,
then delivered per sink with retries, so no sink can block another or lose an alert.

Each row is one (notification, sink). A delivery pass claims due rows with a lease (their
next_attempt_at moves past the pass), sends each sink's rows in order, concurrently across
sinks, every attempt cut off at the sink's timeout. A failure schedules that row's retry with
exponential backoff and defers the sink's remaining rows to the same time (a dead sink is
tried once per pass, not once per row). A process that dies mid-pass leaves its rows to be
claimed again when the lease runs out: delivery is at least once, and the X-Sessionkeeper-Delivery
header lets a receiver drop a duplicate.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import time
from collections.abc import Coroutine, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa

from worker import db, models
from worker.alert import dispatch
from worker.alert.notification import EVENTS, Notification, normalize_payload
from worker.alert.sink import DeliveryFailed, Sink, build_sinks, configured_sinks
from worker.observability import get_logger
from worker.settings import MAX_SINK_TIMEOUT_SECONDS, Settings, get_settings

PENDING = "pending"
SENT = "sent"
#: gave up after alerts.max_attempts, or the sink was removed from the configuration
FAILED = "failed"
#: characters of a failure reason kept on the row
_ERROR_CHARS = 500

log = get_logger("sessionkeeper.alert")
_T = TypeVar("_T")


def enqueue(
    conn: sa.Connection,
    *,
    alert_id: int | None,
    event: str,
    payload: Mapping[str, Any],
    settings: Settings | None = None,
) -> None:
    """Queue a notification for every configured sink, in the caller's transaction.

    Nothing is sent here: if the caller rolls back, no notification exists; once it commits,
    deliver_pending() sends it. Raises ValueError for an unknown event or a payload that is
    not JSON data.
    """
    if event not in EVENTS:
        raise ValueError(f"unknown alert event {event!r}; expected one of {', '.join(EVENTS)}")
    settings = settings or get_settings()
    body = normalize_payload(payload)
    now = datetime.now(UTC)
    rows = [
        {
            "alert_id": alert_id,
            "event": event,
            "sink": spec.name,
            "payload": body,
            "status": PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        for spec in configured_sinks(settings)
        if spec.accepts(event)
    ]
    conn.execute(sa.insert(models.alert_deliveries), rows)


@dataclasses.dataclass
class SinkReport:
    """What one pass did for one sink."""

    name: str
    kind: str
    delivered: int = 0
    #: failed this pass, retried later
    retrying: int = 0
    #: failed for the last time (or sink no longer configured); kept as status "failed"
    gave_up: int = 0
    #: not tried this pass (behind a failure or out of time); still pending
    deferred: int = 0
    last_error: str | None = None


@dataclasses.dataclass
class DeliveryReport:
    """What one delivery pass did, per sink and in total."""

    claimed: int = 0
    seconds: float = 0.0
    sinks: dict[str, SinkReport] = dataclasses.field(default_factory=dict)

    def total(self, field: str) -> int:
        """Sum of one SinkReport counter over the sinks."""
        return sum(int(getattr(s, field)) for s in self.sinks.values())

    @property
    def delivered(self) -> int:
        """Notifications accepted by their sink in this pass."""
        return self.total("delivered")

    def as_dict(self) -> dict[str, Any]:
        """JSON-able figures for logs, job runs and the CLI."""
        return {
            "claimed": self.claimed,
            "delivered": self.total("delivered"),
            "retrying": self.total("retrying"),
            "gave_up": self.total("gave_up"),
            "deferred": self.total("deferred"),
            "seconds": round(self.seconds, 3),
            "sinks": {name: dataclasses.asdict(s) for name, s in self.sinks.items()},
        }


@dataclasses.dataclass(frozen=True)
class _Claimed:
    id: int
    alert_id: int | None
    event: str
    sink: str
    payload: dict[str, Any]
    attempts: int


def lease_for(settings: Settings) -> timedelta:
    """How long claimed rows stay invisible to other passes: longer than any pass can run."""
    longest = max(
        [settings.alerts.sentry_timeout, *(h.timeout for h in settings.alerts.webhooks)],
        default=timedelta(seconds=MAX_SINK_TIMEOUT_SECONDS),
    )
    return settings.alerts.deliver_max_seconds + longest + timedelta(seconds=30)


def deliver_pending(engine: sa.Engine, settings: Settings, *, now: datetime | None = None) -> DeliveryReport:
    """Send every due notification once, per sink, and record each outcome.

    `now` is the pass's clock for what is due and when retries fall (tests move it);
    the attempt timeouts are real time.
    """
    started = time.monotonic()
    now = now or datetime.now(UTC)
    rows = _claim(engine, now=now, lease_until=now + lease_for(settings), settings=settings)
    report = DeliveryReport(claimed=len(rows))
    if rows:
        _run(_deliver(engine, settings, rows, now=now, report=report, started=started))
    report.seconds = time.monotonic() - started
    if rows:
        log.info("alerts_delivered", **{k: v for k, v in report.as_dict().items() if k != "sinks"})
    return report


def _run(coro: Coroutine[Any, Any, _T]) -> _T:
    """asyncio.run, also from code that already runs an event loop (it gets its own thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _claim(engine: sa.Engine, *, now: datetime, lease_until: datetime, settings: Settings) -> list[_Claimed]:
    t = models.alert_deliveries
    due = sa.and_(t.c.status == PENDING, t.c.next_attempt_at <= now)
    # Per-sink FIFO: a row waits while an older one for the same sink is backing off (or is
    # leased by another pass), so a "resolved" never overtakes its "new" and a dead sink
    # is probed by one row, not by every row queued for it.
    older = t.alias("older")
    blocked = (
        sa.select(older.c.id)
        .where(
            older.c.sink == t.c.sink,
            older.c.status == PENDING,
            older.c.id < t.c.id,
            older.c.next_attempt_at > now,
        )
        .exists()
    )
    # oldest first by id, not by due time: a full batch must not take a sink's later row
    # without the earlier one that just became due again
    ids = sa.select(t.c.id).where(due, ~blocked).order_by(t.c.id).limit(settings.alerts.deliver_batch_size)
    # `due` again on the outer statement: a row another pass claimed meanwhile is skipped
    claim = (
        sa.update(t)
        .where(t.c.id.in_(ids.scalar_subquery()), due)
        .values(next_attempt_at=lease_until)
        .returning(t.c.id, t.c.alert_id, t.c.event, t.c.sink, t.c.payload, t.c.attempts)
    )
    with db.translate_errors(engine), engine.begin() as conn:
        # Claims are serialised (a pass that finds another claiming takes nothing this time),
        # so the FIFO check above sees every lease already taken: two passes never split one
        # sink's queue between them. The lock is held only for this one statement.
        if not db.try_advisory_xact_lock(conn, "alert_outbox"):
            log.info("alert_outbox_busy")
            return []
        claimed = [_Claimed(**row._mapping) for row in conn.execute(claim)]
    return sorted(claimed, key=lambda r: r.id)


async def _deliver(
    engine: sa.Engine,
    settings: Settings,
    rows: Sequence[_Claimed],
    *,
    now: datetime,
    report: DeliveryReport,
    started: float,
) -> None:
    sinks = build_sinks(settings)
    deadline = started + settings.alerts.deliver_max_seconds.total_seconds()
    by_sink: dict[str, list[_Claimed]] = {}
    for row in rows:
        by_sink.setdefault(row.sink, []).append(row)
    try:
        drains = []
        for name, sink_rows in by_sink.items():
            sink = sinks.get(name)
            sink_report = report.sinks.setdefault(
                name, SinkReport(name, sink.kind if sink else "unconfigured")
            )
            if sink is None:
                _abandon(engine, sink_rows, now=now, reason=f"sink {name!r} is not configured")
                sink_report.gave_up += len(sink_rows)
                sink_report.last_error = "not configured"
                continue
            drains.append(_drain(engine, settings, sink, sink_rows, now, sink_report, deadline=deadline))
        await asyncio.gather(*drains)
    finally:
        await asyncio.gather(*(s.aclose() for s in sinks.values()), return_exceptions=True)


async def _drain(
    engine: sa.Engine,
    settings: Settings,
    sink: Sink,
    rows: Sequence[_Claimed],
    now: datetime,
    report: SinkReport,
    *,
    deadline: float,
) -> None:
    for index, row in enumerate(rows):
        if time.monotonic() >= deadline:
            _defer(engine, rows[index:], until=now)
            report.deferred += len(rows) - index
            return
        note = Notification(
            delivery_id=row.id,
            alert_id=row.alert_id,
            event=row.event,
            payload=row.payload,
            attempt=row.attempts + 1,
        )
        status, failure = await dispatch.attempt(sink, note)
        if failure is None:
            _mark_delivered(engine, row, now=now, status_code=status)
            report.delivered += 1
            continue
        report.last_error = failure.message[:_ERROR_CHARS]
        attempts = row.attempts + 1
        if attempts >= settings.alerts.max_attempts:
            _mark_failed(engine, row, failure, now=now, final=True)
            report.gave_up += 1
            log.error(
                "alert_delivery_abandoned",
                sink=sink.name,
                delivery_id=row.id,
                alert_id=row.alert_id,
                attempts=attempts,
                error=report.last_error,
            )
            retry_at = now
        else:
            retry_at = now + dispatch.retry_delay(
                attempts,
                base=settings.alerts.retry_base,
                cap=settings.alerts.retry_max,
                retry_after=failure.retry_after,
            )
            _mark_failed(engine, row, failure, now=retry_at, final=False)
            report.retrying += 1
            log.warning(
                "alert_delivery_failed",
                sink=sink.name,
                delivery_id=row.id,
                alert_id=row.alert_id,
                attempt=attempts,
                error=report.last_error,
                retry_in_seconds=(retry_at - now).total_seconds(),
            )
        # the sink just failed: its other rows wait for the same retry, in order
        _defer(engine, rows[index + 1 :], until=retry_at)
        report.deferred += len(rows) - index - 1
        return


def _mark_delivered(engine: sa.Engine, row: _Claimed, *, now: datetime, status_code: int | None) -> None:
    t = models.alert_deliveries
    stmt = (
        sa.update(t)
        .where(t.c.id == row.id, t.c.status == PENDING)
        .values(
            status=SENT,
            attempts=row.attempts + 1,
            sent_at=now,
            last_status_code=status_code,
            last_error=None,
        )
    )
    with db.translate_errors(engine), engine.begin() as conn:
        conn.execute(stmt)


def _mark_failed(
    engine: sa.Engine, row: _Claimed, failure: DeliveryFailed, *, now: datetime, final: bool
) -> None:
    """Record a failed attempt; `now` is the retry time (or the give-up time when final)."""
    t = models.alert_deliveries
    values: dict[str, Any] = {
        "attempts": row.attempts + 1,
        "last_error": failure.message[:_ERROR_CHARS],
        "last_status_code": failure.status_code,
        "next_attempt_at": now,
    }
    if final:
        values["status"] = FAILED
    stmt = sa.update(t).where(t.c.id == row.id, t.c.status == PENDING).values(**values)
    with db.translate_errors(engine), engine.begin() as conn:
        conn.execute(stmt)


def _defer(engine: sa.Engine, rows: Sequence[_Claimed], *, until: datetime) -> None:
    """Give claimed rows back, due at `until`, without counting an attempt."""
    if not rows:
        return
    t = models.alert_deliveries
    stmt = (
        sa.update(t)
        .where(t.c.id.in_([r.id for r in rows]), t.c.status == PENDING)
        .values(next_attempt_at=until)
    )
    with db.translate_errors(engine), engine.begin() as conn:
        conn.execute(stmt)


def _abandon(engine: sa.Engine, rows: Sequence[_Claimed], *, now: datetime, reason: str) -> None:
    t = models.alert_deliveries
    stmt = (
        sa.update(t)
        .where(t.c.id.in_([r.id for r in rows]), t.c.status == PENDING)
        .values(status=FAILED, last_error=reason, next_attempt_at=now)
    )
    with db.translate_errors(engine), engine.begin() as conn:
        conn.execute(stmt)
    log.error("alert_delivery_abandoned", sink=rows[0].sink, deliveries=len(rows), error=reason)
