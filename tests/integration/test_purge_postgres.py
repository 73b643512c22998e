"""PostgreSQL-only purge behaviour: time zones, partitions, strategies, row and table locks, Celery."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from tasks.purge import purge_sessions, purge_task
from tests.conftest import SettingsFactory
from tests.integration.test_purge import KEPT, NOW, POLICY, _ids, _reasons_rows, _seed
from worker import db
from worker.errors import DatabaseUnavailable

pytestmark = pytest.mark.integration

H = timedelta(hours=1)
D = timedelta(days=1)


def _exec(engine: sa.Engine, *statements: str, **params: Any) -> None:
    with engine.begin() as conn:
        for s in statements:
            conn.execute(sa.text(s), params)


@pytest.mark.parametrize("strategy", ["walk", "index"])
def test_walk_and_index_strategies_agree(pg_url: str, make_settings: SettingsFactory, strategy: str) -> None:
    settings = make_settings(
        pg_url, policy=POLICY, purge={"batch_size": 2, "fast_batch_size": 2, "strategy": strategy}
    )
    engine = _seed(settings, _reasons_rows())
    result = purge_sessions(engine=engine, settings=settings, fast=True)
    assert result.strategy == strategy
    assert result.deleted == {"expired": 2, "idle": 1, "absolute": 1, "revoked": 1, "cap": 2}
    assert _ids(engine) == KEPT


def test_auto_walks_a_backlog_and_follows_the_index_for_a_trickle(
    pg_url: str, make_settings: SettingsFactory
) -> None:
    settings = make_settings(
        pg_url, sessions={"profile": "sessionkeeper", "revoked": ""}, purge={"batch_size": 50}
    )
    rows = [
        {
            "id": f"s{i}",
            "token_hash": f"s{i}".encode(),
            "user_id": "u",
            "expires_at": NOW + (-H if i < 900 else D),
        }
        for i in range(1000)
    ]
    engine = _seed(settings, rows)
    _exec(engine, "ANALYZE sessions")
    backlog = purge_sessions(engine=engine, settings=settings, fast=True)
    assert backlog.strategy == "walk" and backlog.deleted == {"expired": 900}
    _exec(engine, "UPDATE sessions SET expires_at = now() - interval '1 minute' WHERE id IN ('s990', 's991')")
    trickle = purge_sessions(engine=engine, settings=settings, fast=True)
    assert trickle.strategy == "index" and trickle.deleted == {"expired": 2}


def test_naive_timestamps_are_utc_whatever_the_server_time_zone(
    pg_url: str, make_settings: SettingsFactory
) -> None:
    engine = db.make_engine(pg_url)
    name = engine.url.database
    _exec(
        engine,
        f"ALTER DATABASE \"{name}\" SET timezone TO 'Pacific/Kiritimati'",  # UTC+14
        "CREATE TABLE naive_sessions (id int primary key, uid int, expires timestamp, seen timestamp)",
    )
    engine.dispose()
    settings = make_settings(
        pg_url,
        sessions={
            "table": "naive_sessions",
            "id": "id",
            "user_id": "uid",
            "expires_at": "expires",
            "last_activity_at": "seen",
            "time_kind": "timestamp",
        },
        policy={"idle_timeout": "2h"},
    )
    engine = db.get_engine(settings)
    utc = NOW.replace(tzinfo=None)
    with engine.begin() as conn:
        assert conn.execute(sa.text("SHOW timezone")).scalar() == "Pacific/Kiritimati"
        conn.execute(
            sa.text("INSERT INTO naive_sessions VALUES (:i, 1, :e, :s)"),
            [
                {"i": 1, "e": utc - timedelta(minutes=30), "s": utc},  # expired half an hour ago (UTC)
                {"i": 2, "e": utc + timedelta(minutes=30), "s": utc},  # live for 30 more minutes
                {"i": 3, "e": utc + D, "s": utc - 3 * H},  # idle
                {"i": 4, "e": utc + D, "s": utc - H},  # active
            ],
        )
    result = purge_sessions(engine=engine, settings=settings, fast=True)
    assert result.deleted == {"expired": 1, "idle": 1}
    assert _ids(engine, "naive_sessions") == {2, 4}


def test_a_row_the_app_holds_is_skipped_not_waited_on(pg_url: str, make_settings: SettingsFactory) -> None:
    settings = make_settings(pg_url, purge={"lock_timeout": "30s"})
    engine = _seed(settings, [_row_expired(f"e{i}") for i in range(10)])
    app = engine.connect()
    app.begin()
    app.execute(sa.text("SELECT 1 FROM sessions WHERE id = 'e3' FOR UPDATE"))
    try:
        started = time.monotonic()
        result = purge_sessions(engine=engine, settings=settings, fast=True)
        assert time.monotonic() - started < 5
    finally:
        app.rollback()
        app.close()
    assert result.deleted == {"expired": 9} and result.expired_pending == 1
    assert _ids(engine) == {"e3"}


def _row_expired(sid: str) -> dict[str, Any]:
    return {"id": sid, "token_hash": sid.encode(), "user_id": "u", "expires_at": NOW - H}


def test_a_table_lock_times_out_batches_and_ends_the_run_cleanly(
    pg_url: str, make_settings: SettingsFactory
) -> None:
    settings = make_settings(pg_url, purge={"lock_timeout": "100ms", "strategy": "walk"})
    engine = _seed(settings, [_row_expired("e1")])
    ddl = engine.connect()
    ddl.begin()
    ddl.execute(sa.text("LOCK TABLE sessions IN SHARE MODE"))  # blocks DELETE, not reads
    try:
        result = purge_sessions(engine=engine, settings=settings, fast=True)
    finally:
        ddl.rollback()
        ddl.close()
    assert result.outcome == "succeeded" and result.stopped == "lock_timeouts"
    assert result.timeouts == {"lock_timeouts": 5} and result.deleted_total == 0
    assert _ids(engine) == {"e1"}


PARTITIONED = """
CREATE TABLE psessions (
    id text NOT NULL, user_id text NOT NULL, token_hash bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(), last_activity_at timestamptz,
    expires_at timestamptz NOT NULL, ip inet, user_agent text, revoked_at timestamptz,
    PRIMARY KEY (id, expires_at)
) PARTITION BY RANGE (expires_at)
"""


def _partitioned(engine: sa.Engine, *, default: bool) -> dict[str, int]:
    """Daily partitions from 3 days ago to 2 days ahead, 20 rows each, expiries spread over the day."""
    day0 = NOW.replace(hour=0, minute=0, second=0, microsecond=0)
    statements = [
        PARTITIONED,
        "CREATE INDEX ON psessions (expires_at)",
        "CREATE INDEX ON psessions (user_id)",
    ]
    for k in range(-3, 3):
        lo, hi = day0 + k * D, day0 + (k + 1) * D
        statements.append(
            f"CREATE TABLE psessions_d{k + 3} PARTITION OF psessions FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')"
        )
    if default:
        statements.append("CREATE TABLE psessions_default PARTITION OF psessions DEFAULT")
    _exec(engine, *statements)
    rows = []
    for k in range(-3, 3):
        for i in range(20):
            expires = day0 + k * D + timedelta(minutes=1 + i * 71)
            rows.append({"id": f"d{k}_{i}", "u": f"u{i % 3}", "t": f"{k}{i}".encode(), "e": expires})
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO psessions (id, user_id, token_hash, expires_at) VALUES (:id, :u, :t, :e)"),
            rows,
        )
        expired = conn.execute(
            sa.text("SELECT count(*) FROM psessions WHERE expires_at < now()")
        ).scalar_one()
    return {"expired": int(expired), "total": len(rows)}


def _tables(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(sa.inspect(conn).get_table_names())


@pytest.mark.parametrize(("mode", "default"), [("drop", False), ("detach", True)])
def test_partitions_below_the_cutoff_go_whole_then_the_boundary_in_batches(
    pg_url: str, make_settings: SettingsFactory, mode: str, default: bool
) -> None:
    settings = make_settings(
        pg_url,
        sessions={"profile": "sessionkeeper", "table": "psessions"},
        purge={"partitions": mode, "batch_size": 4, "fast_batch_size": 4},
    )
    engine = db.get_engine(settings)
    counts = _partitioned(engine, default=default)
    preview = purge_sessions(engine=engine, settings=settings, dry_run=True)
    assert preview.partitions_dropped == ["public.psessions_d0", "public.psessions_d1", "public.psessions_d2"]
    assert preview.pending == {"expired": counts["expired"]}
    result = purge_sessions(engine=engine, settings=settings, fast=True)
    assert result.deleted == {"expired": counts["expired"]}
    assert result.expired_pending == 0 and result.lag_seconds == 0
    whole = ["public.psessions_d0", "public.psessions_d1", "public.psessions_d2"]
    if mode == "drop":
        assert result.partitions_dropped == whole and result.partitions_detached == []
        assert not {"psessions_d0", "psessions_d1", "psessions_d2"} & _tables(engine)
    else:
        assert result.partitions_detached == whole and result.partitions_dropped == []
        assert {"psessions_d0", "psessions_d1", "psessions_d2"} <= _tables(engine)  # kept, detached
    with engine.connect() as conn:
        left = conn.execute(sa.text("SELECT count(*), min(expires_at) > now() FROM psessions")).one()
    assert left[0] == counts["total"] - result.deleted_total and left[1] is True


def test_celery_task_retries_when_the_database_is_unreachable() -> None:
    assert DatabaseUnavailable in purge_task.autoretry_for
    assert purge_task.retry_backoff and purge_task.max_retries is not None
    assert purge_task.name == "sessionkeeper.purge"
