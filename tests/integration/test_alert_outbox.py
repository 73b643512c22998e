"""The alert outbox against real databases and a real HTTP receiver: nothing lost, nothing blocked."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.conftest import SettingsFactory
from tests.integration.receiver import HANG, Answer, Receiver
from worker import db, models
from worker.alert import outbox, webhook
from worker.settings import Settings

pytestmark = pytest.mark.integration
SECRET = "whsec-outbox"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


_engines: dict[str, Engine] = {}


@pytest.fixture(autouse=True)
def _closed_engines() -> Iterator[None]:
    # Our own engines, closed for real at the end (db.dispose_engines keeps connections open
    # for the after-fork case, and those would surface as ResourceWarnings in a later test).
    yield
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()


def engine_of(settings: Settings) -> Engine:
    url = settings.database.url.get_secret_value()
    if url not in _engines:
        _engines[url] = db.make_engine(url)
    return _engines[url]


def alert_payload(**extra: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "rule": "user_burst",
        "entity": "42",
        "window_seconds": 600,
        "observed": 55.0,
        "expected": 0.4,
        "baseline_method": "gamma_poisson",
        "baseline_window_seconds": 604800,
        "threshold": 10.0,
        "score": 1e-9,
        "score_kind": "p_value",
        "severity": "critical",
        "reason": "55 sessions in 10 min for one user, expected 0.40 (p=1e-09)",
        "first_seen": datetime.now(UTC),
        "count": 1,
        "suppressed": 0,
    }
    payload.update(extra)
    return payload


def hooks(receiver: Receiver, *names: str, **overrides: Any) -> list[dict[str, Any]]:
    return [
        {"name": n, "url": receiver.url(f"/{n}"), "secret": SECRET, **overrides.get(n, {})} for n in names
    ]


def insert_alert(settings: Settings) -> int:
    now = datetime.now(UTC)
    with engine_of(settings).begin() as conn:
        alert_id: int = conn.execute(
            sa.insert(models.alerts)
            .values(
                fingerprint=f"fp-{time.monotonic_ns()}",
                rule="user_burst",
                entity="42",
                severity="critical",
                state="open",
                first_seen=now,
                last_seen=now,
                details={},
            )
            .returning(models.alerts.c.id)
        ).scalar_one()
    return alert_id


def enqueue(settings: Settings, event: str = "new", **payload: Any) -> int:
    alert_id = insert_alert(settings)
    with engine_of(settings).begin() as conn:
        outbox.enqueue(
            conn, alert_id=alert_id, event=event, payload=alert_payload(**payload), settings=settings
        )
    return alert_id


def rows(settings: Settings, sink: str | None = None) -> list[dict[str, Any]]:
    t = models.alert_deliveries
    query = sa.select(t).order_by(t.c.id)
    if sink:
        query = query.where(t.c.sink == sink)
    with engine_of(settings).connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def test_enqueue_writes_one_row_per_sink_in_the_callers_transaction(
    any_url: str, make_settings: SettingsFactory, receiver: Receiver
) -> None:
    settings = make_settings(
        any_url,
        alerts={"webhooks": hooks(receiver, "ops", "chat")},
        sentry={"dsn": "http://key@127.0.0.1:9/1"},
    )
    engine = engine_of(settings)
    alert_id = insert_alert(settings)
    with engine.connect() as conn, conn.begin() as tx:
        outbox.enqueue(conn, alert_id=alert_id, event="new", payload=alert_payload(), settings=settings)
        tx.rollback()
    assert rows(settings) == []

    with engine.begin() as conn:
        outbox.enqueue(conn, alert_id=alert_id, event="new", payload=alert_payload(), settings=settings)
        outbox.enqueue(conn, alert_id=alert_id, event="resolved", payload=alert_payload(), settings=settings)
    queued = rows(settings)
    assert [(r["event"], r["sink"]) for r in queued] == [
        ("new", "log"),
        ("new", "sentry"),
        ("new", "ops"),
        ("new", "chat"),
        # Sentry takes no resolved notices
        ("resolved", "log"),
        ("resolved", "ops"),
        ("resolved", "chat"),
    ]
    assert {r["status"] for r in queued} == {"pending"}
    assert queued[0]["payload"]["window_seconds"] == 600
    assert isinstance(queued[0]["payload"]["first_seen"], str)


def test_enqueue_refuses_bad_input(sqlite_url: str, make_settings: SettingsFactory) -> None:
    settings = make_settings(sqlite_url)
    with engine_of(settings).begin() as conn:
        with pytest.raises(ValueError, match="unknown alert event 'fired'"):
            outbox.enqueue(conn, alert_id=None, event="fired", payload={}, settings=settings)
        with pytest.raises(ValueError, match="'when'"):
            outbox.enqueue(conn, alert_id=None, event="new", payload={"when": object()}, settings=settings)


def test_delivers_signed_webhooks_once(
    any_url: str, make_settings: SettingsFactory, receiver: Receiver
) -> None:
    settings = make_settings(any_url, alerts={"webhooks": hooks(receiver, "ops")})
    alert_id = enqueue(settings)
    engine = engine_of(settings)

    report = outbox.deliver_pending(engine, settings)
    assert report.as_dict() | {"seconds": 0} == {
        "claimed": 2,
        "delivered": 2,
        "retrying": 0,
        "gave_up": 0,
        "deferred": 0,
        "seconds": 0,
        "sinks": report.as_dict()["sinks"],
    }
    (got,) = receiver.received("/ops")
    assert webhook.verify(SECRET, got.headers["x-sessionkeeper-signature"], got.body)
    doc = json.loads(got.body)
    assert doc["alert_id"] == alert_id
    assert doc["event"] == "new"
    assert doc["attempt"] == 1
    assert doc["alert"]["rule"] == "user_burst"
    assert doc["summary"].startswith("CRITICAL: user_burst on user 42: observed 55 in 10m")
    ops = rows(settings, "ops")[0]
    assert got.headers["x-sessionkeeper-delivery"] == str(ops["id"])
    assert (ops["status"], ops["attempts"], ops["last_status_code"]) == ("sent", 1, 200)
    assert ops["sent_at"] is not None
    assert rows(settings, "log")[0]["status"] == "sent"

    assert outbox.deliver_pending(engine, settings).claimed == 0
    assert len(receiver.received("/ops")) == 1


def test_a_failing_sink_is_retried_with_backoff_and_loses_nothing(
    any_url: str, make_settings: SettingsFactory, receiver: Receiver
) -> None:
    receiver.script("/flaky", 500, Answer(status=503, headers=(("Retry-After", "90"),)))
    settings = make_settings(any_url, alerts={"webhooks": hooks(receiver, "flaky", "steady")})
    enqueue(settings)
    engine = engine_of(settings)
    t0 = datetime.now(UTC)

    first = outbox.deliver_pending(engine, settings, now=t0)
    assert (first.sinks["flaky"].retrying, first.sinks["steady"].delivered, first.sinks["log"].delivered) == (
        1,
        1,
        1,
    )
    flaky = rows(settings, "flaky")[0]
    assert (flaky["status"], flaky["attempts"], flaky["last_status_code"]) == ("pending", 1, 500)
    assert flaky["last_error"].startswith("HTTP 500")
    assert flaky["next_attempt_at"] == t0 + timedelta(seconds=30)

    # not due yet: nothing is sent
    assert outbox.deliver_pending(engine, settings, now=t0 + timedelta(seconds=29)).claimed == 0
    # due: fails again, and the receiver's Retry-After (90 s) beats the 60 s backoff
    second = outbox.deliver_pending(engine, settings, now=t0 + timedelta(seconds=30))
    assert second.sinks["flaky"].retrying == 1
    flaky = rows(settings, "flaky")[0]
    assert flaky["next_attempt_at"] == t0 + timedelta(seconds=120)
    assert flaky["last_status_code"] == 503

    # the receiver recovers: delivered, same delivery id, attempt 3
    third = outbox.deliver_pending(engine, settings, now=t0 + timedelta(seconds=120))
    assert third.sinks["flaky"].delivered == 1
    received = receiver.received("/flaky")
    assert len(received) == 3
    assert len({r.headers["x-sessionkeeper-delivery"] for r in received}) == 1
    assert json.loads(received[-1].body)["attempt"] == 3
    flaky = rows(settings, "flaky")[0]
    assert (flaky["status"], flaky["attempts"], flaky["last_error"]) == ("sent", 3, None)
    assert len(receiver.received("/steady")) == 1


def test_a_hanging_sink_times_out_and_the_others_are_delivered(
    any_url: str, make_settings: SettingsFactory, receiver: Receiver
) -> None:
    receiver.script("/stuck", HANG)
    settings = make_settings(
        any_url,
        alerts={"webhooks": hooks(receiver, "stuck", "ok", stuck={"timeout": "500ms"})},
    )
    for _ in range(3):
        enqueue(settings)
    engine = engine_of(settings)
    t0 = datetime.now(UTC)

    started = time.monotonic()
    report = outbox.deliver_pending(engine, settings, now=t0)
    elapsed = time.monotonic() - started

    # one probe of the stuck sink, cut off at its timeout; its other rows wait behind it
    assert elapsed < 2.0, elapsed
    assert len(receiver.received("/stuck")) == 1
    stuck = report.sinks["stuck"]
    assert (stuck.retrying, stuck.deferred, stuck.last_error) == (1, 2, "no answer within 0.5s")
    assert report.sinks["ok"].delivered == 3
    assert report.sinks["log"].delivered == 3
    assert len(receiver.received("/ok")) == 3
    pending = rows(settings, "stuck")
    assert [r["status"] for r in pending] == ["pending"] * 3
    assert [r["attempts"] for r in pending] == [1, 0, 0]
    assert {r["next_attempt_at"] for r in pending} == {t0 + timedelta(seconds=30)}

    # the sink comes back: all three are delivered, in order
    later = outbox.deliver_pending(engine, settings, now=t0 + timedelta(seconds=30))
    assert later.sinks["stuck"].delivered == 3
    ids = [int(r.headers["x-sessionkeeper-delivery"]) for r in receiver.received("/stuck")]
    assert ids == sorted(ids)
    assert len(ids) == 4


def test_new_notifications_queue_behind_a_sink_that_is_backing_off(
    sqlite_url: str, make_settings: SettingsFactory, receiver: Receiver
) -> None:
    receiver.script("/down", 500)
    settings = make_settings(sqlite_url, alerts={"webhooks": hooks(receiver, "down")})
    engine = engine_of(settings)
    enqueue(settings, "new")
    t0 = datetime.now(UTC)
    outbox.deliver_pending(engine, settings, now=t0)
    enqueue(settings, "resolved")

    # the resolved notice is due, but must not overtake the new one still being retried
    report = outbox.deliver_pending(engine, settings, now=t0 + timedelta(seconds=5))
    assert "down" not in report.sinks
    assert report.sinks["log"].delivered == 1

    outbox.deliver_pending(engine, settings, now=t0 + timedelta(seconds=30))
    events = [json.loads(r.body)["event"] for r in receiver.received("/down")]
    assert events == ["new", "new", "resolved"]


def test_gives_up_after_max_attempts_and_keeps_the_row(
    sqlite_url: str, make_settings: SettingsFactory, receiver: Receiver
) -> None:
    receiver.script("/dead", 500, 500)
    settings = make_settings(
        sqlite_url, alerts={"webhooks": hooks(receiver, "dead"), "max_attempts": 2, "retry_base": "10s"}
    )
    engine = engine_of(settings)
    enqueue(settings)
    t0 = datetime.now(UTC)
    outbox.deliver_pending(engine, settings, now=t0)
    report = outbox.deliver_pending(engine, settings, now=t0 + timedelta(seconds=10))
    assert report.sinks["dead"].gave_up == 1
    dead = rows(settings, "dead")[0]
    assert (dead["status"], dead["attempts"]) == ("failed", 2)
    assert outbox.deliver_pending(engine, settings, now=t0 + timedelta(days=1)).claimed == 0


def test_rows_of_a_removed_sink_are_closed_not_retried_forever(
    sqlite_url: str, make_settings: SettingsFactory, receiver: Receiver
) -> None:
    before = make_settings(sqlite_url, alerts={"webhooks": hooks(receiver, "old")})
    enqueue(before)
    after = make_settings(sqlite_url)
    report = outbox.deliver_pending(engine_of(after), after)
    assert report.sinks["old"].gave_up == 1
    old = rows(after, "old")[0]
    assert (old["status"], old["last_error"]) == ("failed", "sink 'old' is not configured")
    assert receiver.received() == []


def test_a_pass_that_dies_leaves_its_rows_to_the_next_after_the_lease(
    any_url: str, make_settings: SettingsFactory, receiver: Receiver
) -> None:
    settings = make_settings(any_url, alerts={"webhooks": hooks(receiver, "ops")})
    engine = engine_of(settings)
    enqueue(settings)
    t0 = datetime.now(UTC)
    lease = outbox.lease_for(settings)
    # a pass claims and then "crashes" before sending anything
    claimed = outbox._claim(engine, now=t0, lease_until=t0 + lease, settings=settings)
    assert len(claimed) == 2
    assert outbox.deliver_pending(engine, settings, now=t0 + lease - timedelta(seconds=1)).claimed == 0
    report = outbox.deliver_pending(engine, settings, now=t0 + lease)
    assert report.delivered == 2
    assert len(receiver.received("/ops")) == 1


def test_concurrent_passes_deliver_each_notification_once(
    pg_url: str, make_settings: SettingsFactory, receiver: Receiver
) -> None:
    import concurrent.futures

    settings = make_settings(pg_url, alerts={"webhooks": hooks(receiver, "ops")})
    engine = engine_of(settings)
    for _ in range(20):
        enqueue(settings)
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        reports = list(pool.map(lambda _: outbox.deliver_pending(engine, settings), range(4)))
    # a pass that met another one claiming takes nothing; what it left is delivered next time
    reports.append(outbox.deliver_pending(engine, settings))
    assert sum(r.delivered for r in reports) == 40
    ids = [r.headers["x-sessionkeeper-delivery"] for r in receiver.received("/ops")]
    assert len(ids) == len(set(ids)) == 20


def test_sentry_is_retried_like_any_sink_and_deduplicated_by_event_id(
    sqlite_url: str, make_settings: SettingsFactory, receiver: Receiver
) -> None:
    path = "/api/7/envelope/"
    receiver.script(path, Answer(status=429, headers=(("Retry-After", "45"),)))
    settings = make_settings(sqlite_url, sentry={"dsn": receiver.url("/7").replace("http://", "http://pk@")})
    engine = engine_of(settings)
    enqueue(settings)
    t0 = datetime.now(UTC)
    first = outbox.deliver_pending(engine, settings, now=t0)
    assert first.sinks["sentry"].retrying == 1
    assert rows(settings, "sentry")[0]["next_attempt_at"] == t0 + timedelta(seconds=45)
    second = outbox.deliver_pending(engine, settings, now=t0 + timedelta(seconds=45))
    assert second.sinks["sentry"].delivered == 1
    events = [json.loads(r.body.split(b"\n")[2]) for r in receiver.received(path)]
    assert len(events) == 2
    assert events[0]["event_id"] == events[1]["event_id"]
    assert events[0]["tags"]["rule"] == "user_burst"
    assert events[0]["release"].startswith("sessionkeeper@")
    assert "42" not in json.dumps(events[0]["tags"]) + events[0]["message"]
