"""Benchmark of the stats job against the bare per-user aggregate, on PostgreSQL.

    .venv/bin/python bench/stats.py [--sizes 1000000,5000000] [--users 200000]
                                    [--work-mem 64MB]
                                    [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]

For each size it creates its own database (``stats_bench_<pid>_<size>``), fills the reference
table with skewed users (``floor(users * random()^2.5)``: a few users hold hundreds of sessions,
most one or two), and times, in the same run and interleaved so machine load hits all alike:

* ``bare``: ``SELECT user_id, count(*) FROM sessions WHERE expires_at > now() GROUP BY user_id``,
  rows fetched by the client (as psql would), and server-side only (EXPLAIN ANALYZE, TIMING OFF);
* ``full``: a stats run with an empty user_stats (every user inserted);
* ``unchanged``: a stats run right after (nothing changed, nothing rewritten);
* the same two with ``stats.distinct_counts = false``.

The stats runs happen in a child process that does nothing else, whose peak RSS is reported.
Every database is dropped at the end, even on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worker import db, migrate, reference  # noqa: E402

GENERATE = """
INSERT INTO sessions (id, token_hash, user_id, created_at, last_activity_at, expires_at, ip, user_agent,
                      revoked_at)
SELECT 's' || g, decode(md5(g::text), 'hex'), u, c, least(c + random() * interval '2 days', now()),
  CASE WHEN r < 0.03 THEN NULL
       WHEN r < 0.30 THEN now() - random() * interval '10 days'
       ELSE now() + random() * interval '30 days' END,
  CASE WHEN random() < 0.8 THEN '10.0.0.0'::inet + (abs(hashtext(u)) % 16000000)
       ELSE '198.51.0.0'::inet + (random() * 60000)::int END,
  'Mozilla/5.0 agent '
    || (abs(hashtext(u)) % 5 + CASE WHEN random() < 0.2 THEN (random() * 4)::int ELSE 0 END),
  CASE WHEN random() < 0.02 THEN now() - interval '1 hour' END
FROM (SELECT g, random() AS r, now() - random() * interval '40 days' AS c,
             'u' || floor(:users * power(random(), 2.5))::int AS u
      FROM generate_series(:lo, :hi) g) s
"""
BARE = "SELECT user_id, count(*) FROM sessions WHERE expires_at > now() GROUP BY user_id"


def admin_engine(url: str) -> sa.Engine:
    return sa.create_engine(db.normalize_url(url), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def build(url: str, size: int, users: int) -> float:
    started = time.monotonic()
    engine = db.make_engine(url)
    migrate.upgrade(engine)
    table = reference.reference_table()
    with engine.begin() as conn:
        table.create(conn)
        for index in table.indexes:  # load first, index after: several times faster
            index.drop(conn)
    step = 1_000_000
    for lo in range(1, size + 1, step):
        with engine.begin() as conn:
            conn.execute(sa.text(GENERATE), {"users": users, "lo": lo, "hi": min(size, lo + step - 1)})
    with engine.begin() as conn:
        for index in table.indexes:
            index.create(conn)
    engine.dispose()
    with admin_engine(url).connect() as conn:
        conn.execute(sa.text("VACUUM ANALYZE sessions"))
    return time.monotonic() - started


def time_bare(url: str) -> tuple[float, float]:
    """(seconds with every row fetched by the client, as psql's timing, seconds on the server only)."""
    import psycopg

    conninfo = db.normalize_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo) as conn:
        started = time.monotonic()
        rows = conn.execute(BARE).fetchall()
        fetched = time.monotonic() - started
        assert rows
        started = time.monotonic()
        conn.execute("EXPLAIN (ANALYZE, TIMING OFF) " + BARE).fetchall()
        server = time.monotonic() - started
    return fetched, server


