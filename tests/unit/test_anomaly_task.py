"""The scan is a registered Celery task on the beat schedule, with the periodic options."""

from __future__ import annotations

import celeryconfig
import tasks.anomaly
from worker.celery_app import app


def test_scan_task_registered_and_scheduled() -> None:
    task = app.tasks["sessionkeeper.scan"]
    assert task.name == tasks.anomaly.scan_task.name
    assert task.acks_late is True
    assert task.ignore_result is True
    entry = celeryconfig.beat_schedule["scan"]
    assert entry["task"] == "sessionkeeper.scan"
    assert entry["options"]["expires"] == 60.0
