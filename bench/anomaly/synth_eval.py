"""Evaluation 1: replay synth.py's traffic minute by minute through the real scan on PostgreSQL.

Run:  .venv/bin/python bench/anomaly/synth_eval.py [--seed N] [--json]
      (PostgreSQL at SESSIONKEEPER_TEST_PG or postgresql://postgres@127.0.0.1:5432/postgres;
      creates and drops its own database ``anomaly_bench_synth``; about 15-25 minutes)

Procedure: load four weeks of history; one backfilling scan at the start of the clean week
(before the first simulated purge, so the baseline sees every session); then for every minute
of the clean week and the attack period insert that minute's sessions, purge expired rows
every 5 minutes (recording a purge job run) until the injected "cleanup stopped", and run
``tasks.anomaly.scan.run_scan`` (what the Celery task runs) with the default settings, except
``backfill_horizon = 29d``. Every notification (new, escalated, mass) is matched against the
labelled injections; the rest are false positives, including any the benign confounders raise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
import synth

from tasks.anomaly import scan
from worker import db, migrate, models
from worker.observability import configure_logging
from worker.settings import LoggingSettings, Settings

ADMIN = os.environ.get("SESSIONKEEPER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
NAME = "anomaly_bench_synth"
PURGE_EVERY = timedelta(minutes=5)
#: a detection counts for an injection up to this long after the injection ends
GRACE = timedelta(minutes=15)
COLUMNS = {"table": "sessions", "id": "id", "user_id": "user_id", "created_at": "created_at", "ip": "ip"}


def _load(engine: sa.Engine, rows: list[synth.Session]) -> None:
    raw = engine.raw_connection()
    try:
        with (
            raw.cursor() as cur,
            cur.copy("COPY sessions (user_id, created_at, expires_at, ip) FROM STDIN") as cp,
        ):  # type: ignore[attr-defined]
            for s in rows:
                cp.write_row((s.user, s.created_at, s.created_at + s.ttl, s.ip))
        raw.commit()
    finally:
        raw.close()


def replay(
    sc: synth.Scenario, url: str, *, limit: int | None = None
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Run the scan over the scenario; returns every notification with its time, and timings."""
    anomaly = {"backfill_horizon": "29d"}
    quiet = {"level": "WARNING"}
    # The backfill scan runs without expires_at mapped: the history holds four weeks of
    # expired rows no purge has touched yet, which is not what cleanup stopping looks like.
    backfill = Settings(database={"url": url}, sessions=COLUMNS, anomaly=anomaly, logging=quiet)
    settings = Settings(
        database={"url": url},
        sessions={**COLUMNS, "expires_at": "expires_at"},
        anomaly=anomaly,
        logging=quiet,
    )
    engine = db.get_engine(settings)
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE sessions (id bigserial primary key, user_id text not null, "
                "created_at timestamptz not null, expires_at timestamptz, ip inet)"
            )
        )
        conn.execute(sa.text("CREATE INDEX ON sessions (created_at)"))
        conn.execute(sa.text("CREATE INDEX ON sessions (expires_at)"))
    by_minute: dict[datetime, list[synth.Session]] = defaultdict(list)
    history = []
    for s in sc.sessions:
        if s.created_at < sc.clean_start:
            history.append(s)
        else:
            by_minute[s.created_at.replace(second=0, microsecond=0)].append(s)
    t0 = time.monotonic()
    _load(engine, history)
    timings = {"load_seconds": time.monotonic() - t0}
    t0 = time.monotonic()
    scan.run_scan(engine, backfill, now=sc.clean_start, trigger="bench")
    timings["backfill_seconds"] = time.monotonic() - t0
    insert = sa.text(
        "INSERT INTO sessions (user_id, created_at, expires_at, ip) VALUES (:u, :c, :e, CAST(:ip AS inet))"
    )
    events: list[dict[str, Any]] = []
    minute = sc.clean_start
    scan_times = []
    while minute < sc.end and (limit is None or len(scan_times) < limit):
        with engine.begin() as conn:
            rows = by_minute.get(minute)
            if rows:
                conn.execute(
                    insert,
                    [{"u": s.user, "c": s.created_at, "e": s.created_at + s.ttl, "ip": s.ip} for s in rows],
                )
            if (sc.purge_stops is None or minute < sc.purge_stops) and (
                minute - sc.clean_start
            ) % PURGE_EVERY == timedelta(0):
                conn.execute(sa.text("DELETE FROM sessions WHERE expires_at < :now"), {"now": minute})
                conn.execute(
                    sa.insert(models.job_runs).values(
                        job="purge",
                        trigger="bench",
                        started_at=minute,
                        finished_at=minute,
                        outcome="succeeded",
                    )
                )
        now = minute + timedelta(minutes=1, seconds=5)
        t0 = time.monotonic()
        result = scan.run_scan(engine, settings, now=now, trigger="bench")
        scan_times.append(time.monotonic() - t0)
        events += [{**e, "at": now} for e in result.events]
        minute += timedelta(minutes=1)
    timings["scans"] = len(scan_times)
    timings["scan_median_seconds"] = statistics.median(scan_times)
    timings["scan_p99_seconds"] = sorted(scan_times)[int(0.99 * len(scan_times))]
    engine.dispose()
    return events, timings


