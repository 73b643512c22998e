"""The stats task through a real Celery worker and Redis: the run lands in job_runs and the tables."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from tasks import stats
from tests.helpers import BIN
from worker import db, models, reference
from worker.jobruns import last_runs
from worker.sessiontable import utcnow
from worker.settings import Settings

pytestmark = pytest.mark.acceptance


def test_stats_task_runs_on_a_worker(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    settings = Settings(database={"url": pg_url}, broker={"url": redis_url})
    engine = db.get_engine(settings)
    now = utcnow()
    with engine.begin() as conn:
        reference.create_reference_table(conn)
        conn.execute(
            sa.insert(reference.reference_table()),
            [
                {
                    "id": f"s{i}",
                    "token_hash": bytes([i]),
                    "user_id": f"u{i % 3}",
                    "expires_at": now + timedelta(hours=i - 1.5),
                }
                for i in range(9)
            ],
        )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SESSIONKEEPER_") or k.startswith("SESSIONKEEPER_TEST")
    }
    env |= {"SESSIONKEEPER_DATABASE__URL": pg_url, "SESSIONKEEPER_BROKER__URL": redis_url}
    with (tmp_path / "worker.log").open("w") as log:
        worker = subprocess.Popen(
            [str(BIN), "worker", "-c", "1"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    try:
        from celery import Celery

        client = Celery(broker=redis_url)
        client.conf.task_default_queue = "sessionkeeper"
        client.send_task("sessionkeeper.stats", kwargs={"trigger": "test"})
        deadline = time.monotonic() + 60
        runs: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            runs = [r for r in last_runs(engine, "stats") if r["outcome"] != "running"]
            if runs:
                break
            time.sleep(0.5)
        assert runs, (tmp_path / "worker.log").read_text()[-3000:]
        run = runs[0]
        assert (run["outcome"], run["trigger"]) == ("succeeded", "test"), run
        assert run["task_id"]
        snap = stats.latest_snapshot(engine)
        assert snap is not None and snap["active"] == 7 and snap["users_active"] == 3
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(models.user_stats)).scalar() == 3
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
