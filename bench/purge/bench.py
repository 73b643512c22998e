"""Purge benchmark: one DELETE vs sessionkeeper --fast vs paced vs partitions, under a live pgbench load.

    .venv/bin/python bench/purge/bench.py --rows 1000000 --rows 5000000 --rate 300

For each size it builds a session table (about 200k skewed users, half expired over 30 days,
~260-byte rows, indexes on id, token hash, user and expiry) once in a template database, then
for every scenario clones it (CREATE DATABASE ... TEMPLATE), starts pgbench at a fixed rate with
a custom script (look up a live session by token hash, touch it, 1 in 10 inserts a new one),
measures 10 s without a purge and then the purge itself: rows/s, WAL bytes per row, the live
p50/p99/max before and during, the longest lock wait seen by a live request, checkpoints
requested meanwhile, and the table size after. Everything it creates is dropped at the end.
Results are printed and written to bench/purge/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tasks.purge import purge_sessions
from worker import db
from worker.settings import Settings

ADMIN = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
PREFIX = "purge_bench"

BUILD = """
CREATE TABLE sessions (
    id text PRIMARY KEY, token_hash bytea NOT NULL UNIQUE, user_id text NOT NULL,
    created_at timestamptz NOT NULL, last_activity_at timestamptz, expires_at timestamptz,
    ip inet, user_agent text, revoked_at timestamptz
){partition};
"""
FILL = """
INSERT INTO sessions (id, token_hash, user_id, created_at, last_activity_at, expires_at, ip, user_agent)
SELECT 's' || i, sha256(int4send(i)),
       'u' || (floor(200000 * power(random(), 3)))::int,              -- skewed: few users, many sessions
       t, t + interval '1 hour' * random(),
       t + interval '30 days',                                        -- half the rows are past expiry
       ('10.' || (i % 250) || '.' || (i / 250 % 250) || '.7')::inet,
       'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0.' || (i % 97)
FROM (SELECT i, now() - interval '60 days' * (1 - i::float8 / {n}) + interval '1 hour' * (random() - 0.5) AS t
      FROM generate_series(1, {n}) i) g
"""
INDEXES = [
    "CREATE INDEX ix_sessions_user_id ON sessions (user_id)",
    "CREATE INDEX ix_sessions_expires_at ON sessions (expires_at)",
]
PG_SCRIPT = """
\\set i random({lo}, {hi})
\\set r random(1, 1000000000)
\\set t random(1, 2000000000)
\\set new random(1, 10)
SELECT user_id, expires_at FROM sessions WHERE token_hash = sha256(int4send(:i));
UPDATE sessions SET last_activity_at = now() WHERE token_hash = sha256(int4send(:i)){guard};
\\if :new = 1
INSERT INTO sessions (id, token_hash, user_id, created_at, last_activity_at, expires_at)
  VALUES ('n' || :client_id || '_' || :r, sha256(int4send(-:t)), 'u' || :r % 200000, now(), now(),
          now() + interval '{ttl}');
\\endif
"""


PG_BIN = Path("/usr/lib/postgresql/15/bin")


class PrivateCluster:
    """A throwaway PostgreSQL cluster with stock settings, so WAL and checkpoints are ours alone."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="purge_bench_pg_"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"

    def _run(self, *args: str) -> None:
        cmd = ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

    def start(self) -> str:
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        self._run(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            opts,
            "-l",
            str(self.dir / "log"),
            "-w",
            "start",
        )
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


def admin(sql: str) -> None:
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(sql)


def admin_on(dsn: str, sql: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql)


def url(name: str) -> str:
    return ADMIN.rsplit("/", 1)[0] + "/" + name


def scalar(dsn: str, sql: str) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
        return row[0] if row else None


def day_start(offset: int) -> str:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (today + timedelta(days=offset)).isoformat()


