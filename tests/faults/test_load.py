"""Mixed load on the whole stack (API, worker, beat): every accepted job succeeds, no 5xx, counts reconcile."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.acceptance.stack import stack
from tests.faults.load import BUSY_BEAT, run_load
from tests.helpers import cli_json

pytestmark = pytest.mark.acceptance

#: CI runs a short burst; bench/load.py runs the same code for minutes
SECONDS = float(os.environ.get("SESSIONKEEPER_TEST_LOAD_SECONDS", "15"))
INSERT_RATE = float(os.environ.get("SESSIONKEEPER_TEST_LOAD_INSERT_RATE", "200"))
REVOKE_RATE = float(os.environ.get("SESSIONKEEPER_TEST_LOAD_REVOKE_RATE", "5"))


def test_mixed_load_loses_nothing_and_reconciles(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    env = {"SESSIONKEEPER_DATABASE__URL": pg_url, "SESSIONKEEPER_BROKER__URL": redis_url, **BUSY_BEAT}
    cli_json("migrate", "--reference-table", env=env)
    with stack(tmp_path, env) as s:
        s.start_worker(concurrency=2)
        s.start_api()
        s.start_beat()
        report = run_load(s, pg_url, seconds=SECONDS, insert_rate=INSERT_RATE, revoke_rate=REVOKE_RATE)
        logs = s.log("worker")
    summary = report.as_dict()
    print("load summary:", summary)
    assert report.requests > 10, summary
    assert report.server_errors == 0, summary
    assert not report.other_errors, report.other_errors[:5]
    assert report.accepted == report.requests == len(report.job_ids), summary
    assert report.jobs == {"succeeded": report.accepted}, (summary, logs)
    assert report.purge_runs.get("succeeded", 0) >= 2, (summary, logs)
    assert report.scan_runs.get("succeeded", 0) >= 2, (summary, logs)
    assert report.purge_runs.get("failed", 0) == 0 and report.scan_runs.get("failed", 0) == 0, (summary, logs)
    assert report.inserted == report.present + report.purged + report.revoked, summary