def _matches(inj: synth.Injection, e: dict[str, Any]) -> bool:
    rule = {"cleanup_stopped": "purge_lag"}.get(inj.kind, inj.kind)
    if e["rule"] != rule:
        return False
    if inj.kind in {"user_burst", "ip_spread"} and e["entity"] != inj.entity:
        return False
    return inj.start <= e["at"] <= inj.end + GRACE


def score(sc: synth.Scenario, events: list[dict[str, Any]]) -> dict[str, Any]:
    """Recall and delay per category, precision over every notification, the clean week's load."""
    notes = [e for e in events if e["event"] != "resolved"]
    first: dict[int, datetime] = {}
    true_notes = 0
    for e in notes:
        hit = [i for i, inj in enumerate(sc.injections) if _matches(inj, e)]
        true_notes += bool(hit)
        for i in hit:
            first.setdefault(i, e["at"])

    def delay(i: int) -> float | None:
        return None if i not in first else (first[i] - sc.injections[i].start).total_seconds() / 60

    cats: dict[str, list[int]] = defaultdict(list)
    for i, inj in enumerate(sc.injections):
        minutes = (inj.end - inj.start) / timedelta(minutes=1)
        cats[
            f"{inj.kind}: {inj.label.split(' ', 1)[1] if inj.kind != 'cleanup_stopped' else 'purge stopped'}"
        ].append(i)
        if inj.kind == "user_burst" and inj.size >= 20 and minutes <= 10:
            cats["TARGET user >=20 in <=10m (recall>=0.95, median delay<=2m)"].append(i)
        if inj.kind == "user_burst" and inj.size >= 10 and minutes <= 10:
            cats["TARGET user >=10 in <=10m (recall>=0.8)"].append(i)
        if inj.kind == "ip_spread" and inj.size >= 10:
            cats["TARGET ip >=10 users (recall>=0.95 within 5m)"].append(i)
        if inj.kind == "global_spike" and inj.size == 3.0 and minutes == 10:
            cats["TARGET global +200% 10m (recall>=0.95 within 10m)"].append(i)
        if inj.kind == "cleanup_stopped":
            cats["TARGET cleanup stopped (within 2 purge intervals = 10m)"].append(i)
    table = {}
    for name, idx in sorted(cats.items()):
        delays = [d for d in (delay(i) for i in idx) if d is not None]
        table[name] = {
            "n": len(idx),
            "recall": round(len(delays) / len(idx), 3),
            "median_delay_min": round(statistics.median(delays), 1) if delays else None,
            "max_delay_min": round(max(delays), 1) if delays else None,
            "missed": [
                sc.injections[i].label + f" on {sc.injections[i].entity} at {sc.injections[i].start:%a %H:%M}"
                for i in idx
                if i not in first
            ],
        }
    clean = [e for e in notes if sc.clean_start <= e["at"] < sc.attack_start]
    per_day = Counter(e["at"].strftime("%a %d") for e in clean)
    false = [e for e in notes if not any(_matches(inj, e) for inj in sc.injections)]
    return {
        "categories": table,
        "notifications": len(notes),
        "true_notifications": true_notes,
        "precision": round(true_notes / len(notes), 3) if notes else None,
        "clean_week_notifications": len(clean),
        "clean_week_per_day": dict(per_day),
        "clean_week_max_per_day": max(per_day.values(), default=0),
        "false_positives": [
            {"at": e["at"].isoformat(), "rule": e["rule"], "event": e["event"], "reason": e["reason"]}
            for e in false
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=20261204)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--limit", type=int, help="stop after this many scans (a smoke test)")
    args = parser.parse_args()
    configure_logging(LoggingSettings(level="WARNING"), force=True)
    sc = synth.generate(seed=args.seed)
    admin = sa.create_engine(
        db.normalize_url(ADMIN), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool
    )
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{NAME}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{NAME}"'))
    url = db.normalize_url(ADMIN).set(database=NAME).render_as_string(hide_password=False)
    try:
        events, timings = replay(sc, url, limit=args.limit)
    finally:
        db.dispose_engines()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{NAME}" WITH (FORCE)'))
        admin.dispose()
    report = {"seed": args.seed, "timings": timings, **score(sc, events)}
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return
    print(
        f"seed {args.seed}: {timings['scans']} scans, median {timings['scan_median_seconds'] * 1000:.0f} ms, "
        f"p99 {timings['scan_p99_seconds'] * 1000:.0f} ms; backfill {timings['backfill_seconds']:.1f} s"
    )
    print(f"{'category':64} {'n':>3} {'recall':>6} {'med':>5} {'max':>5}")
    for name, row in report["categories"].items():
        med = "-" if row["median_delay_min"] is None else f"{row['median_delay_min']:.1f}"
        mx = "-" if row["max_delay_min"] is None else f"{row['max_delay_min']:.1f}"
        print(f"{name:64} {row['n']:>3} {row['recall']:>6.2f} {med:>5} {mx:>5}")
        for miss in row["missed"][:6]:
            print(f"{'':8}missed: {miss}")
    print(
        f"precision over all {report['notifications']} notifications: {report['precision']} (target >= 0.9)"
    )
    print(
        f"clean week: {report['clean_week_notifications']} notifications, "
        f"per day {report['clean_week_per_day']} (target <= 1 a day)"
    )
    for fp in report["false_positives"][:20]:
        print(f"  false positive {fp['at'][:16]} {fp['rule']} {fp['event']}: {fp['reason']}")


if __name__ == "__main__":
    main()