def build(n: int, *, partitioned: bool) -> str:
    """A template database holding the table; returns its name."""
    name = f"{PREFIX}_tpl_{n}{'_p' if partitioned else ''}"
    admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin(f'CREATE DATABASE "{name}"')
    started = time.monotonic()
    with psycopg.connect(url(name), autocommit=True) as conn:
        if partitioned:
            # daily range partitions on the expiry; the primary key must include the partition key
            conn.execute(
                BUILD.format(partition=" PARTITION BY RANGE (expires_at)")
                .replace("id text PRIMARY KEY", "id text NOT NULL")
                .replace("NOT NULL UNIQUE", "NOT NULL")
            )
            for day in range(-31, 32):
                conn.execute(
                    f"CREATE TABLE sessions_d{day + 31:02d} PARTITION OF sessions FOR VALUES "
                    f"FROM ('{day_start(day)}') TO ('{day_start(day + 1)}')"
                )
            conn.execute("ALTER TABLE sessions ADD PRIMARY KEY (id, expires_at)")
            conn.execute("CREATE INDEX ix_sessions_token_hash ON sessions (token_hash)")
        else:
            conn.execute(BUILD.format(partition=""))
        conn.execute(FILL.format(n=n))
        for ddl in INDEXES:
            conn.execute(ddl)
        conn.execute("VACUUM ANALYZE sessions")
        conn.execute("CHECKPOINT")
    kind = ", partitioned" if partitioned else ""
    print(f"  built {name} ({n:,} rows{kind}) in {time.monotonic() - started:.0f} s")
    return name


