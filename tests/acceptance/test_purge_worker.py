"""The purge task through a real Celery worker and Redis: it runs, records the run, retries when the DB is away."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from celery import Celery

from tests.helpers import BIN
from tests.integration.test_purge import NOW, _row
from worker import db, models, reference

pytestmark = pytest.mark.acceptance


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    full = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SESSIONKEEPER_") or k.startswith("SESSIONKEEPER_TEST")
    }
    full.update(env)
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(BIN), "worker", "--concurrency", "1", "-P", "solo", "--without-mingle", "--without-gossip"],
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
def worker_env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        "SESSIONKEEPER_BROKER__URL": redis_url,
        "SESSIONKEEPER_LOGGING__FORMAT": "json",
        "SESSIONKEEPER_WORKER__HEARTBEAT_FILE": str(tmp_path / "hb"),
        "SESSIONKEEPER_WORKER__READY_FILE": str(tmp_path / "ready"),
    }


def _send(redis_url: str) -> None:
    client = Celery(broker=redis_url)
    client.send_task("sessionkeeper.purge", kwargs={"trigger": "test"}, queue="sessionkeeper")
    client.close()


def _wait(predicate: object, timeout: float) -> bool:
    ends = time.monotonic() + timeout
    while time.monotonic() < ends:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.3)
    return False


def test_worker_runs_the_purge_and_records_it(
    pg_url: str, redis_url: str, worker_env: dict[str, str], tmp_path: Path
) -> None:
    engine = db.make_engine(pg_url)
    with engine.begin() as conn:
        reference.create_reference_table(conn)
        conn.execute(
            sa.insert(reference.reference_table()),
            [_row(f"x{i}", expires_at=NOW.replace(year=NOW.year - 1)) for i in range(30)] + [_row("live")],
        )
    proc = _start_worker({**worker_env, "SESSIONKEEPER_DATABASE__URL": pg_url}, tmp_path / "worker.log")
    try:
        _send(redis_url)

        def finished() -> bool:
            with engine.connect() as conn:
                return bool(
                    conn.execute(
                        sa.select(sa.func.count()).where(
                            models.job_runs.c.job == "purge", models.job_runs.c.outcome == "succeeded"
                        )
                    ).scalar()
                )

        assert _wait(finished, 60), (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    with engine.connect() as conn:
        run = conn.execute(sa.select(models.job_runs).where(models.job_runs.c.job == "purge")).one()
        left = conn.execute(sa.text("SELECT id FROM sessions")).scalars().all()
    engine.dispose()
    assert run.trigger == "test" and run.task_id and run.figures["deleted"] == {"expired": 30}
    assert left == ["live"]


def test_worker_retries_with_backoff_when_the_database_is_away(
    redis_url: str, worker_env: dict[str, str], tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    proc = _start_worker(
        {**worker_env, "SESSIONKEEPER_DATABASE__URL": "postgresql://postgres@127.0.0.1:1/x"}, log
    )
    try:
        _send(redis_url)
        assert _wait(lambda: "Retry in" in log.read_text(errors="replace"), 60), log.read_text()[-3000:]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log.read_text(errors="replace")
    assert "database unreachable" in text
