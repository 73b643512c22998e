"""Celery settings and the beat schedule, from worker.settings (read when Celery first needs them).

The values follow ../shared/CELERY-CHECKLIST.md; tests/unit/test_celeryconfig.py fails when a
time limit, a retry backoff or a countdown reaches the visibility timeout, or an entry lacks an expiry.
"""

from __future__ import annotations

import importlib.util
from datetime import timedelta
from typing import Any

from celery.schedules import crontab

from worker.durations import parse_duration
from worker.settings import get_settings

_s = get_settings()

#: job name -> (module, task name, schedule string from settings)
SCHEDULED_JOBS: dict[str, tuple[str, str, str]] = {
    "purge": ("tasks.purge", "sessionkeeper.purge", _s.purge.schedule),
    "stats": ("tasks.stats", "sessionkeeper.stats", _s.stats.schedule),
    "scan": ("tasks.anomaly", "sessionkeeper.scan", _s.anomaly.schedule),
    "outbox": ("tasks.revoke", "sessionkeeper.outbox_sweep", _s.revoke.outbox_schedule),
    "retention": ("tasks.retention", "sessionkeeper.retention", _s.retention.schedule),
    "deliver_alerts": ("tasks.alerts", "sessionkeeper.deliver_alerts", _s.alerts.deliver_schedule),
}

#: a queued copy of a crontab job older than this is dropped (interval jobs use their period)
CRONTAB_EXPIRES = timedelta(hours=1)


def _schedule(text: str) -> tuple[Any, float]:
    """A Celery schedule and the expiry (seconds) its queued copies get."""
    fields = text.split()
    if len(fields) == 5:
        minute, hour, day_of_month, month, day_of_week = fields
        sched = crontab(
            minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month, day_of_week=day_of_week
        )
        return sched, CRONTAB_EXPIRES.total_seconds()
    period = parse_duration(text)
    return period, period.total_seconds()


def _beat_schedule() -> dict[str, dict[str, Any]]:
    entries = {}
    for job, (module, task, text) in SCHEDULED_JOBS.items():
        if importlib.util.find_spec(module) is None:  # a job not built in this version
            continue
        sched, expires = _schedule(text)
        entries[job] = {
            "task": task,
            "schedule": sched,
            "kwargs": {"trigger": "beat"},
            "options": {"expires": expires},
        }
    return entries


_visibility = _s.broker.visibility_timeout.total_seconds()

broker_url = _s.broker.url.get_secret_value()
broker_transport_options = {
    "visibility_timeout": _visibility,
    # Fail fast when Redis is away: the API must answer (the outbox re-publishes later).
    "socket_connect_timeout": 3,
    "socket_timeout": 10,
    "retry_on_timeout": True,
}
broker_connection_retry_on_startup = True
broker_connection_max_retries = None
result_backend = None
task_ignore_result = True
result_backend_transport_options = {"visibility_timeout": _visibility}

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
timezone = "UTC"
enable_utc = True
task_default_queue = "sessionkeeper"

task_acks_late = True
task_reject_on_worker_lost = False  # True only on the revocation task, with its own attempt limit
worker_prefetch_multiplier = 1
task_soft_time_limit = _s.worker.soft_time_limit.total_seconds()
task_time_limit = _s.worker.time_limit.total_seconds()
worker_cancel_long_running_tasks_on_connection_loss = True
worker_max_tasks_per_child = _s.worker.max_tasks_per_child
worker_max_memory_per_child = _s.worker.max_memory_per_child_kb
worker_soft_shutdown_timeout = 10.0
worker_enable_soft_shutdown_on_idle = True
worker_hijack_root_logger = False
worker_send_task_events = False
task_publish_retry_policy = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}

beat_schedule = _beat_schedule()
beat_max_loop_interval = 15
# RedBeat hot standby (optional, `sessionkeeper beat --redbeat`): a standby takes over within
# about 5 loop intervals once the active beat's lock expires.
redbeat_redis_url = broker_url
redbeat_lock_timeout = 5 * beat_max_loop_interval
redbeat_key_prefix = "sessionkeeper:redbeat"
