"""The anomaly scan against real databases: each rule firing and not, dedup, cooldown, resolve,
the mass-anomaly collapse, the incremental watermark, and a table without created_at."""

from __future__ import annotations

import hashlib
import itertools
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tasks.anomaly import scan
from tests.conftest import SettingsFactory
from tests.helpers import cli, cli_json
from worker import db, models, reference
from worker.settings import Settings

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 20, 12, 0, 30, tzinfo=UTC)
MIN = timedelta(minutes=1)
_ids = itertools.count()


class World:
    """A database with the reference session table and helpers to add sessions and scan."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.table = reference.reference_table()
        with engine.begin() as conn:
            reference.create_reference_table(conn)

    def add(self, user: str, at: datetime, *, ip: str = "198.51.100.7", n: int = 1) -> None:
        rows = []
        for i in range(n):
            k = next(_ids)
            rows.append(
                {
                    "id": str(uuid.UUID(int=k + 1)),
                    "token_hash": hashlib.sha256(str(k).encode()).digest(),
                    "user_id": user,
                    "created_at": at + timedelta(seconds=i % 50),
                    "last_activity_at": at,
                    "expires_at": at + timedelta(days=30),
                    "ip": ip,
                    "user_agent": "test",
                }
            )
        with self.engine.begin() as conn:
            conn.execute(sa.insert(self.table), rows)

    def steady(self, start: datetime, end: datetime, *, per_minute: int, users: int = 50) -> None:
        """Background traffic: ``per_minute`` sessions a minute spread over many users and IPs."""
        rows = []
        minute = start
        while minute < end:
            for j in range(per_minute):
                k = next(_ids)
                user = f"bg{k % users}"
                rows.append(
                    {
                        "id": str(uuid.UUID(int=k + 1)),
                        "token_hash": hashlib.sha256(str(k).encode()).digest(),
                        "user_id": user,
                        "created_at": minute + timedelta(seconds=j * 50 // max(per_minute, 1)),
                        "expires_at": minute + timedelta(days=30),
                        "ip": f"10.1.{k % users // 250}.{k % users % 250}",
                    }
                )
            minute += MIN
        with self.engine.begin() as conn:
            for chunk in range(0, len(rows), 5000):
                conn.execute(sa.insert(self.table), rows[chunk : chunk + 5000])

    def scan(self, now: datetime) -> scan.ScanResult:
        return scan.run_scan(self.engine, self.settings, now=now, trigger="test")

    def alerts(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [
                dict(r._mapping) for r in conn.execute(sa.select(models.alerts).order_by(models.alerts.c.id))
            ]

    def deliveries(self) -> list[dict[str, Any]]:
        t = models.alert_deliveries
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(t).order_by(t.c.id))]

    def rollup_total(self, scope: str = "global") -> int:
        r = models.creation_rollups
        with self.engine.connect() as conn:
            query = sa.select(sa.func.coalesce(sa.func.sum(r.c.count), 0)).where(r.c.scope == scope)
            return int(conn.execute(query).scalar_one())


WorldFactory = Callable[..., World]


@pytest.fixture
def make_world(any_url: str, make_settings: SettingsFactory) -> Iterator[WorldFactory]:
    """``make_world(anomaly={...}, alerts={...})`` on PostgreSQL and on SQLite."""
    made: list[World] = []

    def factory(**sections: Any) -> World:
        settings = make_settings(any_url, sessions={"profile": "sessionkeeper"}, **sections)
        made.append(World(db.get_engine(settings), settings))
        return made[-1]

    yield factory
    for w in made:
        w.engine.dispose()  # close, not just forget: pooled connections left open warn at exit
    db.dispose_engines()


@pytest.fixture
def world(make_world: WorldFactory) -> World:
    return make_world()


def rules_of(result: scan.ScanResult) -> set[str]:
    return {f.rule for f in result.findings}


def test_first_scan_backfills_and_catches_a_user_burst(world: World) -> None:
    world.steady(T0 - timedelta(hours=3), T0, per_minute=3)
    world.add("victim", T0 - timedelta(days=3))
    world.add("victim", T0 - 8 * MIN, n=25)
    world.add("old", T0 - timedelta(days=9))  # beyond the 8-day backfill horizon
    result = world.scan(T0)
    assert result.figures["backfill"] is True
    assert result.figures["sessions_read"] == 3 * 180 + 26
    burst = [f for f in result.findings if f.rule == "user_burst"]
    assert [f.entity for f in burst] == ["victim"]
    assert burst[0].observed == 25
    assert burst[0].score < 1e-6
    # Explained: what was seen, against what, how, and why it fired.
    explained = burst[0].to_dict()
    for key in ("window_seconds", "observed", "expected", "baseline_method", "threshold", "score"):
        assert key in explained
    [alert] = [a for a in world.alerts() if a["rule"] == "user_burst"]
    assert alert["state"] == "open"
    assert alert["entity"] == "victim"
    assert alert["details"]["observed"] == 25
    new = [d for d in world.deliveries() if d["event"] == "new" and d["payload"]["rule"] == "user_burst"]
    assert len(new) == 1
    assert new[0]["payload"]["entity_kind"] == "user"


def test_quiet_and_heavy_users_do_not_fire(world: World) -> None:
    world.steady(T0 - timedelta(hours=3), T0, per_minute=3)
    world.add("normal", T0 - 5 * MIN, n=9)  # under the floor of 10
    result = world.scan(T0)
    assert "user_burst" not in rules_of(result)


def test_watermark_lateness_and_no_double_count(world: World) -> None:
    world.steady(T0 - timedelta(hours=1), T0, per_minute=2)
    world.scan(T0)
    assert world.rollup_total() == 120
    # A session that committed late, stamped before the last watermark but inside lateness,
    # plus a normal new one.
    world.add("late", T0 - timedelta(seconds=50))
    world.add("new", T0 + timedelta(seconds=20))
    again = world.scan(T0 + MIN)
    assert again.figures.get("backfill") is None
    assert world.rollup_total() == 122
    # Scanning again re-reads the lateness margin but never double counts.
    world.scan(T0 + 2 * MIN)
    assert world.rollup_total() == 122
    assert world.rollup_total("user") == 122


def test_rollups_survive_a_purge(world: World) -> None:
    world.steady(T0 - timedelta(hours=1), T0, per_minute=2)
    world.scan(T0)
    with world.engine.begin() as conn:
        conn.execute(sa.delete(world.table))
    world.scan(T0 + MIN)
    assert world.rollup_total() == 120


def test_ip_spread_fires_and_allowlist_silences(make_world: WorldFactory) -> None:
    w = make_world(anomaly={"ip_allowlist": ["192.0.2.0/24"]})
    w.steady(T0 - timedelta(hours=2), T0, per_minute=2)
    for i in range(12):
        w.add(f"stuffed{i}", T0 - 6 * MIN + i * timedelta(seconds=20), ip="203.0.113.66")
        w.add(f"office{i}", T0 - 6 * MIN + i * timedelta(seconds=20), ip="192.0.2.10")
    result = w.scan(T0)
    spread = [f for f in result.findings if f.rule == "ip_spread"]
    assert [f.entity for f in spread] == ["203.0.113.66"]
    assert spread[0].observed == 12
    assert spread[0].severity == "warning"


def test_global_spike_and_drop(world: World) -> None:
    # Three hours of 10 a minute: the trailing-24h baseline applies (no week of history yet).
    world.steady(T0 - timedelta(hours=3), T0 - 5 * MIN, per_minute=10)
    world.steady(T0 - 5 * MIN, T0, per_minute=40)
    result = world.scan(T0)
    [spike] = [f for f in result.findings if f.rule == "global_spike"]
    assert spike.baseline_method == "trailing_24h_median_mad"
    assert 150 <= spike.observed <= 200  # T0 is mid-minute: the current minute is not counted
    assert spike.expected == 50
    # Then logins stop altogether for the next ten minutes: a drop (an outage).
    result = world.scan(T0 + 10 * MIN)
    [drop] = [f for f in result.findings if f.rule == "global_drop"]
    assert drop.observed == 0
    assert drop.severity == "critical"


def test_steady_traffic_raises_nothing(world: World) -> None:
    world.steady(T0 - timedelta(hours=3), T0 + 10 * MIN, per_minute=10)
    for k in range(0, 10, 3):
        result = world.scan(T0 + k * MIN)
        assert not result.findings, result.summary()


def test_dedup_cooldown_and_resolve(world: World) -> None:
    world.steady(T0 - timedelta(hours=2), T0, per_minute=2)
    world.add("victim", T0 - 3 * MIN, n=15)
    world.scan(T0)
    world.scan(T0 + MIN)
    world.scan(T0 + 2 * MIN)
    [alert] = [a for a in world.alerts() if a["rule"] == "user_burst"]
    assert alert["count"] == 3
    assert alert["suppressed"] == 2

    def events() -> list[str]:
        return [d["event"] for d in world.deliveries() if d["payload"]["rule"] == "user_burst"]

    assert events() == ["new"]
    # The burst leaves the 10-minute window at about T0+8m and the 60-minute one (floor 20)
    # never held it; resolved once clear for two windows after the last firing.
    world.scan(T0 + 15 * MIN)
    assert events() == ["new"]
    world.scan(T0 + 30 * MIN)
    assert events() == ["new", "resolved"]
    [alert] = [a for a in world.alerts() if a["rule"] == "user_burst"]
    assert alert["state"] == "resolved"
    # Fires again within the 60-minute cooldown: reopened silently.
    world.add("victim", T0 + 32 * MIN, n=15)
    world.scan(T0 + 33 * MIN)
    assert events() == ["new", "resolved"]
    # An escalation (value doubled) is news even within the cooldown.
    world.add("victim", T0 + 33 * MIN, n=20)
    world.scan(T0 + 34 * MIN)
    assert events()[-1] in {"new", "escalated"}
    assert len(events()) == 3


def test_mass_anomaly_collapses_many_user_alerts(make_world: WorldFactory) -> None:
    w = make_world(anomaly={"mass_anomaly_threshold": 5})
    w.steady(T0 - timedelta(hours=2), T0, per_minute=2)
    for i in range(8):
        w.add(f"farm{i}", T0 - 4 * MIN, n=12, ip=f"203.0.113.{i + 1}")
    result = w.scan(T0)
    assert result.figures["mass_collapsed"] == 8
    user_alerts = [a for a in w.alerts() if a["rule"] == "user_burst"]
    assert len(user_alerts) == 8
    assert all(a["suppressed"] == 1 for a in user_alerts)
    sent = [d for d in w.deliveries() if d["payload"]["rule"] in {"user_burst", "mass_anomaly"}]
    assert [d["event"] for d in sent] == ["mass"]
    assert sent[0]["payload"]["count"] == 8
    assert len(sent[0]["payload"]["top"]) == 8
    # The next scan stays quiet: the collapsed alerts are open, the mass alert deduplicated.
    w.scan(T0 + MIN)
    assert len([d for d in w.deliveries() if d["payload"]["rule"] in {"user_burst", "mass_anomaly"}]) == 1


def test_redaction_of_user_ids_and_ips(make_world: WorldFactory) -> None:
    w = make_world(alerts={"include_user_ids": False})
    w.steady(T0 - timedelta(hours=2), T0, per_minute=2)
    w.add("secret-user", T0 - 3 * MIN, n=15)
    w.scan(T0)
    [delivery] = [d for d in w.deliveries() if d["payload"]["rule"] == "user_burst"]
    assert "secret-user" not in str(delivery["payload"])
    assert delivery["payload"]["entity"].startswith("user#")


def test_purge_lag_from_expired_rows_and_failed_runs(world: World) -> None:
    world.steady(T0 - timedelta(hours=1), T0, per_minute=1)
    assert "purge_lag" not in rules_of(world.scan(T0))
    with world.engine.begin() as conn:
        conn.execute(
            sa.update(world.table)
            .where(world.table.c.user_id == "bg1")
            .values(expires_at=T0 - timedelta(hours=2))
        )
    result = world.scan(T0 + MIN)
    [lag] = [f for f in result.findings if f.rule == "purge_lag"]
    assert "expired rows" in lag.reason
    assert lag.severity == "critical"  # 2 h behind with a 5-minute purge: beyond 6 intervals
    with world.engine.begin() as conn:
        conn.execute(sa.delete(world.table).where(world.table.c.expires_at < T0))
        conn.execute(
            sa.insert(models.job_runs).values(
                job="purge", trigger="test", started_at=T0, finished_at=T0, outcome="failed", error="boom"
            )
        )
    [lag] = [f for f in world.scan(T0 + 2 * MIN).findings if f.rule == "purge_lag"]
    assert "the last purge failed: boom" in lag.reason


def test_table_without_created_at_says_so_and_rolls_nothing(
    any_url: str, make_settings: SettingsFactory
) -> None:
    engine = db.get_engine(make_settings(any_url))
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE plain (id text primary key, uid text, exp timestamp)"))
        conn.execute(sa.text("INSERT INTO plain VALUES ('a', 'u1', NULL)"))
    settings = make_settings(
        any_url,
        sessions={
            "table": "plain",
            "id": "id",
            "user_id": "uid",
            "expires_at": "exp",
            "time_kind": "timestamp",
        },
    )
    result = scan.run_scan(engine, settings, now=T0)
    assert result.unavailable == scan.NO_CREATED_AT
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(models.creation_rollups)).scalar() == 0
    env = {
        "SESSIONKEEPER_DATABASE__URL": any_url,
        "SESSIONKEEPER_SESSIONS__TABLE": "plain",
        "SESSIONKEEPER_SESSIONS__ID": "id",
        "SESSIONKEEPER_SESSIONS__USER_ID": "uid",
        "SESSIONKEEPER_SESSIONS__EXPIRES_AT": "exp",
        "SESSIONKEEPER_SESSIONS__TIME_KIND": "timestamp",
    }
    proc = cli("scan", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "created_at is not mapped" in proc.stdout
    assert cli_json("scan", env=env)["unavailable"] == scan.NO_CREATED_AT
    engine.dispose()


def test_cli_scan_json_on_postgres(pg_url: str, make_settings: SettingsFactory) -> None:
    settings = make_settings(pg_url, sessions={"profile": "sessionkeeper"})
    w = World(db.get_engine(settings), settings)
    w.add("victim", datetime.now(UTC) - 2 * MIN, n=30)
    env = {"SESSIONKEEPER_DATABASE__URL": pg_url, "SESSIONKEEPER_SESSIONS__PROFILE": "sessionkeeper"}
    out = cli_json("scan", env=env)
    assert out["figures"]["backfill"] is True
    assert "user_burst" in {f["rule"] for f in out["findings"]}
    assert "victim" not in str(out)  # the summary never lists user ids
    w.engine.dispose()


@pytest.mark.parametrize("kind", ["epoch_seconds", "epoch_millis", "timestamp"])
def test_rollup_minutes_for_every_time_kind(any_url: str, make_settings: SettingsFactory, kind: str) -> None:
    engine = db.get_engine(make_settings(any_url))
    column = "bigint" if kind.startswith("epoch") else "timestamp"
    scale = {"epoch_seconds": 1, "epoch_millis": 1000}.get(kind)
    times = [T0 - timedelta(minutes=3, seconds=29), T0 - timedelta(minutes=3, seconds=1), T0 - MIN]
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE ev (id int primary key, uid text, ip text, made {column})"))
        for i, t in enumerate(times):
            value: Any = int(t.timestamp() * scale) if scale else t.replace(tzinfo=None)
            conn.execute(
                sa.text("INSERT INTO ev VALUES (:i, :u, :ip, :t)"),
                {"i": i, "u": f"u{i}", "ip": "192.0.2.1", "t": value},
            )
    settings = make_settings(
        any_url,
        sessions={
            "table": "ev",
            "id": "id",
            "user_id": "uid",
            "ip": "ip",
            "created_at": "made",
            "time_kind": kind,
        },
    )
    result = scan.run_scan(engine, settings, now=T0)
    assert result.figures["sessions_read"] == 3
    r = models.creation_rollups
    with engine.connect() as conn:
        rows = conn.execute(sa.select(r.c.minute, r.c.count, r.c.users).where(r.c.scope == "ip")).all()
    assert sorted((m, c) for m, c, _ in rows) == [
        (datetime(2026, 11, 20, 11, 57, tzinfo=UTC), 2),
        (datetime(2026, 11, 20, 11, 59, tzinfo=UTC), 1),
    ]
    assert sorted(next(u for m, c, u in rows if c == 2)) == ["u0", "u1"]
    engine.dispose()


def test_many_ip_spreads_collapse_into_one_mass_notice(world: World) -> None:
    world.steady(T0 - timedelta(hours=2), T0, per_minute=2)
    for n in range(7):  # seven addresses, each with six accounts: one distributed event
        for i in range(6):
            world.add(f"acct{n}-{i}", T0 - 4 * MIN + i * timedelta(seconds=20), ip=f"203.0.113.{n + 1}")
    result = world.scan(T0)
    assert result.figures["mass_collapsed"] == 7
    sent = [d for d in world.deliveries() if d["payload"]["rule"] in {"ip_spread", "mass_anomaly"}]
    assert [d["event"] for d in sent] == ["mass"]
    assert sent[0]["payload"]["entity"] == "ip_spread"
    assert {t["entity"] for t in sent[0]["payload"]["top"]} == {f"203.0.113.{n + 1}" for n in range(7)}
