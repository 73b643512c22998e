"""Process start-up for Celery: logging, Sentry, engine disposal after fork, task context, health files."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import structlog
from celery import signals

from worker import db
from worker.observability import configure_logging, get_logger
from worker.settings import get_settings

log = get_logger("sessionkeeper.worker")
_heartbeat_stop = threading.Event()
HEARTBEAT_SECONDS = 10


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    # Connecting here stops Celery from installing its own handlers.
    configure_logging(get_settings().logging)


@signals.celeryd_init.connect
def _init_worker_sentry(**_: Any) -> None:
    from worker.sentry import init_sentry

    init_sentry(get_settings(), process="worker")


@signals.beat_init.connect
def _init_beat_sentry(**_: Any) -> None:
    from worker.sentry import init_sentry

    init_sentry(get_settings(), process="beat")


@signals.worker_process_init.connect
def _fresh_engines(**_: Any) -> None:
    # Forked children must never share pooled connections with the parent.
    db.dispose_engines()


@signals.task_prerun.connect
def _bind_task(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(task_id=task_id, task_name=getattr(task, "name", None))


@signals.task_postrun.connect
def _unbind_task(**_: Any) -> None:
    structlog.contextvars.clear_contextvars()


def _touch(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    except OSError as exc:
        log.warning("health_file_not_written", path=str(path), error=str(exc))


def _heartbeat(path: Path) -> None:
    while not _heartbeat_stop.wait(HEARTBEAT_SECONDS):
        _touch(path)


@signals.worker_ready.connect
def _ready(**_: Any) -> None:
    cfg = get_settings().worker
    _touch(cfg.ready_file)
    _touch(cfg.heartbeat_file)
    _heartbeat_stop.clear()
    threading.Thread(target=_heartbeat, args=(cfg.heartbeat_file,), name="heartbeat", daemon=True).start()
    log.info("worker_ready", ready_file=str(cfg.ready_file))


@signals.worker_shutdown.connect
def _shutdown(**_: Any) -> None:
    _heartbeat_stop.set()
    get_settings().worker.ready_file.unlink(missing_ok=True)
