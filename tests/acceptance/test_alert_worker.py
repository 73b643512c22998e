"""A real Celery worker runs sessionkeeper.deliver_alerts and a real receiver gets the webhook."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from celery import Celery

from tests.helpers import BIN
from tests.integration.receiver import Receiver
from worker import db, models
from worker.alert import outbox, webhook
from worker.settings import Settings

pytestmark = pytest.mark.acceptance
SECRET = "whsec-worker"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def test_worker_delivers_queued_alerts(
    pg_url: str, redis_url: str, receiver: Receiver, tmp_path: Path
) -> None:
    hooks = [{"name": "ops", "url": receiver.url("/ops"), "secret": SECRET}]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SESSIONKEEPER_")},
        "SESSIONKEEPER_DATABASE__URL": pg_url,
        "SESSIONKEEPER_BROKER__URL": redis_url,
        "SESSIONKEEPER_ALERTS__WEBHOOKS": json.dumps(hooks),
        "SESSIONKEEPER_LOGGING__FORMAT": "json",
        "SESSIONKEEPER_WORKER__READY_FILE": str(tmp_path / "ready"),
        "SESSIONKEEPER_WORKER__HEARTBEAT_FILE": str(tmp_path / "heartbeat"),
    }
    settings = Settings(database={"url": pg_url}, alerts={"webhooks": hooks})
    engine = db.make_engine(pg_url)
    with (tmp_path / "worker.log").open("wb") as worker_log:
        worker = subprocess.Popen(
            [str(BIN), "worker", "-c", "1", "--without-heartbeat", "--without-mingle", "--without-gossip"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=worker_log,
        )
    publisher = Celery(broker=redis_url)
    try:
        wait_for(lambda: (tmp_path / "ready").exists() or worker.poll() is not None, 60, "worker ready")
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()
        with engine.begin() as conn:
            outbox.enqueue(
                conn,
                alert_id=None,
                event="mass",
                payload={
                    "rule": "user_burst",
                    "severity": "critical",
                    "count": 25,
                    "first_seen": datetime.now(UTC),
                },
                settings=settings,
            )
        publisher.send_task("sessionkeeper.deliver_alerts", kwargs={"trigger": "test"}, queue="sessionkeeper")
        wait_for(lambda: receiver.received("/ops"), 30, "the webhook")
        (got,) = receiver.received("/ops")
        assert webhook.verify(SECRET, got.headers["x-sessionkeeper-signature"], got.body)
        assert json.loads(got.body)["summary"] == "CRITICAL mass anomaly: 25 user_burst alerts in one scan"

        def all_sent() -> bool:
            with engine.connect() as conn:
                statuses = conn.execute(sa.select(models.alert_deliveries.c.status)).scalars().all()
            return sorted(statuses) == ["sent", "sent"]

        wait_for(all_sent, 10, "both deliveries recorded as sent")
    finally:
        publisher.close()
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        engine.dispose()
    log = (tmp_path / "worker.log").read_text()
    assert "alerts_delivered" in log
    assert SECRET not in log
    assert "/ops" not in log
