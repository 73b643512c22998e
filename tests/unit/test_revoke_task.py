"""The revocation task's delivery options and the outbox beat entry, on the real Celery app."""

from __future__ import annotations

from tasks import revoke
from worker.celery_app import app


def test_only_the_revocation_task_rejects_on_worker_lost() -> None:
    app.loader.import_default_modules()
    task = app.tasks["sessionkeeper.revoke"]
    assert task.acks_late is True and task.reject_on_worker_lost is True
    assert task.ignore_result is True
    others = [t for name, t in app.tasks.items() if name.startswith("sessionkeeper.") and t is not task]
    assert others and not any(t.reject_on_worker_lost for t in others)


def test_outbox_sweep_is_scheduled() -> None:
    import celeryconfig

    entry = celeryconfig.beat_schedule["outbox"]
    assert entry["task"] == "sessionkeeper.outbox_sweep" and entry["options"]["expires"]
    assert "sessionkeeper.outbox_sweep" in app.tasks


def test_request_hash_tells_bodies_apart() -> None:
    same = revoke.request_hash("u1", None, None)
    assert same == revoke.request_hash("u1", None, None)
    assert len({same, revoke.request_hash("u1", "s", None), revoke.request_hash("u1", None, "")}) == 3
