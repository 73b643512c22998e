"""Sentry from the worker and beat: error events and cron check-ins reach a (local, real) endpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.acceptance.fake_sentry import FakeSentry
from tests.helpers import BIN

pytestmark = pytest.mark.acceptance


def _wait(predicate: object, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{log.read_text()[-4000:]}"
        time.sleep(0.3)


def test_worker_and_beat_report_events_and_checkins(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    with FakeSentry() as sentry:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONKEEPER_")}
        env.update(
            {
                "SESSIONKEEPER_DATABASE__URL": pg_url,
                "SESSIONKEEPER_BROKER__URL": redis_url,
                "SESSIONKEEPER_SENTRY__DSN": sentry.dsn,
                "SESSIONKEEPER_SENTRY__ENVIRONMENT": "test",
                "SESSIONKEEPER_WORKER__HEARTBEAT_FILE": str(tmp_path / "hb"),
                "SESSIONKEEPER_WORKER__READY_FILE": str(tmp_path / "ready"),
                # Only retention fires during the test: every minute, on the minute.
                "SESSIONKEEPER_RETENTION__SCHEDULE": "* * * * *",
                "SESSIONKEEPER_PURGE__SCHEDULE": "12h",
                "SESSIONKEEPER_STATS__SCHEDULE": "12h",
                "SESSIONKEEPER_ANOMALY__SCHEDULE": "12h",
                "SESSIONKEEPER_REVOKE__OUTBOX_SCHEDULE": "12h",
            }
        )
        log_path = tmp_path / "procs.log"
        log = log_path.open("w")
        worker = subprocess.Popen(
            [str(BIN), "worker", "-c", "1"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        beat = subprocess.Popen(
            [str(BIN), "beat", "--schedule-file", str(tmp_path / "beat-schedule")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait(lambda: (tmp_path / "ready").exists(), 60, "worker ready", log_path)
            # A task that fails in the worker becomes one Sentry event.
            subprocess.run(
                [
                    str(BIN.with_name("python")),
                    "-c",
                    "from worker.celery_app import app; "
                    "app.send_task('sessionkeeper.retention', kwargs={'unexpected': 1})",
                ],
                env=env,
                check=True,
                timeout=30,
            )
            _wait(lambda: sentry.of_type("event"), 30, "an error event", log_path)
            event = sentry.of_type("event")[0]
            assert event["environment"] == "test"
            assert event["tags"]["process"] == "worker"
            assert "user" not in event or not event["user"].get("ip_address")

            def checkins() -> set[str]:
                return {
                    c["status"] for c in sentry.of_type("check_in") if c.get("monitor_slug") == "retention"
                }

            _wait(lambda: {"in_progress", "ok"} <= checkins(), 75, "retention check-ins", log_path)
            config = next(c for c in sentry.of_type("check_in") if c.get("monitor_config"))["monitor_config"]
            assert config["schedule"] == {"type": "crontab", "value": "* * * * *"}
        finally:
            for proc in (beat, worker):
                proc.send_signal(signal.SIGTERM)
            for proc in (beat, worker):
                proc.wait(timeout=30)
            log.close()
