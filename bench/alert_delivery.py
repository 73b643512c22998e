"""Alert delivery throughput against a local receiver, with a bare httpx loop as the baseline.

Run by hand:  .venv/bin/python bench/alert_delivery.py [--alerts N] [--pg URL]
Creates (and drops) its own database alerts_bench_<pid> on the given PostgreSQL server.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from datetime import UTC, datetime

import httpx
import sqlalchemy as sa

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tests.integration.receiver import HANG, Receiver
from worker import db, migrate, models
from worker.alert import outbox
from worker.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--alerts", type=int, default=500)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # the log sink's lines would dominate the timing otherwise
    import structlog

    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())

    admin = sa.create_engine(db.normalize_url(args.pg), isolation_level="AUTOCOMMIT")
    name = f"alerts_bench_{os.getpid()}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = db.normalize_url(args.pg).set(database=name).render_as_string(hide_password=False)
    engine = db.make_engine(url)
    receiver = Receiver()
    try:
        migrate.upgrade(engine)
        n = args.alerts

        # baseline: the same number of POSTs, one after another, nothing recorded
        with httpx.Client() as client:
            started = time.perf_counter()
            for _ in range(n):
                client.post(receiver.url("/baseline"), content=b'{"event":"new"}')
            baseline = time.perf_counter() - started

        def run(label: str, hooks: list[dict[str, str]]) -> float:
            settings = Settings(
                database={"url": url},
                alerts={"webhooks": hooks, "deliver_batch_size": 10_000, "deliver_max_seconds": "5m"},
            )
            with engine.begin() as conn:
                conn.execute(sa.delete(models.alert_deliveries))
                for i in range(n):
                    outbox.enqueue(
                        conn,
                        alert_id=None,
                        event="new",
                        payload={
                            "rule": "user_burst",
                            "entity": str(i),
                            "observed": 55,
                            "expected": 0.4,
                            "first_seen": datetime.now(UTC),
                            "severity": "critical",
                        },
                        settings=settings,
                    )
            started = time.perf_counter()
            report = outbox.deliver_pending(engine, settings)
            seconds = time.perf_counter() - started
            figures = report.as_dict()
            print(
                f"{label:<34} {seconds:7.3f}s  claimed={figures['claimed']} delivered={figures['delivered']} "
                f"retrying={figures['retrying']} deferred={figures['deferred']}  "
                f"{seconds / baseline:5.2f}x baseline"
            )
            return seconds

        print(f"baseline: {n} bare httpx POSTs             {baseline:7.3f}s")
        run(f"{n} alerts -> log + 1 webhook", [{"name": "a", "url": receiver.url("/a"), "secret": "s"}])
        run(
            f"{n} alerts -> log + 2 webhooks",
            [
                {"name": "a", "url": receiver.url("/a"), "secret": "s"},
                {"name": "b", "url": receiver.url("/b")},
            ],
        )
        receiver.script("/hang", HANG)
        run(
            f"{n} alerts -> log + 1 ok + 1 hanging",
            [
                {"name": "a", "url": receiver.url("/a"), "secret": "s"},
                {"name": "hang", "url": receiver.url("/hang"), "timeout": "2s"},
            ],
        )
    finally:
        receiver.close()
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
