"""The stats job against hand-built tables: every figure checked against a count done in Python."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from tasks import stats
from tests.conftest import SettingsFactory
from tests.helpers import cli, cli_json
from worker import db, models, reference
from worker.jobruns import last_runs
from worker.settings import PolicySettings, Settings

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=123000)
H = timedelta(hours=1)
D = timedelta(days=1)


@dataclass(frozen=True)
class Row:
    """One session as the oracle sees it (aware UTC datetimes, whatever the table stores)."""

    id: int
    user: str | None
    created: datetime
    last: datetime | None
    exp: datetime | None
    ip: str | None = None
    ua: str | None = None
    revoked: bool = False
    revoked_at: datetime | None = None


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    pos = p * (len(values) - 1)
    low, high = math.floor(pos), math.ceil(pos)
    return values[low] + (pos - low) * (values[high] - values[low])


def oracle(
    rows: list[Row], now: datetime, policy: PolicySettings, previous: datetime | None
) -> dict[str, Any]:
    """The figures, counted row by row with no SQL at all."""

    def active(r: Row) -> bool:
        return (
            (r.exp is None or r.exp >= now)
            and (policy.idle_timeout is None or r.last is None or r.last >= now - policy.idle_timeout)
            and (policy.absolute_timeout is None or r.created >= now - policy.absolute_timeout)
            and not r.revoked
        )

    def purgeable(r: Row) -> bool:
        return (
            (r.exp is not None and r.exp < now - policy.grace)
            or (policy.idle_timeout is not None and r.last is not None and r.last < now - policy.idle_timeout)
            or (policy.absolute_timeout is not None and r.created < now - policy.absolute_timeout)
            or (r.revoked and (r.revoked_at is None or r.revoked_at < now - policy.grace))
        )

    live = [r for r in rows if active(r)]
    late = [r.exp for r in rows if r.exp is not None and r.exp < now - policy.grace]
    idle = [(now - r.last).total_seconds() for r in live if r.last is not None]
    users: dict[str, dict[str, Any]] = {}
    for user in {r.user for r in live if r.user is not None}:
        mine = [r for r in live if r.user == user]
        users[user] = {
            "active_sessions": len(mine),
            "created_24h": sum(1 for r in mine if r.created >= now - D),
            "distinct_ips": len({r.ip for r in mine if r.ip is not None}),
            "distinct_user_agents": len({r.ua for r in mine if r.ua is not None}),
            "oldest_created_at": min(r.created for r in mine),
            "newest_created_at": max(r.created for r in mine),
            "last_activity_at": max((r.last for r in mine if r.last), default=None),
        }
    counts = [float(u["active_sessions"]) for u in users.values()]
    return {
        "total_rows": len(rows),
        "active": len(live),
        "expired_pending": sum(1 for r in rows if purgeable(r)),
        "null_expiry": sum(1 for r in rows if r.exp is None),
        "purge_lag_seconds": ((now - policy.grace) - min(late)).total_seconds() if late else 0.0,
        "created_since_previous": (
            sum(1 for r in rows if previous <= r.created < now) if previous is not None else None
        ),
        "idle_mean_seconds": sum(idle) / len(idle) if idle else None,
        "idle_p95_seconds": _pct(idle, 0.95),
        "users_active": len(users),
        "per_user_p50": _pct(counts, 0.5),
        "per_user_p95": _pct(counts, 0.95),
        "per_user_p99": _pct(counts, 0.99),
        "per_user_max": max(counts, default=None),
        "users": users,
    }


def assert_figures(got: dict[str, Any], want: dict[str, Any], skip: tuple[str, ...] = ()) -> None:
    for key, value in want.items():
        if key == "users" or key in skip:
            continue
        if value is None:
            assert got[key] is None, key
        else:
            assert got[key] == pytest.approx(value, abs=0.01), key


def assert_users(engine: sa.Engine, want: dict[str, dict[str, Any]], skip: tuple[str, ...] = ()) -> None:
    with engine.connect() as conn:
        stored = {r.user_id: dict(r._mapping) for r in conn.execute(sa.select(models.user_stats))}
    assert set(stored) == set(want)
    for user, figures in want.items():
        for key, value in figures.items():
            if key in skip:
                assert stored[user][key] is None, (user, key)
            elif isinstance(value, datetime):
                assert abs(stored[user][key] - value) < timedelta(milliseconds=2), (user, key)
            else:
                assert stored[user][key] == value, (user, key)


# --- the reference table, timestamptz, every policy rule ------------------------------------


def reference_rows(now: datetime) -> list[Row]:
    rows = [
        Row(1, "alice", now - 2 * H, now - timedelta(minutes=10), now + D, "10.0.0.1", "A"),
        Row(2, "alice", now - 3 * D, now - D, None, "10.0.0.2", "B"),  # NULL expiry: live
        Row(3, "alice", now - 5 * H, now - 5 * H, now + D, "10.0.0.1", "A", True, now - 2 * H),  # revoked
        Row(4, "alice", now - 20 * H, now - 20 * H, now - timedelta(minutes=30), "10.0.0.3", "A"),  # in grace
        Row(5, "bob", now - 10 * D, now - 8 * D, now + 5 * D, "10.0.1.1", "A"),  # idle timed out
        Row(6, "bob", now - 40 * D, now - H, now + 5 * D, "10.0.1.1", "A"),  # absolute timed out
        Row(7, "bob", now - D - H, None, now + 2 * D, None, None),  # no activity, no ip
        Row(8, "carol", now - 9 * D, now - 9 * D, now - 3 * D, "10.0.2.1", "C"),  # all expired
        Row(9, "carol", now - 8 * D, now - 8 * D, now - 2 * D, "10.0.2.1", "C"),
        Row(10, "dave", now - 6 * H, now - H, now + H, "10.9.9.9", "C"),
    ]
    n = 11
    for k in range(1, 8):  # users with 1..7 sessions, for the distribution
        for j in range(k):
            rows.append(
                Row(
                    n,
                    f"u{k}",
                    now - (j + 1) * H,
                    now - j * timedelta(minutes=7),
                    now + D,
                    f"10.1.{k}.{j % 2}",
                    "A",
                )
            )
            n += 1
    return rows


def insert_reference(engine: sa.Engine, rows: list[Row]) -> None:
    table = reference.reference_table()
    with engine.begin() as conn:
        reference.create_reference_table(conn)
        conn.execute(
            sa.insert(table),
            [
                {
                    "id": f"s{r.id}",
                    "token_hash": r.id.to_bytes(4, "big"),
                    "user_id": r.user,
                    "created_at": r.created,
                    "last_activity_at": r.last,
                    "expires_at": r.exp,
                    "ip": r.ip,
                    "user_agent": r.ua,
                    "revoked_at": r.revoked_at,
                }
                for r in rows
            ],
        )


REF_POLICY = {"grace": "1h", "idle_timeout": "7d", "absolute_timeout": "30d"}


def test_reference_table_every_figure_and_incremental_runs(
    any_url: str, make_settings: SettingsFactory
) -> None:
    settings = make_settings(any_url, policy=REF_POLICY)
    engine = db.get_engine(settings)
    rows = reference_rows(NOW)
    insert_reference(engine, rows)

    first = stats.refresh_stats(engine, settings, now=NOW)
    assert first is not None
    want = oracle(rows, NOW, settings.policy, None)
    assert_figures(first, want)
    assert set(want["users"]) == {"alice", "bob", "dave", *(f"u{k}" for k in range(1, 8))}  # no carol
    assert_users(engine, want["users"])
    assert first["users_written"] == len(want["users"])
    assert first["unavailable"].keys() <= {"created_since_previous", "table_bytes", "index_bytes"}
    if db.is_postgres(engine):
        assert first["table_bytes"] > 0 and first["index_bytes"] > 0
    else:
        assert first["table_bytes"] is None and "table_bytes" in first["unavailable"]
    assert stats.latest_snapshot(engine)["id"] == first["id"]

    # Unchanged: nothing rewritten (updated_at stays), a second snapshot appended.
    second = stats.refresh_stats(engine, settings, now=NOW)
    assert second is not None
    assert (second["users_written"], second["users_removed"]) == (0, 0)
    assert second["created_since_previous"] == 0
    assert {u["updated_at"] for u in stats.top_users(engine, 100)} == {NOW}

    # Later: dave's only session expires, alice gets a new one, u7 is untouched.
    later = NOW + timedelta(minutes=10)
    t = reference.reference_table()
    new = Row(99, "alice", NOW + timedelta(minutes=5), NOW + timedelta(minutes=5), later + D, "10.0.0.9", "Z")
    with engine.begin() as conn:
        conn.execute(
            sa.update(t).where(t.c.user_id == "dave").values(expires_at=later - timedelta(minutes=1))
        )
    rows = [replace(r, exp=later - timedelta(minutes=1)) if r.user == "dave" else r for r in rows]
    insert_reference(engine, [new])
    rows.append(new)
    third = stats.refresh_stats(engine, settings, now=later)
    assert third is not None
    want = oracle(rows, later, settings.policy, NOW)
    assert_figures(third, want)
    assert third["created_since_previous"] == 1
    assert_users(engine, want["users"])
    assert "dave" not in want["users"]
    # alice changed; u1..u7 and bob only if their figures moved (they did not, except by time)
    assert third["users_removed"] == 1
    assert third["users_written"] == 1
    assert stats.user_stats(engine, "u7")["updated_at"] == NOW
    assert stats.user_stats(engine, "alice")["updated_at"] == later
    assert stats.user_stats(engine, "dave") is None
    assert [u["user_id"] for u in stats.top_users(engine, 2)] == ["u7", "u6"]
    assert [s["id"] for s in stats.snapshot_history(engine, limit=2)] == [third["id"], second["id"]]

    runs = last_runs(engine, "stats", limit=5)
    assert [r["outcome"] for r in runs] == ["succeeded"] * 3
    assert runs[0]["figures"]["users_removed"] == 1
    assert runs[0]["figures"]["snapshot_id"] == third["id"]


# --- epoch and naive timestamps, an "active" flag, NULL users -------------------------------


def legacy_table() -> sa.Table:
    return sa.Table(
        "legacy_sessions",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("uid", sa.Integer),
        sa.Column("exp", sa.BigInteger),  # epoch seconds
        sa.Column("born", sa.BigInteger, nullable=False),  # epoch milliseconds
        sa.Column("seen", sa.DateTime(timezone=False)),  # naive UTC
        sa.Column("addr", sa.String(45)),
        sa.Column("agent", sa.Text),
        sa.Column("ok", sa.Boolean, nullable=False),  # revoked when false
    )


LEGACY_SESSIONS = {
    "table": "legacy_sessions",
    "id": "id",
    "user_id": "uid",
    "expires_at": "exp",
    "created_at": "born",
    "last_activity_at": "seen",
    "ip": "addr",
    "user_agent": "agent",
    "revoked": "ok",
    "revoked_when": "false",
    "time_kinds": {
        "expires_at": "epoch_seconds",
        "created_at": "epoch_millis",
        "last_activity_at": "timestamp",
    },
}


def test_epoch_and_naive_timestamps_and_null_users(any_url: str, make_settings: SettingsFactory) -> None:
    settings = make_settings(any_url, sessions=LEGACY_SESSIONS)
    engine = db.get_engine(settings)
    now = NOW
    m = timedelta(minutes=1)
    rows = [
        Row(1, "1", now - 3 * H, now - m, now + D, "10.0.0.1", "A"),
        Row(2, "1", now - 30 * H, now - 2 * H, None, "10.0.0.1", "B"),  # NULL expiry
        Row(3, "1", now - 2 * H, now - 2 * H, now + D, "10.0.0.2", "A", revoked=True),  # flag off
        Row(4, "2", now - 4 * D, now - 3 * D, now - 2 * D, "10.0.0.3", "A"),  # user 2: all expired
        Row(5, "2", now - 5 * H, now - 5 * H, now - 3 * H, "10.0.0.3", "A"),
        Row(6, None, now - H, now - 30 * m, now + H, "10.0.0.4", "C"),  # anonymous session
        Row(7, "3", now - 50 * m, None, now + 2 * H, None, None),
        Row(8, "3", now - 10 * D, now - 9 * D, now + 20 * D, "10.0.0.5", "C"),
    ]
    table = legacy_table()
    with engine.begin() as conn:
        table.create(conn)
        conn.execute(
            sa.insert(table),
            [
                {
                    "id": r.id,
                    "uid": int(r.user) if r.user else None,
                    "exp": int(r.exp.timestamp()) if r.exp else None,
                    "born": int(r.created.timestamp() * 1000),
                    "seen": r.last.replace(tzinfo=None) if r.last else None,
                    "addr": r.ip,
                    "agent": r.ua,
                    "ok": not r.revoked,
                }
                for r in rows
            ],
        )
    # the oracle sees what the table can hold: expiry to the second, creation to the millisecond
    rows = [
        replace(
            r,
            exp=datetime.fromtimestamp(int(r.exp.timestamp()), UTC) if r.exp else None,
            created=datetime.fromtimestamp(int(r.created.timestamp() * 1000) / 1000, UTC),
        )
        for r in rows
    ]
    got = stats.refresh_stats(engine, settings, now=now)
    assert got is not None
    want = oracle(rows, now, settings.policy, None)
    assert_figures(got, want)
    assert want["total_rows"] == 8 and want["users_active"] == 2 and want["null_expiry"] == 1
    assert_users(engine, want["users"])
    assert set(want["users"]) == {"1", "3"}
    assert stats.user_stats(engine, "1")["active_sessions"] == 2


# --- a table without a user column (Django) -------------------------------------------------


def test_table_without_user_column_gets_global_figures(any_url: str, make_settings: SettingsFactory) -> None:
    settings = make_settings(any_url, sessions={"profile": "django"}, policy={"grace": "10m"})
    engine = db.get_engine(settings)
    django = sa.Table(
        "django_session",
        sa.MetaData(),
        sa.Column("session_key", sa.String(40), primary_key=True),
        sa.Column("session_data", sa.Text, nullable=False),
        sa.Column("expire_date", sa.DateTime(timezone=True), nullable=False),
    )
    offsets = [-3 * D, -H, -timedelta(minutes=5), H, 2 * D, 14 * D]
    rows = [Row(i, None, NOW - 30 * D, None, NOW + off) for i, off in enumerate(offsets)]
    with engine.begin() as conn:
        django.create(conn)
        conn.execute(
            sa.insert(django),
            [{"session_key": f"k{r.id}", "session_data": "e30=", "expire_date": r.exp} for r in rows],
        )
        # stale per-user rows from an earlier mapping: they cannot be vouched for any more
        conn.execute(sa.insert(models.user_stats).values(user_id="x", active_sessions=1, updated_at=NOW))
    got = stats.refresh_stats(engine, settings, now=NOW)
    assert got is not None
    want = oracle(rows, NOW, settings.policy, None)
    assert_figures(
        got,
        want,
        skip=(
            "created_since_previous",
            "users_active",
            "per_user_p50",
            "per_user_p95",
            "per_user_p99",
            "per_user_max",
        ),
    )
    assert (got["active"], got["expired_pending"], got["null_expiry"]) == (3, 2, 0)
    for figure in (
        "users_active",
        "per_user_p50",
        "per_user_max",
        "idle_mean_seconds",
        "created_since_previous",
    ):
        assert got[figure] is None
        assert got["unavailable"][figure], figure
    assert "user column" in got["unavailable"]["users_active"]
    assert "last_activity_at" in got["unavailable"]["idle_p95_seconds"]
    assert got["users_removed"] == 1 and stats.top_users(engine, 5) == []


# --- the lock, the reads before any run, the CLI --------------------------------------------


def test_concurrent_run_is_skipped(pg_url: str, make_settings: SettingsFactory) -> None:
    settings = make_settings(pg_url)
    engine = db.get_engine(settings)
    insert_reference(engine, reference_rows(NOW)[:3])
    other = sa.create_engine(db.normalize_url(pg_url), poolclass=sa.pool.NullPool)
    with other.begin() as conn:
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(db.lock_key("stats", "sessions"))))
        assert stats.refresh_stats(engine, settings) is None
    other.dispose()
    run = last_runs(engine, "stats", limit=1)[0]
    assert run["outcome"] == "skipped" and "lock" in run["error"]
    assert stats.latest_snapshot(engine) is None
    assert stats.refresh_stats(engine, settings) is not None


def test_reads_before_any_run(sqlite_url: str, make_settings: SettingsFactory) -> None:
    engine = db.get_engine(make_settings(sqlite_url))
    assert stats.latest_snapshot(engine) is None
    assert stats.snapshot_history(engine) == []
    assert stats.user_stats(engine, "alice") is None
    assert stats.top_users(engine, 3) == []


def test_cli(pg_url: str) -> None:
    settings = Settings(database={"url": pg_url}, policy=REF_POLICY)
    insert_reference(db.get_engine(settings), reference_rows(NOW))
    env = {"SESSIONKEEPER_DATABASE__URL": pg_url, "SESSIONKEEPER_POLICY__IDLE_TIMEOUT": "7d"}
    assert cli_json("stats", env=env) == {"snapshot": None}
    out = cli_json("stats", "--refresh", env=env)
    assert out["refreshed"] is True and out["snapshot"]["users_active"] == 10
    assert cli_json("stats", "--user", "u7", env=env)["user"]["active_sessions"] == 7
    assert [u["user_id"] for u in cli_json("stats", "--top", "2", env=env)["top_users"]] == ["u7", "u6"]
    assert len(cli_json("stats", "--history", env=env)["history"]) == 1
    missing = cli("stats", "--user", "nobody", env=env)
    assert missing.returncode == 1 and "no stats for user 'nobody'" in missing.stderr
    assert "Traceback" not in missing.stderr
    both = cli("stats", "--top", "3", "--history", env=env)
    assert both.returncode == 2 and "choose one" in both.stderr
    human = cli("stats", env=env)
    assert human.returncode == 0 and "sessions per user p95" in human.stdout and "MiB" in human.stdout


def test_cli_before_migrate_says_what_to_do(empty_pg_url: str) -> None:
    proc = cli("stats", env={"SESSIONKEEPER_DATABASE__URL": empty_pg_url})
    assert proc.returncode == 2 and "sessionkeeper migrate" in proc.stderr and "Traceback" not in proc.stderr


def test_demo_shows_statistics(tmp_path: Any) -> None:
    report = cli_json("demo", "--users", "60", "--database", str(tmp_path / "demo.db"))
    step = report["steps"]["Statistics"]
    assert step["snapshot"]["users_active"] > 0 and len(step["lines"]) >= 3


def test_user_id_inside_json_connect_pg_simple(pg_url: str, make_settings: SettingsFactory) -> None:
    from tests.integration.framework_ddl import DDL

    settings = make_settings(pg_url, sessions={"profile": "connect-pg-simple"})
    engine = db.get_engine(settings)
    naive = NOW.replace(tzinfo=None)
    with engine.begin() as conn:
        for statement in DDL["connect-pg-simple"]:
            conn.execute(sa.text(statement))
        conn.execute(
            sa.text("INSERT INTO session (sid, sess, expire) VALUES (:sid, CAST(:sess AS json), :expire)"),
            [
                {"sid": "a", "sess": '{"passport": {"user": "7"}}', "expire": naive + H},
                {"sid": "b", "sess": '{"passport": {"user": 7}}', "expire": naive + D},
                {"sid": "c", "sess": '{"cookie": {}}', "expire": naive + D},  # not signed in
                {"sid": "d", "sess": '{"passport": {"user": "8"}}', "expire": naive - H},
            ],
        )
    got = stats.refresh_stats(engine, settings, now=NOW)
    assert got is not None
    assert (got["total_rows"], got["active"], got["expired_pending"], got["users_active"]) == (4, 3, 1, 1)
    assert got["purge_lag_seconds"] == pytest.approx(3600, abs=0.01)
    assert stats.user_stats(engine, "7")["active_sessions"] == 2
    assert stats.user_stats(engine, "7")["created_24h"] is None
    assert "created_at" in got["unavailable"]["user.created_24h"]