def child(url: str, distinct: bool, work_mem: str) -> None:
    """Run inside a fresh process: full run, unchanged run; print timings and peak RSS."""
    from tasks import stats
    from worker.settings import Settings

    settings = Settings(
        database={"url": url},
        policy={"idle_timeout": "30d"},
        stats={"distinct_counts": distinct, "work_mem": work_mem},
        logging={"level": "WARNING"},
    )
    engine = db.get_engine(settings)
    with engine.begin() as conn:
        conn.execute(sa.delete(sa.table("user_stats", schema="sessionkeeper")))
    out: dict[str, Any] = {}
    for name in ("full", "unchanged"):
        started = time.monotonic()
        snap = stats.refresh_stats(engine, settings, trigger="test")
        out[name] = time.monotonic() - started
        assert snap is not None
        out[f"{name}_written"] = snap["users_written"]
        out[f"{name}_steps"] = snap["step_seconds"]
        out["users_active"] = snap["users_active"]
        out["active"] = snap["active"]
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def run_child(url: str, distinct: bool, work_mem: str) -> dict[str, Any]:
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            url,
            "--distinct",
            "1" if distinct else "0",
            "--work-mem",
            work_mem,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def bench_size(admin_url: str, size: int, users: int, work_mem: str) -> dict[str, Any]:
    name = f"stats_bench_{os.getpid()}_{size}"
    url = db.normalize_url(admin_url).set(database=name).render_as_string(hide_password=False)
    admin = admin_engine(admin_url)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        built = build(url, size, users)
        time_bare(url)  # warm the cache
        bare, bare_server, runs, flat = [], [], [], []
        for _ in range(2):  # interleaved, so load from other processes hits every measure alike
            for sample in (time_bare(url),):
                bare.append(sample[0])
                bare_server.append(sample[1])
            runs.append(run_child(url, True, work_mem))
            sample = time_bare(url)
            bare.append(sample[0])
            bare_server.append(sample[1])
            flat.append(run_child(url, False, work_mem))
        b, bs = statistics.median(bare), statistics.median(bare_server)

        def med(results: list[dict[str, Any]], key: str) -> float:
            return float(statistics.median(r[key] for r in results))

        return {
            "size": size,
            "users_active": runs[0]["users_active"],
            "active": runs[0]["active"],
            "build_s": round(built, 1),
            "bare_s": round(b, 3),
            "bare_server_s": round(bs, 3),
            "full_s": round(med(runs, "full"), 3),
            "unchanged_s": round(med(runs, "unchanged"), 3),
            "full_nodistinct_s": round(med(flat, "full"), 3),
            "unchanged_nodistinct_s": round(med(flat, "unchanged"), 3),
            "unchanged_written": runs[0]["unchanged_written"],
            "steps": {k: runs[0][k] for k in ("full_steps", "unchanged_steps")},
            "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs + flat), 1),
        }
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,5000000")
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--work-mem", default="64MB", help="stats.work_mem for the stats runs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--distinct", default="1", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.distinct == "1", args.work_mem)
        return
    for size in (int(s) for s in args.sizes.split(",")):
        r = bench_size(args.admin_url, size, args.users, args.work_mem)
        print(json.dumps(r))
        b, bs = r["bare_s"], r["bare_server_s"]
        print(
            f"{size:>9,} rows, {r['users_active']:,} active users: bare {b:.2f}s (server {bs:.2f}s) | "
            f"full {r['full_s']:.2f}s = {r['full_s'] / b:.2f}x ({r['full_s'] / bs:.2f}x server) | "
            f"unchanged {r['unchanged_s']:.2f}s = {r['unchanged_s'] / b:.2f}x "
            f"({r['unchanged_s'] / bs:.2f}x), wrote {r['unchanged_written']} | "
            f"no distinct: full {r['full_nodistinct_s'] / b:.2f}x, "
            f"unchanged {r['unchanged_nodistinct_s'] / b:.2f}x | peak RSS {r['peak_rss_mb']:.0f} MB",
            flush=True,
        )


if __name__ == "__main__":
    main()
