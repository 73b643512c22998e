"""Shared fixtures: a fresh PostgreSQL database per test (copied from a migrated template),
an SQLite database per test, Redis, and settings built for them.

A missing PostgreSQL or Redis is a failure, never a skip: the suite's point is real services.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from worker import db, migrate
from worker.settings import Settings, get_settings

PG_ADMIN_URL = os.environ.get("SESSIONKEEPER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get(
    "SESSIONKEEPER_TEST_REDIS",
    f"redis://127.0.0.1:6379/{os.environ.get('SESSIONKEEPER_TEST_REDIS_DB', '15')}",
)
RUN_ID = uuid.uuid4().hex[:8]


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    # No test may read the developer's own configuration or leave cached settings behind.
    for key in list(os.environ):
        if key.startswith("SESSIONKEEPER_") and not key.startswith("SESSIONKEEPER_TEST"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
    db.dispose_engines(close=True)


def _admin_engine() -> Engine:
    return sa.create_engine(
        db.normalize_url(PG_ADMIN_URL), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool
    )


def _url_for(database: str) -> str:
    return db.normalize_url(PG_ADMIN_URL).set(database=database).render_as_string(hide_password=False)


def _create_database(name: str, template: str | None = None) -> None:
    """CREATE DATABASE (as a copy of ``template``); PostgreSQL unreachable fails the test, never skips."""
    admin = _admin_engine()
    copy = f' TEMPLATE "{template}"' if template else ""
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"{copy}'))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc.orig}", pytrace=False)
    finally:
        admin.dispose()


def _drop_database(name: str) -> None:
    db.dispose_engines(close=True)
    admin = _admin_engine()
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A database migrated to head, used as the template of every test database."""
    name = f"sk_tpl_{RUN_ID}"
    _create_database(name)
    engine = db.make_engine(_url_for(name))
    migrate.upgrade(engine)
    engine.dispose()
    yield name
    _drop_database(name)


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    """URL of a fresh, migrated PostgreSQL database, dropped after the test."""
    name = f"sk_t_{RUN_ID}_{uuid.uuid4().hex[:8]}"
    _create_database(name, template=pg_template)
    yield _url_for(name)
    _drop_database(name)


@pytest.fixture
def empty_pg_url() -> Iterator[str]:
    """URL of a fresh PostgreSQL database with nothing in it (for migration tests)."""
    name = f"sk_e_{RUN_ID}_{uuid.uuid4().hex[:8]}"
    _create_database(name)
    yield _url_for(name)
    _drop_database(name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """URL of a fresh, migrated SQLite database in the test's own directory."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = db.make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture(params=["postgresql", "sqlite"])
def any_url(request: pytest.FixtureRequest) -> str:
    """The same test on PostgreSQL and on SQLite."""
    fixture = "pg_url" if request.param == "postgresql" else "sqlite_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database for this test, emptied before and after."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.flushdb()
    except redis.exceptions.ConnectionError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: {exc}", pytrace=False)
    yield REDIS_URL
    client.flushdb()
    client.close()


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings() -> SettingsFactory:
    """Settings for a test: ``make_settings(url, sessions={...}, policy={...})``."""

    def factory(url: str, **sections: Any) -> Settings:
        return Settings(database={"url": url}, **sections)

    return factory


def engine_for(settings: Settings) -> Engine:
    return db.get_engine(settings)
