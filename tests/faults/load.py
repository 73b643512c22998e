"""Mixed load against the whole running stack: inserts, revocations, purges and scans at once.

Used by tests/faults/test_load.py at a small scale and by bench/load.py at a larger one. Every
number it returns comes from the database and the API, so the reconciliation is independent of
the code under test: sessions inserted = still present + purged + revoked.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from tests.acceptance.stack import READ_TOKEN, Stack, wait_until
from worker import db, models
from worker.reference import reference_table
from worker.sessiontable import utcnow

#: schedules short enough that every job runs many times within the load
BUSY_BEAT = {
    "SESSIONKEEPER_PURGE__SCHEDULE": "2s",
    "SESSIONKEEPER_PURGE__BATCH_SIZE": "200",
    "SESSIONKEEPER_STATS__SCHEDULE": "3s",
    "SESSIONKEEPER_ANOMALY__SCHEDULE": "2s",
    "SESSIONKEEPER_REVOKE__OUTBOX_SCHEDULE": "2s",
    "SESSIONKEEPER_REVOKE__OUTBOX_DELAY": "2s",
    "SESSIONKEEPER_ALERTS__DELIVER_SCHEDULE": "2s",
    # Revocation deletes rows (no soft-revoke column), so each row leaves by exactly one door.
    "SESSIONKEEPER_SESSIONS__REVOKED": "",
}


@dataclass
class LoadReport:
    seconds: float
    inserted: int = 0
    requests: int = 0
    accepted: int = 0
    server_errors: int = 0
    other_errors: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    jobs: dict[str, int] = field(default_factory=dict)
    present: int = 0
    purged: int = 0
    revoked: int = 0
    purge_runs: dict[str, int] = field(default_factory=dict)
    scan_runs: dict[str, int] = field(default_factory=dict)

    def percentile(self, q: float) -> float:
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, int(q * len(data)))] if data else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "inserted": self.inserted,
            "requests": self.requests,
            "accepted": self.accepted,
            "server_errors": self.server_errors,
            "jobs": self.jobs,
            "present": self.present,
            "purged": self.purged,
            "revoked": self.revoked,
            "reconciled": self.inserted == self.present + self.purged + self.revoked,
            "purge_runs": self.purge_runs,
            "scan_runs": self.scan_runs,
            "post_p50_ms": round(self.percentile(0.5), 1),
            "post_p99_ms": round(self.percentile(0.99), 1),
        }


def _inserter(url: str, stop: threading.Event, rate: float, users: int, report: LoadReport) -> None:
    engine = db.make_engine(url)
    table = reference_table()
    rng = random.Random(11)
    try:
        while not stop.is_set():
            now = utcnow()
            batch = []
            for _ in range(max(1, int(rate / 10))):
                ttl = rng.choice((timedelta(hours=-1), timedelta(seconds=1), timedelta(hours=2)))
                batch.append(
                    {
                        "id": str(uuid.uuid4()),
                        "token_hash": hashlib.sha256(rng.randbytes(16)).digest(),
                        "user_id": f"load{rng.randrange(users)}",
                        "created_at": now,
                        "last_activity_at": now,
                        "expires_at": now + ttl,
                        "ip": f"10.1.{rng.randrange(4)}.{rng.randrange(1, 250)}",
                        "user_agent": "load/1.0",
                    }
                )
            with engine.begin() as conn:
                conn.execute(sa.insert(table), batch)
            report.inserted += len(batch)
            stop.wait(0.1)
    finally:
        engine.dispose()


def _revoker(s: Stack, stop: threading.Event, rate: float, users: int, report: LoadReport) -> None:
    rng = random.Random(12)
    with s.client() as client:
        while not stop.is_set():
            started = time.monotonic()
            user = f"load{rng.randrange(users)}"
            try:
                resp = client.post(f"/v1/users/{user}/sessions/revoke", json={"reason": "load test"})
            except httpx.HTTPError as exc:
                report.other_errors.append(f"{type(exc).__name__}: {exc}")
                continue
            report.requests += 1
            report.latencies_ms.append((time.monotonic() - started) * 1000)
            if resp.status_code >= 500:
                report.server_errors += 1
            elif resp.status_code == 202:
                report.accepted += 1
                report.job_ids.append(resp.json()["job_id"])
            else:
                report.other_errors.append(f"{resp.status_code}: {resp.text[:200]}")
            stop.wait(max(0.0, 1 / rate - (time.monotonic() - started)))


def run_load(
    s: Stack, url: str, *, seconds: float, insert_rate: float = 200, revoke_rate: float = 5, users: int = 40
) -> LoadReport:
    """Drive the running stack for ``seconds``, wait for every job, stop it, and reconcile."""
    report = LoadReport(seconds=seconds)
    stop = threading.Event()
    threads = [
        threading.Thread(target=_inserter, args=(url, stop, insert_rate, users, report), daemon=True),
        threading.Thread(target=_revoker, args=(s, stop, revoke_rate, users, report), daemon=True),
    ]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    engine = db.make_engine(url)
    jobs = models.revocation_jobs

    def all_finished() -> bool:
        with engine.connect() as conn:
            open_jobs = conn.execute(
                sa.select(sa.func.count()).select_from(jobs).where(jobs.c.status.in_(("queued", "running")))
            ).scalar_one()
        return open_jobs == 0

    wait_until(all_finished, timeout=120, what="every accepted revocation to finish", interval=0.5)
    # Let the purge in flight finish, then stop beat and worker so nothing moves while we count.
    s.stop("beat")
    s.stop("worker")
    with engine.connect() as conn:
        report.jobs = dict(
            conn.execute(sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)).all()
        )
        report.revoked = int(
            conn.execute(sa.select(sa.func.coalesce(sa.func.sum(jobs.c.revoked_count), 0))).scalar_one()
        )
        report.present = conn.execute(sa.select(sa.func.count()).select_from(reference_table())).scalar_one()
        runs = models.job_runs
        for job, into in (("purge", report.purge_runs), ("scan", report.scan_runs)):
            into.update(
                dict(
                    conn.execute(
                        sa.select(runs.c.outcome, sa.func.count())
                        .where(runs.c.job == job)
                        .group_by(runs.c.outcome)
                    ).all()
                )
            )
        report.purged = sum(
            int((fig or {}).get("deleted_total", 0))
            for fig in conn.execute(sa.select(runs.c.figures).where(runs.c.job == "purge")).scalars()
        )
    engine.dispose()
    return report


def read_client(s: Stack) -> httpx.Client:
    return s.client(READ_TOKEN)


__all__ = ["BUSY_BEAT", "LoadReport", "Path", "run_load"]
