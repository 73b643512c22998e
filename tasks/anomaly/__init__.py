"""Session-creation anomaly detection: the scan job, its detectors and the alert lifecycle.

Modules: detectors (pure rules), distributions (count-model tails), lifecycle (pure alert state
machine), queries (every statement), rules (detectors over rollups), operational (purge lag,
table growth), alerting (alerts table and outbox), scan (the job), task (Celery), demo.
Importing the package registers the Celery task ``sessionkeeper.scan``.
"""

from __future__ import annotations

from tasks.anomaly.demo import demo_report
from tasks.anomaly.task import scan_task

__all__ = ["demo_report", "scan_task"]
