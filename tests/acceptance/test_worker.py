"""A real Celery worker: starts from the CLI, runs a job from the broker, logs JSON with task context."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.helpers import BIN
from worker import db, models

pytestmark = pytest.mark.acceptance


def test_worker_runs_a_task_from_redis_and_logs_its_context(
    pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONKEEPER_")}
    env.update(
        {
            "SESSIONKEEPER_DATABASE__URL": pg_url,
            "SESSIONKEEPER_BROKER__URL": redis_url,
            "SESSIONKEEPER_WORKER__HEARTBEAT_FILE": str(tmp_path / "hb"),
            "SESSIONKEEPER_WORKER__READY_FILE": str(tmp_path / "ready"),
            "SESSIONKEEPER_LOGGING__FORMAT": "json",
        }
    )
    log = (tmp_path / "worker.log").open("w")
    proc = subprocess.Popen([str(BIN), "worker", "-c", "1"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "ready").exists():
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()
            assert time.monotonic() < deadline, "worker never became ready"
            time.sleep(0.2)
        health = subprocess.run(
            [str(BIN), "health", "--worker", "--json"], env=env, capture_output=True, text=True, check=False
        )
        assert health.returncode == 0, health.stdout
        # Publish through Celery as beat would, with the worker's own configuration.
        subprocess.run(
            [
                str(BIN.with_name("python")),
                "-c",
                "from worker.celery_app import app; app.send_task('sessionkeeper.retention', kwargs={'trigger': 'beat'})",
            ],
            env=env,
            check=True,
            timeout=30,
        )
        engine = db.make_engine(pg_url)
        deadline = time.monotonic() + 30
        row = None
        while row is None and time.monotonic() < deadline:
            with engine.connect() as conn:
                row = conn.execute(
                    sa.select(models.job_runs).where(models.job_runs.c.outcome == "succeeded")
                ).first()
            time.sleep(0.2)
        engine.dispose()
        assert row is not None, (tmp_path / "worker.log").read_text()
        assert row.job == "retention" and row.trigger == "beat"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
    lines = [
        json.loads(line)
        for line in (tmp_path / "worker.log").read_text().splitlines()
        if line.startswith("{")
    ]
    finished = [line for line in lines if line.get("event") == "job_finished"]
    assert finished and finished[0]["task_name"] == "sessionkeeper.retention" and finished[0]["task_id"]
    assert not (tmp_path / "ready").exists(), "the ready file must go when the worker stops"
