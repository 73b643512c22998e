"""The Celery safety rules of CELERY-CHECKLIST.md, checked on the real configuration."""

from __future__ import annotations

from datetime import timedelta

import pytest
from celery.schedules import crontab


@pytest.fixture
def conf():  # type: ignore[no-untyped-def]
    import importlib

    import celeryconfig

    importlib.reload(celeryconfig)
    from worker.celery_app import app

    app.config_from_object(celeryconfig, force=True)
    return app.conf


def test_safe_delivery_settings(conf) -> None:  # type: ignore[no-untyped-def]
    assert conf.task_acks_late is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.worker_cancel_long_running_tasks_on_connection_loss is True
    assert conf.task_ignore_result is True
    assert conf.worker_max_tasks_per_child and conf.worker_max_memory_per_child
    assert conf.worker_soft_shutdown_timeout > 0


def test_time_limits_below_visibility_timeout(conf) -> None:  # type: ignore[no-untyped-def]
    visibility = conf.broker_transport_options["visibility_timeout"]
    assert conf.result_backend_transport_options["visibility_timeout"] == visibility
    assert conf.task_soft_time_limit < conf.task_time_limit < visibility


def test_every_task_retry_backoff_and_countdown_below_visibility_timeout(conf) -> None:  # type: ignore[no-untyped-def]
    from worker.celery_app import app

    app.loader.import_default_modules()
    visibility = conf.broker_transport_options["visibility_timeout"]
    ours = {name: task for name, task in app.tasks.items() if name.startswith("sessionkeeper.")}
    for name, task in ours.items():
        backoff_max = getattr(task, "retry_backoff_max", 0) or 0
        assert backoff_max < visibility, name
        assert (task.soft_time_limit or 0) < visibility, name
        assert (task.time_limit or 0) < visibility, name
        assert (getattr(task, "default_retry_delay", 0) or 0) < visibility, name
        countdown = getattr(task, "max_countdown_seconds", 0)
        assert countdown < visibility, name


def test_every_beat_entry_has_an_expiry_and_a_registered_task(conf) -> None:  # type: ignore[no-untyped-def]
    from worker.celery_app import app

    app.loader.import_default_modules()
    assert conf.beat_schedule
    for name, entry in conf.beat_schedule.items():
        expires = entry.get("options", {}).get("expires")
        assert expires, f"beat entry {name} has no expiry"
        sched = entry["schedule"]
        if isinstance(sched, timedelta):
            assert expires <= sched.total_seconds(), name
        else:
            assert isinstance(sched, crontab)
        assert expires < conf.broker_transport_options["visibility_timeout"] * 2, name
        assert entry["task"] in app.tasks, f"beat entry {name} names unregistered task {entry['task']}"
