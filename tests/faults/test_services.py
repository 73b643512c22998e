"""The private services the fault tests use really stop and start."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.faults.services import PrivatePostgres, PrivateRedis
from worker import db
from worker.errors import DatabaseUnavailable

pytestmark = pytest.mark.acceptance


def test_private_postgres_stops_and_restarts() -> None:
    pg = PrivatePostgres()
    pg.start()
    try:
        url = pg.create_database("app")
        engine = db.make_engine(url, connect_timeout=2)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar() == 1
        pg.stop()
        engine.dispose()
        with pytest.raises(DatabaseUnavailable), db.translate_errors(engine), engine.connect():
            pass
        pg.start()
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar() == 1
        engine.dispose()
    finally:
        pg.destroy()


def test_private_redis_stops_and_restarts(tmp_path: Path) -> None:
    import redis

    server = PrivateRedis(tmp_path / "redis")
    server.start()
    client = redis.Redis.from_url(server.url(), socket_connect_timeout=1)
    assert client.ping()
    server.stop()
    with pytest.raises(redis.exceptions.ConnectionError):
        client.ping()
    server.start()
    assert client.ping()
    server.stop()