class Load:
    """pgbench at a fixed rate, per-transaction log; plus a sampler of live lock waits."""

    def __init__(self, dsn: str, n: int, rate: int, seconds: int, ttl: str, app: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="purge_bench_"))
        script = self.dir / "app.sql"
        # "naive": any token (stale cookies too) and an UPDATE that does not skip expired rows, so
        # the app touches the very rows a purge deletes; "guarded": live tokens, UPDATE skips expired
        lo, guard = (1, "") if app == "naive" else (int(n * 0.55), " AND expires_at > now()")
        script.write_text(PG_SCRIPT.format(lo=lo, hi=n, ttl=ttl, guard=guard))
        self.proc = subprocess.Popen(
            [
                "pgbench",
                "-n",
                "-c",
                "4",
                "-j",
                "2",
                "-R",
                str(rate),
                "-T",
                str(seconds),
                "-f",
                str(script),
                "-l",
                "--log-prefix",
                str(self.dir / "tx"),
                dsn,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.dsn = dsn
        self.max_lock_wait = 0.0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self._stop.is_set() and self.proc.poll() is None:
                row = conn.execute(
                    "SELECT coalesce(max(extract(epoch FROM clock_timestamp() - query_start)), 0) "
                    "FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name = 'pgbench' "
                    "AND wait_event_type = 'Lock'"
                ).fetchone()
                self.max_lock_wait = max(self.max_lock_wait, float(row[0]) if row else 0.0)
                time.sleep(0.02)

    def finish(self) -> list[tuple[float, float]]:
        """(epoch seconds when it ended, latency ms) of every transaction."""
        self.proc.wait()
        self._stop.set()
        out: list[tuple[float, float]] = []
        for log in self.dir.glob("tx*"):
            for line in log.read_text().splitlines():
                f = line.split()
                if len(f) >= 6 and f[2] != "skipped":
                    out.append((int(f[4]) + int(f[5]) / 1e6, int(f[2]) / 1000))
        shutil.rmtree(self.dir, ignore_errors=True)
        return out


def stats(lat: list[float]) -> dict[str, float]:
    if not lat:
        return {"n": 0}
    lat = sorted(lat)
    return {
        "n": len(lat),
        "p50_ms": round(statistics.median(lat), 2),
        "p99_ms": round(lat[int(len(lat) * 0.99) - 1], 2),
        "max_ms": round(lat[-1], 2),
    }


def checkpoints(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT checkpoints_req, checkpoints_timed FROM pg_stat_bgwriter").fetchone()
        assert row
        return int(row[0]), int(row[1])


def table_bytes(dsn: str) -> int:
    return int(
        scalar(
            dsn,
            "SELECT coalesce((SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('sessions')), "
            "pg_total_relation_size('sessions'))",
        )
    )


def lsn(dsn: str) -> int:
    return int(scalar(dsn, "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))


def scenario(template: str, n: int, kind: str, args: argparse.Namespace) -> dict[str, Any]:
    name = f"{PREFIX}_run"
    admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    dsn = url(name)
    # every scenario starts right after a checkpoint: each page's first change pays its full image
    admin_on(dsn, "CHECKPOINT")
    expired = int(scalar(dsn, "SELECT count(*) FROM sessions WHERE expires_at < now()"))
    trickle = kind.startswith("trickle")
    # trickle: sessions inserted during the load expire after a second, so a backlog builds
    ttl = "1 second" if trickle else "30 days"
    warmup = args.baseline * (2 if trickle else 1)
    budget = warmup + (args.purge_seconds + 3 if kind.startswith("paced") else 30)
    load = Load(dsn, n, args.rate, budget, ttl, args.app)
    time.sleep(warmup)
    ck0, lsn0 = checkpoints(dsn), lsn(dsn)
    t0 = time.time()
    row: dict[str, Any] = {"rows": n, "scenario": kind, "expired_before": expired}
    if kind == "single_delete":
        with psycopg.connect(dsn) as conn:
            cur = conn.execute("DELETE FROM sessions WHERE expires_at < now()")
            deleted = cur.rowcount
            conn.commit()
        row.update(deleted=deleted, max_batch_ms=round((time.time() - t0) * 1000, 1))
    else:
        settings = Settings(
            database={"url": dsn},
            sessions={"profile": "sessionkeeper", "revoked": ""},
            purge={
                "strategy": kind.split("_")[1] if trickle else "auto",
                "max_run_seconds": f"{args.purge_seconds}s",
                "wal_budget_share": 0.5 if kind == "paced_half" else 0.25,
            }
            | ({"batch_size": args.batch_size} if args.batch_size else {}),
        )
        engine = db.get_engine(settings)
        from worker import migrate

        migrate.upgrade(engine)
        result = purge_sessions(engine=engine, settings=settings, fast=kind in {"fast", "partitions"})
        row.update(
            deleted=result.deleted_total,
            purge_rows_per_s=round(result.rows_per_second),
            batches=result.batches,
            max_batch_ms=round(result.max_batch_ms, 1),
            strategy=result.strategy,
            stopped=result.stopped,
            partitions_dropped=len(result.partitions_dropped),
            max_partition_ms=round(result.max_partition_ms, 1),
            our_wal_bytes=result.wal_bytes,
            budget_bytes_per_s=result.wal_budget_bytes_per_second,
            lag_after_s=round(result.lag_seconds),
        )
        db.dispose_engines()
        engine.dispose()
    t1 = time.time()
    wal = lsn(dsn) - lsn0
    ck1 = checkpoints(dsn)
    tx = load.finish()
    # a transaction belongs to "during" when its run overlaps the purge (pgbench logs its end)
    before = [ms for end, ms in tx if end < t0]
    during = [ms for end, ms in tx if end >= t0 and end - ms / 1000 <= t1]
    seconds = t1 - t0
    row.update(
        seconds=round(seconds, 2),
        rows_per_s=round(row["deleted"] / seconds) if seconds else 0,
        server_wal_bytes_per_row=round(wal / row["deleted"], 1) if row["deleted"] else None,
        wal_bytes_per_row=round((row.get("our_wal_bytes") or wal) / row["deleted"], 1)
        if row["deleted"]
        else None,
        checkpoints_requested=ck1[0] - ck0[0],
        live_before=stats(before),
        live_during=stats(during),
        max_live_lock_wait_ms=round(load.max_lock_wait * 1000, 1),
        size_after_mb=round(table_bytes(dsn) / 2**20),
        pgbench_tps=round(len(tx) / max(1, budget), 1),
    )
    admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print("   ", json.dumps(row))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, action="append", help="table sizes (repeatable)")
    parser.add_argument("--rate", type=int, default=300, help="live transactions per second")
    parser.add_argument("--baseline", type=int, default=10, help="seconds of load before each purge")
    parser.add_argument("--purge-seconds", type=int, default=60, help="max_run_seconds of paced runs")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the purge settings")
    parser.add_argument("--app", choices=["naive", "guarded"], default="naive", help="live workload")
    parser.add_argument(
        "--private-port",
        type=int,
        default=5544,
        help="run on a private stock cluster on this port (0: use BENCH_PG)",
    )
    parser.add_argument(
        "--scenarios",
        default="single_delete,fast,paced,paced_half,partitions,trickle_index,trickle_walk",
        help="comma-separated subset",
    )
    args = parser.parse_args()
    if shutil.which("pgbench") is None:
        sys.exit("pgbench is needed (apt-get install postgresql-client)")
    global ADMIN
    cluster = PrivateCluster(args.private_port) if args.private_port else None
    if cluster is not None:
        ADMIN = cluster.start()
    results = []
    try:
        for n in args.rows or [1_000_000]:
            wanted = args.scenarios.split(",")
            template = build(n, partitioned=False)
            for kind in wanted:
                if kind == "partitions":
                    continue
                if kind.startswith("trickle"):
                    # the steady state: the backlog gone, then a purge every few minutes
                    base = f"{PREFIX}_tpl_{n}_clean"
                    admin(f'DROP DATABASE IF EXISTS "{base}" WITH (FORCE)')
                    admin(f'CREATE DATABASE "{base}" TEMPLATE "{template}"')
                    with psycopg.connect(url(base), autocommit=True) as conn:
                        conn.execute("DELETE FROM sessions WHERE expires_at < now()")
                        conn.execute("VACUUM ANALYZE sessions")
                    results.append(scenario(base, n, kind, args))
                    admin(f'DROP DATABASE IF EXISTS "{base}" WITH (FORCE)')
                    continue
                results.append(scenario(template, n, kind, args))
            admin(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)')
            if "partitions" in wanted:
                template = build(n, partitioned=True)
                results.append(scenario(template, n, "partitions", args))
                admin(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)')
    finally:
        admin(f'DROP DATABASE IF EXISTS "{PREFIX}_run" WITH (FORCE)')
        if cluster is not None:
            cluster.stop()
    out = Path(__file__).with_name("results.json")
    out.write_text(json.dumps(results, indent=2))
    print(summarize(results))
    print(f"results in {out}")


def summarize(results: list[dict[str, Any]]) -> str:
    """A markdown table of the figures the issue's targets are about, one row per scenario."""
    head = (
        "| rows | scenario | deleted | rows/s | vs DELETE | WAL B/row | vs DELETE | max batch ms "
        "| live p50/p99/max before | during | lock wait ms | ckpt req | size after MB |"
    )
    lines = [head, "|" + "---|" * 13]
    base: dict[int, dict[str, Any]] = {r["rows"]: r for r in results if r["scenario"] == "single_delete"}
    for r in results:
        ref = base.get(r["rows"])
        rate = r.get("purge_rows_per_s") or r["rows_per_s"]
        wal = r.get("wal_bytes_per_row")
        b, d = r["live_before"], r["live_during"]

        def live(x: dict[str, Any]) -> str:
            return f"{x['p50_ms']}/{x['p99_ms']}/{x['max_ms']}" if x.get("n") else "-"

        lines.append(
            f"| {r['rows']:,} | {r['scenario']} | {r['deleted']:,} | {rate:,} "
            f"| {rate / ref['rows_per_s']:.0%} | {wal} | "
            + (
                f"{wal / ref['wal_bytes_per_row']:.2f}x"
                if ref and wal and ref.get("wal_bytes_per_row")
                else "-"
            )
            + f" | {r['max_batch_ms']} | {live(b)} | {live(d)} | {r['max_live_lock_wait_ms']} "
            f"| {r['checkpoints_requested']} | {r['size_after_mb']} |"
            if ref
            else f"| {r['rows']:,} | {r['scenario']} | {r['deleted']:,} | {rate:,} | - | {wal} | - "
            f"| {r['max_batch_ms']} | {live(b)} | {live(d)} | {r['max_live_lock_wait_ms']} "
            f"| {r['checkpoints_requested']} | {r['size_after_mb']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--summary"]:
        print(summarize(json.loads(Path(sys.argv[2]).read_text())))
    else:
        main()
