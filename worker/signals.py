"""Process start-up for Celery: logging, Sentry, engine disposal after fork, task context, health files."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import structlog
from celery import bootsteps, signals

from worker import db
from worker.observability import configure_logging, get_logger
from worker.settings import get_settings

log = get_logger("sessionkeeper.worker")
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
    # The imported code lives as long as the child: out of the collector's reach, a full
    # collection stops walking it (a pause of tens of ms in the middle of a task otherwise).
    gc.collect()
    gc.freeze()


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


class HeartbeatStep(bootsteps.StartStopStep):
    """Touch the heartbeat file from the consumer's own timer: a hung event loop stops touching it,
    so a liveness probe on the file's age catches a worker that is up but no longer consuming."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.timer_ref: Any = None

    def start(self, parent: Any) -> None:
        path = get_settings().worker.heartbeat_file
        _touch(path)
        self.timer_ref = parent.timer.call_repeatedly(HEARTBEAT_SECONDS, _touch, (path,), priority=10)

    def stop(self, parent: Any) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()
            self.timer_ref = None

    shutdown = stop


@signals.worker_ready.connect
def _ready(**_: Any) -> None:
    cfg = get_settings().worker
    _touch(cfg.ready_file)
    log.info("worker_ready", ready_file=str(cfg.ready_file))


@signals.worker_shutdown.connect
def _shutdown(**_: Any) -> None:
    get_settings().worker.ready_file.unlink(missing_ok=True)
