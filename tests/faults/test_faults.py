"""Faults with real processes: a worker killed mid-purge, PostgreSQL lost mid-purge and mid-scan,
two beats with a manual run on top. After each, nothing that should stay is gone, nothing is done
twice, and no half-state is left behind.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.acceptance.stack import Stack, stack, wait_until
from tests.faults.services import PrivatePostgres
from tests.helpers import BIN, cli, cli_json
from worker import db, models
from worker.sessiontable import utcnow

pytestmark = pytest.mark.acceptance

SEED = """
INSERT INTO sessions (id, token_hash, user_id, created_at, last_activity_at, expires_at, ip, user_agent)
SELECT :prefix || g, sha256((:prefix || g)::bytea), 'u' || (g % 500), now() - interval '40 days',
       now() - interval '35 days', now() - (:expired_by)::interval, '10.0.0.1', 'fault-test'
FROM generate_series(1, :n) AS g
"""


def seed(url: str, *, expired: int, live: int) -> set[str]:
    """``expired`` rows past expiry and ``live`` rows valid for a day; returns the live ids."""
    engine = db.make_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(SEED), {"prefix": "x", "n": expired, "expired_by": "1 day"})
        conn.execute(sa.text(SEED), {"prefix": "live", "n": live, "expired_by": "-1 day"})
        conn.execute(sa.text("UPDATE sessions SET last_activity_at = now() WHERE id LIKE 'live%'"))
        conn.execute(sa.text("ANALYZE sessions"))
    ids = live_ids(engine)
    engine.dispose()
    return ids


def live_ids(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text("SELECT id FROM sessions WHERE id LIKE 'live%'")).scalars())


def count(engine: sa.Engine, where: str = "true") -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM sessions WHERE {where}")).scalar_one())


def runs(engine: sa.Engine, job: str) -> list[sa.Row[tuple[str, str | None, dict[str, object]]]]:
    t = models.job_runs
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(t.c.outcome, t.c.error, t.c.figures).where(t.c.job == job).order_by(t.c.id)
            )
        )


def send(s: Stack, task: str, **kwargs: object) -> None:
    code = f"from worker.celery_app import app; app.send_task({task!r}, kwargs={kwargs!r})"
    subprocess.run([str(BIN.with_name("python")), "-c", code], env=s.env, check=True, timeout=30)


GENTLE_PURGE = {
    "SESSIONKEEPER_PURGE__BATCH_SIZE": "300",
    "SESSIONKEEPER_PURGE__SCHEDULE": "1h",
    "SESSIONKEEPER_STATS__SCHEDULE": "1h",
    "SESSIONKEEPER_ANOMALY__SCHEDULE": "1h",
    "SESSIONKEEPER_REVOKE__OUTBOX_SCHEDULE": "1h",
}


def test_worker_sigkilled_during_purge_then_purge_resumes(
    pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    env = {"SESSIONKEEPER_DATABASE__URL": pg_url, "SESSIONKEEPER_BROKER__URL": redis_url, **GENTLE_PURGE}
    cli_json("migrate", "--reference-table", env=env)
    keep = seed(pg_url, expired=150_000, live=2_000)
    engine = db.make_engine(pg_url)
    with stack(tmp_path, env) as s:
        s.start_worker(concurrency=1)
        send(s, "sessionkeeper.purge", trigger="test")
        wait_until(lambda: count(engine) < 150_000, timeout=60, what="the purge to delete some rows")
        s.kill("worker", signal.SIGKILL)
        after_kill = count(engine)
        assert 2_000 < after_kill < 152_000, "the kill must land mid-purge"
        assert live_ids(engine) == keep
        assert [r.outcome for r in runs(engine, "purge")] == ["running"]  # the dead run, for now
        s.start_worker(concurrency=1)
        result = cli_json("purge", env=env, timeout=300)  # the next run, as beat or cron would start it
        assert not result["pending"] and result["expired_pending"] == 0, result
    assert count(engine) == 2_000
    assert live_ids(engine) == keep, "a live session was deleted"
    with engine.begin() as conn:  # an hour later the dead run is closed as failed by the next start
        conn.execute(
            sa.update(models.job_runs)
            .where(models.job_runs.c.outcome == "running")
            .values(started_at=utcnow() - timedelta(hours=1))
        )
    cli_json("purge", env=env)
    outcomes = [r.outcome for r in runs(engine, "purge")]
    assert outcomes[0] == "failed" and outcomes[1:] == ["succeeded", "succeeded"], outcomes
    engine.dispose()


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    pg.start()
    try:
        yield pg
    finally:
        pg.destroy()


def test_postgres_stopped_mid_purge_fails_cleanly_then_recovers(
    private_pg: PrivatePostgres, tmp_path: Path
) -> None:
    url = private_pg.create_database("app")
    env = {
        "SESSIONKEEPER_DATABASE__URL": url,
        "SESSIONKEEPER_DATABASE__CONNECT_TIMEOUT": "2s",
        **GENTLE_PURGE,
    }
    cli_json("migrate", "--reference-table", env=env)
    keep = seed(url, expired=150_000, live=1_000)
    engine = db.make_engine(url, connect_timeout=2)
    proc = subprocess.Popen(
        [str(BIN), "purge", "--batch-size", "300"],
        env={**cli_env(), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: count(engine) < 150_000, timeout=60, what="the purge to delete some rows")
    engine.dispose()
    private_pg.stop("fast")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    assert "database unreachable" in err and "Traceback" not in err, err
    private_pg.start()
    engine = db.make_engine(url)
    assert live_ids(engine) == keep
    done = cli_json("purge", env=env, timeout=300)
    assert done["deleted_total"] > 0
    assert count(engine) == 1_000 and live_ids(engine) == keep
    # With PostgreSQL back, the next scan flags the purge that did not finish.
    engine.dispose()


def test_scan_retries_with_backoff_while_postgres_is_down(
    private_pg: PrivatePostgres, redis_url: str, tmp_path: Path
) -> None:
    url = private_pg.create_database("app")
    env = {
        "SESSIONKEEPER_DATABASE__URL": url,
        "SESSIONKEEPER_BROKER__URL": redis_url,
        "SESSIONKEEPER_DATABASE__CONNECT_TIMEOUT": "1s",
        **GENTLE_PURGE,
    }
    cli_json("migrate", "--reference-table", env=env)
    seed(url, expired=500, live=50)
    with stack(tmp_path, env) as s:
        s.start_worker(concurrency=1)
        private_pg.stop("fast")
        send(s, "sessionkeeper.scan", trigger="test")
        wait_until(
            lambda: "Retry in" in s.log("worker") or "retry" in s.log("worker").lower(),
            timeout=30,
            what="the scan to be retried",
        )
        private_pg.start()
        engine = db.make_engine(url)
        wait_until(
            lambda: any(r.outcome == "succeeded" for r in runs(engine, "scan")),
            timeout=90,
            what="the retried scan to succeed",
        )
        engine.dispose()


def test_two_beats_and_a_manual_run_never_purge_twice(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    env = {
        "SESSIONKEEPER_DATABASE__URL": pg_url,
        "SESSIONKEEPER_BROKER__URL": redis_url,
        **GENTLE_PURGE,
        "SESSIONKEEPER_PURGE__SCHEDULE": "1s",
    }
    cli_json("migrate", "--reference-table", env=env)
    keep = seed(pg_url, expired=60_000, live=500)
    engine = db.make_engine(pg_url)
    with stack(tmp_path, env) as s:
        s.start_worker(concurrency=2)
        s.start_beat()
        s._spawn("beat2", "beat", "--schedule-file", str(tmp_path / "beat2-schedule"))
        manual = cli("purge", "--json", env=env, timeout=300)
        assert manual.returncode == 0, manual.stderr
        wait_until(lambda: count(engine) == 500, timeout=120, what="the backlog to be purged")
        time.sleep(3)  # a few more ticks of both beats
    outcomes = runs(engine, "purge")
    deleted = sum(int(r.figures.get("deleted_total", 0)) for r in outcomes)  # type: ignore[call-overload]
    assert deleted == 60_000, "every row counted exactly once across all runs"
    assert live_ids(engine) == keep
    assert {r.outcome for r in outcomes} <= {"succeeded", "skipped"}, [r.error for r in outcomes if r.error]
    assert len(outcomes) >= 3
    engine.dispose()


def cli_env() -> dict[str, str]:
    import os

    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SESSIONKEEPER_") or k.startswith("SESSIONKEEPER_TEST")
    }
