"""Cost of one incremental scan on a large table: 10M sessions, 10k new since the last scan.

Run:  .venv/bin/python bench/anomaly/scan_cost.py [--rows 10000000] [--new 10000] [--rounds 5]
      (PostgreSQL at SESSIONKEEPER_TEST_PG or postgresql://postgres@127.0.0.1:5432/postgres;
      creates and drops its own database ``anomaly_bench_cost``)

Prints the one-off backfill time, then per round the time of a full scan (rollups, every rule,
the alert lifecycle, the commit) after inserting ``--new`` sessions, against the issue's target
of under one second. The session table is lean (bigint ids) so 10M rows load in a few minutes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from tasks.anomaly import scan
from worker import db, migrate
from worker.settings import Settings

ADMIN = os.environ.get("SESSIONKEEPER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
NAME = "anomaly_bench_cost"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _admin() -> sa.Engine:
    return sa.create_engine(db.normalize_url(ADMIN), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--new", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    admin = _admin()
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{NAME}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{NAME}"'))
    url = db.normalize_url(ADMIN).set(database=NAME).render_as_string(hide_password=False)
    settings = Settings(
        database={"url": url},
        sessions={
            "table": "sessions",
            "id": "id",
            "user_id": "user_id",
            "created_at": "created_at",
            "expires_at": "expires_at",
            "ip": "ip",
        },
    )
    engine = db.get_engine(settings)
    try:
        migrate.upgrade(engine)
        t0 = time.monotonic()
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "CREATE TABLE sessions (id bigserial primary key, user_id bigint not null, "
                    "created_at timestamptz not null, expires_at timestamptz, ip inet)"
                )
            )
            # 90 days of history over a million users and a /8 of addresses.
            conn.execute(
                sa.text(
                    "INSERT INTO sessions (user_id, created_at, expires_at, ip) "
                    "SELECT (random() * 1000000)::bigint, c, c + interval '30 days', "
                    "'10.0.0.0'::inet + (random() * 16777215)::int "
                    "FROM (SELECT :now - random() * interval '90 days' AS c "
                    "      FROM generate_series(1, :rows)) s"
                ),
                {"now": NOW - timedelta(minutes=1), "rows": args.rows},
            )
        with engine.begin() as conn:
            for col in ("created_at", "user_id", "expires_at"):
                conn.execute(sa.text(f"CREATE INDEX ON sessions ({col})"))
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE sessions"))
        print(f"loaded {args.rows:,} sessions with indexes in {time.monotonic() - t0:.0f} s")
        t0 = time.monotonic()
        first = scan.run_scan(engine, settings, now=NOW, trigger="bench")
        print(
            f"first scan (backfill of {first.figures['sessions_read']:,} sessions, 8 days): "
            f"{time.monotonic() - t0:.1f} s"
        )
        timings = []
        for k in range(1, args.rounds + 1):
            now = NOW + k * timedelta(minutes=1)
            with engine.begin() as conn:
                conn.execute(
                    sa.text(
                        "INSERT INTO sessions (user_id, created_at, expires_at, ip) "
                        "SELECT (random() * 1000000)::bigint, c, c + interval '30 days', "
                        "'10.0.0.0'::inet + (random() * 16777215)::int "
                        "FROM (SELECT CAST(:start AS timestamptz) + random() * interval '59 seconds' AS c "
                        "      FROM generate_series(1, :n)) s"
                    ),
                    {"start": now - timedelta(minutes=1), "n": args.new},
                )
            t0 = time.monotonic()
            result = scan.run_scan(engine, settings, now=now, trigger="bench")
            seconds = time.monotonic() - t0
            timings.append(seconds)
            print(
                f"round {k}: {result.figures['sessions_read']:,} sessions read, "
                f"{result.figures['rollup_rows']:,} rollup rows, {len(result.findings)} findings: "
                f"{seconds:.3f} s"
            )
        print(
            f"scan with {args.new:,} new sessions on {args.rows:,} rows: median "
            f"{statistics.median(timings):.3f} s, max {max(timings):.3f} s (target < 1 s)"
        )
    finally:
        engine.dispose()
        if not args.keep:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{NAME}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
