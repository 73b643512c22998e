"""The Celery app. Settings come from celeryconfig (lazily); process start-up is in worker.signals."""

from __future__ import annotations

from typing import Any

from celery import Celery

from worker.errors import ConfigurationError, DatabaseUnavailable
from worker.settings import WorkerSettings, get_settings

TASK_MODULES = [
    "tasks.purge",
    "tasks.stats",
    "tasks.anomaly",
    "tasks.revoke",
    "tasks.retention",
    "tasks.alerts",
]

app = Celery("sessionkeeper")
app.config_from_object("celeryconfig")


def periodic_options() -> dict[str, Any]:
    """Options every periodic task shares: retry on an unreachable database, with backoff."""
    try:
        worker = get_settings().worker
    except ConfigurationError:
        # Importing a task module must never fail on bad configuration: the command that
        # actually reads settings reports it (exit 2); these defaults only shape retries.
        worker = WorkerSettings()
    return {
        "bind": True,
        "ignore_result": True,
        "acks_late": True,
        "autoretry_for": (DatabaseUnavailable,),
        "retry_backoff": 5,
        "retry_backoff_max": int(worker.retry_backoff_max.total_seconds()),
        "retry_jitter": True,
        "max_retries": worker.max_retries,
    }


def _existing(modules: list[str]) -> list[str]:
    import importlib.util

    return [m for m in modules if importlib.util.find_spec(m) is not None]


app.conf.include = _existing(TASK_MODULES)

from worker import signals  # noqa: E402  - connects the process start-up receivers

app.steps["consumer"].add(signals.HeartbeatStep)
