"""The purge job on PostgreSQL and SQLite alike: every reason, grace, NULLs, kinds, bounds, dry run, locks."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from tasks.purge import PurgeResult, purge_sessions
from tests.conftest import SettingsFactory
from tests.helpers import cli, cli_json
from worker import db, models, reference
from worker.sessiontable import utcnow
from worker.settings import Settings

pytestmark = pytest.mark.integration

#: the suite may run minutes after import: every margin below is an hour or more
NOW = utcnow()
H = timedelta(hours=1)
D = timedelta(days=1)


def _row(sid: str, user: str = "u1", **times: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": sid,
        "token_hash": sid.encode(),
        "user_id": user,
        "created_at": NOW - H,
        "last_activity_at": NOW - H,
        "expires_at": NOW + D,
        "revoked_at": None,
    }
    row.update(times)
    return row


def _seed(settings: Settings, rows: list[dict[str, Any]]) -> sa.Engine:
    engine = db.get_engine(settings)
    with engine.begin() as conn:
        reference.create_reference_table(conn)
        if rows:
            conn.execute(sa.insert(reference.reference_table()), rows)
    return engine


def _ids(engine: sa.Engine, table: str = "sessions", col: str = "id") -> set[Any]:
    t = sa.table(table, sa.column(col))
    with engine.connect() as conn:
        return {r[0] for r in conn.execute(sa.select(t.c[col]))}


def _runs(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(models.job_runs).order_by(models.job_runs.c.id))
        return [dict(r._mapping) for r in rows]


POLICY = {"grace": "1h", "idle_timeout": "7d", "absolute_timeout": "30d", "max_sessions_per_user": 2}


def _reasons_rows() -> list[dict[str, Any]]:
    return [
        _row("expired", expires_at=NOW - 2 * H),
        _row("expired_and_idle", expires_at=NOW - 2 * H, last_activity_at=NOW - 8 * D),
        _row("in_grace", expires_at=NOW - H / 2),
        _row("null_expiry", expires_at=None),
        _row("idle", last_activity_at=NOW - 8 * D),
        _row("absolute", created_at=NOW - 31 * D),
        _row("revoked", revoked_at=NOW - 2 * H),
        _row("revoked_in_grace", revoked_at=NOW - H / 2),
        # user "crowd" has four active sessions: the two least recently active go (cap = 2)
        *(_row(f"crowd{i}", "crowd", last_activity_at=NOW - i * timedelta(minutes=10)) for i in range(4)),
    ]


KEPT = {"in_grace", "null_expiry", "revoked_in_grace", "crowd0", "crowd1"}


@pytest.mark.parametrize("batch_size", [3, 5000])
def test_every_reason_counted_separately_and_recorded(
    any_url: str, make_settings: SettingsFactory, batch_size: int
) -> None:
    settings = make_settings(
        any_url, policy=POLICY, purge={"batch_size": batch_size, "fast_batch_size": batch_size}
    )
    engine = _seed(settings, _reasons_rows())
    result = purge_sessions(engine=engine, settings=settings, fast=True)
    assert result.outcome == "succeeded"
    assert result.deleted == {"expired": 2, "idle": 1, "absolute": 1, "revoked": 1, "cap": 2}
    assert _ids(engine) == KEPT
    assert result.pending == {} and result.expired_pending == 0 and result.lag_seconds == 0
    run = _runs(engine)[-1]
    assert run["job"] == "purge" and run["outcome"] == "succeeded" and run["finished_at"] is not None
    figures = run["figures"]
    assert figures["deleted"] == result.deleted and figures["deleted_total"] == 7
    assert figures["batches"] >= (3 if batch_size == 3 else 2)
    assert {"rows_per_second", "lag_seconds_after", "expired_pending_after", "pending_after"} <= set(figures)
    if any_url.startswith("postgresql"):
        assert figures["wal_bytes"] > 0


def test_dry_run_counts_per_reason_and_deletes_nothing(any_url: str, make_settings: SettingsFactory) -> None:
    settings = make_settings(any_url, policy=POLICY)
    engine = _seed(settings, _reasons_rows())
    result = purge_sessions(engine=engine, settings=settings, dry_run=True)
    assert result.dry_run and result.deleted == {}
    assert result.pending == {"expired": 2, "idle": 1, "absolute": 1, "revoked": 1, "cap": 2}
    assert result.expired_pending == 2 and 3600 <= result.lag_seconds < 3600 + 900
    assert len(_ids(engine)) == len(_reasons_rows())
    assert _runs(engine) == []  # a preview is not a run of the job


def test_grace_zero_and_null_expiry(any_url: str, make_settings: SettingsFactory) -> None:
    settings = make_settings(any_url)  # no idle/absolute/cap policy; grace 0
    engine = _seed(
        settings,
        [
            _row("past", expires_at=NOW - timedelta(seconds=30)),
            _row("future", expires_at=NOW + H),
            _row("null", expires_at=None),
            _row("old_but_no_policy", created_at=NOW - 400 * D, last_activity_at=NOW - 400 * D),
        ],
    )
    result = purge_sessions(engine=engine, settings=settings)
    assert result.deleted == {"expired": 1}
    assert _ids(engine) == {"future", "null", "old_but_no_policy"}


def test_run_bounds_leave_the_rest_and_report_the_lag(any_url: str, make_settings: SettingsFactory) -> None:
    settings = make_settings(any_url, purge={"batch_size": 7, "fast_batch_size": 7})
    rows = [_row(f"s{i:03d}", expires_at=NOW - (i + 1) * H) for i in range(50)]
    engine = _seed(settings, rows)
    first = purge_sessions(engine=engine, settings=settings, max_rows=20, fast=True)
    assert first.deleted_total == 20 and first.stopped == "max_rows"
    assert first.expired_pending == 30 and first.pending == {"expired": 30}
    assert first.lag_seconds > 3600
    timed = purge_sessions(engine=engine, settings=settings, max_seconds=0.000001, fast=True)
    assert timed.stopped == "max_seconds" and timed.deleted_total == 0
    rest = purge_sessions(engine=engine, settings=settings, fast=True)
    assert rest.deleted_total == 30 and rest.stopped is None
    assert rest.expired_pending == 0 and rest.lag_seconds == 0
    assert _ids(engine) == set()
    assert [r["figures"].get("stopped") for r in _runs(engine)] == ["max_rows", "max_seconds", None]


def _custom_table(
    engine: sa.Engine, ddl_pg: str, ddl_sqlite: str, rows: list[dict[str, Any]], name: str
) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(ddl_pg if db.is_postgres(conn) else ddl_sqlite))
        cols = list(rows[0])
        conn.execute(sa.insert(sa.table(name, *(sa.column(c) for c in cols))), rows)


def test_epoch_columns_compared_as_numbers(any_url: str, make_settings: SettingsFactory) -> None:
    settings = make_settings(
        any_url,
        sessions={
            "table": "epoch_sessions",
            "id": "sid",
            "user_id": "uid",
            "expires_at": "exp",
            "created_at": "born",
            "time_kinds": {"expires_at": "epoch_seconds", "created_at": "epoch_millis"},
        },
        policy={"absolute_timeout": "1d"},
    )
    engine = db.get_engine(settings)
    t = NOW.timestamp()
    rows = [
        {"sid": 1, "uid": 1, "exp": int(t - 10), "born": int((t - 60) * 1000)},  # expired
        {"sid": 2, "uid": 1, "exp": int(t + 3600), "born": int((t - 60) * 1000)},  # live
        {"sid": 3, "uid": 1, "exp": None, "born": int((t - 2 * 86400) * 1000)},  # absolute
        {"sid": 4, "uid": 2, "exp": int(t + 3600), "born": int((t - 3600) * 1000)},  # live
    ]
    _custom_table(
        engine,
        "CREATE TABLE epoch_sessions (sid int primary key, uid int, exp bigint, born bigint)",
        "CREATE TABLE epoch_sessions (sid integer primary key, uid integer, exp integer, born integer)",
        rows,
        "epoch_sessions",
    )
    result = purge_sessions(engine=engine, settings=settings, fast=True)
    assert result.deleted == {"expired": 1, "absolute": 1}
    assert _ids(engine, "epoch_sessions", "sid") == {2, 4}


def test_boolean_active_flag_false_means_revoked(any_url: str, make_settings: SettingsFactory) -> None:
    settings = make_settings(
        any_url,
        sessions={
            "table": "flag_sessions",
            "id": "sid",
            "expires_at": "exp",
            "revoked": "active",
            "revoked_when": "false",
        },
    )
    engine = db.get_engine(settings)
    future = NOW + D
    naive = future.replace(tzinfo=None)
    pg = any_url.startswith("postgresql")
    rows = [
        {"sid": "on", "exp": future if pg else naive, "active": True},
        {"sid": "off", "exp": future if pg else naive, "active": False},
        {"sid": "unknown", "exp": future if pg else naive, "active": None},
    ]
    _custom_table(
        engine,
        "CREATE TABLE flag_sessions (sid text primary key, exp timestamptz, active boolean)",
        "CREATE TABLE flag_sessions (sid text primary key, exp timestamp, active boolean)",
        rows,
        "flag_sessions",
    )
    result = purge_sessions(engine=engine, settings=settings, fast=True)
    assert result.deleted == {"revoked": 1}
    assert _ids(engine, "flag_sessions", "sid") == {"on", "unknown"}


def test_cap_keeps_the_most_recently_active(any_url: str, make_settings: SettingsFactory) -> None:
    settings = make_settings(
        any_url, policy={"max_sessions_per_user": 3}, purge={"batch_size": 2, "fast_batch_size": 2}
    )
    rows = [_row(f"a{i}", "alice", last_activity_at=NOW - i * H) for i in range(7)]
    rows += [_row(f"b{i}", "bob", last_activity_at=NOW - i * H) for i in range(3)]
    rows.append(_row("a_expired", "alice", expires_at=NOW - H))  # not live: neither counted nor "cap"
    rows.append(_row("a_null_activity", "alice", last_activity_at=None))  # least recent of all
    engine = _seed(settings, rows)
    result = purge_sessions(engine=engine, settings=settings, fast=True)
    assert result.deleted == {"expired": 1, "cap": 5}
    assert _ids(engine) == {"a0", "a1", "a2", "b0", "b1", "b2"}


def test_second_run_while_one_holds_the_table_is_recorded_skipped(
    any_url: str, make_settings: SettingsFactory
) -> None:
    settings = make_settings(any_url)
    engine = _seed(settings, [_row("gone", expires_at=NOW - H)])
    holder = engine.connect()
    try:
        if db.is_postgres(engine):
            holder.begin()
            assert db.try_advisory_xact_lock(holder, "purge", "sessions")
        else:  # a run in progress, as another process would have recorded it
            with holder.begin():
                holder.execute(
                    sa.insert(models.job_runs).values(job="purge", started_at=utcnow(), outcome="running")
                )
        result = purge_sessions(engine=engine, settings=settings)
    finally:
        holder.rollback()
        holder.close()
    assert result.outcome == "skipped" and result.deleted_total == 0
    assert _ids(engine) == {"gone"}
    assert _runs(engine)[-1]["outcome"] == "skipped"


def test_two_runs_started_together_never_double_delete_or_fail(
    any_url: str, make_settings: SettingsFactory
) -> None:
    settings = make_settings(any_url, purge={"batch_size": 25})
    rows = [_row(f"s{i:04d}", expires_at=NOW - H if i % 2 else NOW + H) for i in range(1200)]
    engine = _seed(settings, rows)
    start = threading.Barrier(2)
    results: list[PurgeResult] = []
    errors: list[BaseException] = []

    def one() -> None:
        start.wait()
        try:
            results.append(purge_sessions(engine=engine, settings=settings))
        except BaseException as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert errors == []
    assert sorted(r.outcome for r in results) in (["skipped", "succeeded"], ["succeeded", "succeeded"])
    assert sum(r.deleted_total for r in results) == 600
    assert len(_ids(engine)) == 600


def test_cli_json_and_plain_output(any_url: str) -> None:
    env = {"SESSIONKEEPER_DATABASE__URL": any_url, "SESSIONKEEPER_PURGE__BATCH_SIZE": "2"}
    engine = db.make_engine(any_url)
    with engine.begin() as conn:
        reference.create_reference_table(conn)
        conn.execute(
            sa.insert(reference.reference_table()), [_row(f"x{i}", expires_at=NOW - H) for i in range(5)]
        )
    engine.dispose()
    preview = cli_json("purge", "--dry-run", env=env)
    assert preview["pending"] == {"expired": 5} and preview["deleted_total"] == 0
    done = cli_json("purge", "--fast", "--max-rows", "3", "--batch-size", "1", env=env)
    assert done["deleted"] == {"expired": 3} and done["batches"] == 3 and done["stopped"] == "max_rows"
    plain = cli("purge", env=env)
    assert plain.returncode == 0, plain.stderr
    assert "deleted 2 rows" in plain.stdout and "left: 0 rows" in plain.stdout


def test_mismatched_mapping_exits_2_before_touching_a_row(any_url: str) -> None:
    engine = db.make_engine(any_url)
    with engine.begin() as conn:
        reference.create_reference_table(conn)
        conn.execute(sa.insert(reference.reference_table()), [_row("old", expires_at=NOW - D)])
    env = {"SESSIONKEEPER_DATABASE__URL": any_url, "SESSIONKEEPER_SESSIONS__LAST_ACTIVITY_AT": "seen_at"}
    proc = cli("purge", env=env)
    assert proc.returncode == 2, proc.stderr
    assert "sessions.last_activity_at" in proc.stderr and "'seen_at'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _ids(engine) == {"old"}
    engine.dispose()


def test_unreachable_database_exits_1_with_one_line() -> None:
    proc = cli("purge", env={"SESSIONKEEPER_DATABASE__URL": "postgresql://postgres@127.0.0.1:1/nowhere"})
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "database unreachable" in lines[0], proc.stderr
