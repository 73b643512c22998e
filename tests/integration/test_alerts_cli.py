"""`sessionkeeper alerts` and `alerts test`, run as the real command."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from tests.helpers import cli, cli_json
from tests.integration.receiver import Receiver
from worker import db, models
from worker.alert import webhook

pytestmark = pytest.mark.integration


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


def seed(url: str) -> None:
    now = datetime.now(UTC)
    engine = db.make_engine(url)
    try:
        with engine.begin() as conn:
            ids = []
            for i, (state, age) in enumerate([("open", 1), ("resolved", 3), ("open", 48)]):
                seen = now - timedelta(hours=age)
                ids.append(
                    conn.execute(
                        sa.insert(models.alerts)
                        .values(
                            fingerprint=f"fp{i}",
                            rule="user_burst" if i != 1 else "global_spike",
                            entity=str(40 + i) if i != 1 else "global",
                            severity="critical" if i == 0 else "warning",
                            state=state,
                            first_seen=seen,
                            last_seen=seen,
                            count=i + 1,
                            last_value=55.0,
                            details={"observed": 55, "expected": 0.4},
                        )
                        .returning(models.alerts.c.id)
                    ).scalar_one()
                )
            conn.execute(
                sa.insert(models.alert_deliveries),
                [
                    {
                        "alert_id": ids[0],
                        "sink": sink,
                        "event": "new",
                        "payload": {},
                        "status": status,
                        "next_attempt_at": now,
                        "created_at": now,
                    }
                    for sink, status in [("log", "sent"), ("ops", "pending")]
                ],
            )
    finally:
        engine.dispose()


def test_lists_alerts_with_filters(pg_url: str) -> None:
    seed(pg_url)
    env = {"SESSIONKEEPER_DATABASE__URL": pg_url}
    everything = cli_json("alerts", env=env)
    assert everything["count"] == 3
    assert [a["entity"] for a in everything["alerts"]] == ["40", "global", "42"]
    first = everything["alerts"][0]
    assert first["deliveries"] == {"sent": 1, "pending": 1, "failed": 0}
    assert first["details"] == {"observed": 55, "expected": 0.4}

    assert [a["entity"] for a in cli_json("alerts", "--open", env=env)["alerts"]] == ["40", "42"]
    assert [a["entity"] for a in cli_json("alerts", "--since", "1d", env=env)["alerts"]] == ["40", "global"]
    recent = cli_json("alerts", "--open", "--since", "2h", env=env)
    assert [a["entity"] for a in recent["alerts"]] == ["40"]

    human = cli("alerts", env=env)
    assert human.returncode == 0
    assert "user_burst" in human.stdout
    assert "1/1/0" in human.stdout


def test_bad_since_is_a_usage_error(sqlite_url: str) -> None:
    proc = cli("alerts", "--since", "last tuesday", env={"SESSIONKEEPER_DATABASE__URL": sqlite_url})
    assert proc.returncode == 2
    assert "neither a duration like 2h" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_no_alerts(sqlite_url: str) -> None:
    proc = cli("alerts", "--open", env={"SESSIONKEEPER_DATABASE__URL": sqlite_url})
    assert (proc.returncode, proc.stdout.strip()) == (0, "no alerts open")


def test_alerts_test_reports_each_sink(receiver: Receiver, tmp_path: object) -> None:
    receiver.script("/broken", 500)
    hooks = [
        {"name": "ops", "url": receiver.url("/ops"), "secret": "s3cret"},
        {"name": "broken", "url": receiver.url("/broken")},
    ]
    env = {
        "SESSIONKEEPER_ALERTS__WEBHOOKS": json.dumps(hooks),
        # no database at all: the test send must not need one
        "SESSIONKEEPER_DATABASE__URL": "postgresql://nobody@127.0.0.1:1/none",
    }
    result = cli_json("alerts", "test", env=env, expect=1)
    sinks = {s["sink"]: s for s in result["sinks"]}
    assert result["ok"] is False
    assert (sinks["log"]["ok"], sinks["ops"]["ok"], sinks["broken"]["ok"]) == (True, True, False)
    assert sinks["broken"]["status_code"] == 500
    (got,) = receiver.received("/ops")
    assert webhook.verify("s3cret", got.headers["x-sessionkeeper-signature"], got.body)

    receiver.script("/broken", 200)
    human = cli("alerts", "test", env=env)
    assert human.returncode == 0, human.stderr
    assert "ok   ops" in human.stdout
