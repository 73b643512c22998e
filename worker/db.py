"""Engines and connections, driver-error translation, and the few dialect helpers jobs share.

On PostgreSQL our tables live in schema ``sessionkeeper``. On SQLite the same name is an
ATTACHed database file beside the main one (``app.db`` -> ``app.sessionkeeper.db``), so every
query says ``sessionkeeper.<table>`` on both and never collides with the application's tables.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from worker.errors import DatabaseUnavailable
from worker.settings import Settings

SCHEMA = "sessionkeeper"

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def normalize_url(raw: str) -> URL:
    """Accept postgres://, postgresql:// and sqlite:// URLs; PostgreSQL always through psycopg 3."""
    url = make_url(raw.replace("postgres://", "postgresql://", 1) if raw.startswith("postgres://") else raw)
    if url.get_backend_name() == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return url


def sqlite_state_path(url: URL) -> str:
    """Where our own tables live for an SQLite database: a sibling file, or memory."""
    database = url.database or ""
    if database in {"", ":memory:"} or database.startswith("file::memory:"):
        return ":memory:"
    path = Path(database)
    return str(path.with_name(f"{path.stem}.{SCHEMA}{path.suffix or '.db'}"))


def make_engine(raw_url: str, *, connect_timeout: float = 5.0, pool_size: int = 5) -> Engine:
    """Create an engine with our connection settings (not cached: see get_engine)."""
    url = normalize_url(raw_url)
    if url.get_backend_name() == "sqlite":
        engine = sa.create_engine(url, connect_args={"timeout": 30})
        state = sqlite_state_path(url)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # pysqlite's implicit transactions would break ATTACH and our own BEGIN handling.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA busy_timeout = 30000")
            cur.execute("PRAGMA foreign_keys = ON")
            cur.execute(f"ATTACH DATABASE ? AS {SCHEMA}", (state,))
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN")

        return engine
    return sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        connect_args={"connect_timeout": max(1, int(connect_timeout)), "application_name": "sessionkeeper"},
    )


def get_engine(settings: Settings, *, replica: bool = False) -> Engine:
    """The process's engine for the configured database (or its replica), created once."""
    source = (
        settings.database.replica_url if replica and settings.database.replica_url else settings.database.url
    )
    raw = source.get_secret_value()
    with _engines_lock:
        engine = _engines.get(raw)
        if engine is None:
            engine = make_engine(
                raw,
                connect_timeout=settings.database.connect_timeout.total_seconds(),
                pool_size=settings.database.pool_size,
            )
            _engines[raw] = engine
        return engine


def dispose_engines(*, close: bool = False) -> None:
    """Forget every engine's pooled connections.

    After fork (``close=False``) a child must never reuse, nor close, its parent's sockets;
    tests and shutdown pass ``close=True`` to really close them.
    """
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose(close=close)
        _engines.clear()


def is_postgres(bind: Engine | Connection) -> bool:
    return bind.dialect.name == "postgresql"


def safe_url(engine: Engine | Connection) -> str:
    """The URL with its password hidden, for messages."""
    engine = engine if isinstance(engine, Engine) else engine.engine
    return engine.url.render_as_string(hide_password=True)


def _describe(exc: DBAPIError) -> str:
    text = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
    return text[:300]


@contextlib.contextmanager
def translate_errors(bind: Engine | Connection | None = None) -> Iterator[None]:
    """Turn "cannot connect" driver errors into DatabaseUnavailable; the one place that does."""
    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        if exc.connection_invalidated or _is_connection_error(exc):
            where = f" at {safe_url(bind)}" if bind is not None else ""
            raise DatabaseUnavailable(f"database unreachable{where}: {_describe(exc)}") from exc
        raise


def _is_connection_error(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower() if exc.orig is not None else ""
    markers = (
        "connection refused",
        "could not connect",
        "connection failed",
        "server closed the connection",
        "terminating connection",
        "the database system is",
        "no such host",
        "timeout expired",
        "unable to open database file",
        "connection is closed",
        "consuming input failed",
        "does not exist",
    )
    return any(m in text for m in markers)


def lock_key(*parts: str) -> int:
    """A stable signed 64-bit advisory-lock key for a job and the table it works on."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def try_advisory_xact_lock(conn: Connection, *parts: str) -> bool:
    """Take a transaction-level advisory lock on PostgreSQL (session locks misbehave with pools).

    On SQLite the database-level write lock serialises writers, so this always succeeds there.
    """
    if not is_postgres(conn):
        return True
    got = conn.execute(sa.select(sa.func.pg_try_advisory_xact_lock(lock_key(*parts)))).scalar()
    return bool(got)
