"""Every statement the anomaly scan runs, in one place, so they can be read and EXPLAINed together.

The application's table is only ever read, and only by ``created_at`` range (an index the
`check` command recommends), so a scan's cost follows the number of new sessions, not the
table size. Everything else reads and writes our own tables.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from worker import db, models
from worker.sessiontable import SessionTable

R = models.creation_rollups
S = models.scan_state
A = models.alerts
#: rows per array-upsert statement on PostgreSQL
_PG_CHUNK = 20_000


# --------------------------------------------------------------------------- scan state


def read_state(conn: Connection, table_key: str) -> dict[str, Any] | None:
    """The scan_state row of this session table, or None before the first scan."""
    row = conn.execute(sa.select(S).where(S.c.table_key == table_key)).first()
    return dict(row._mapping) if row is not None else None


def save_state(conn: Connection, table_key: str, values: dict[str, Any]) -> None:
    """Insert or update the scan_state row (the caller holds the scan lock)."""
    updated = conn.execute(sa.update(S).where(S.c.table_key == table_key).values(**values)).rowcount
    if not updated:
        conn.execute(sa.insert(S).values(table_key=table_key, **values))


# --------------------------------------------------------------------------- the app's table


def new_sessions(
    conn: Connection, st: SessionTable, start: datetime, end: datetime
) -> Iterator[tuple[Any, Any, Any]]:
    """(created_at, user, ip) of sessions created in [start, end), streamed.

    Raw values: the caller converts created_at with ``st.to_datetime``, whatever its kind.
    """
    created = st.need("created_at")
    user = st.user_expr
    ip = st.c("ip")
    columns = [
        created,
        (user if user is not None else sa.null()).label("user"),
        (sa.cast(ip, sa.Text) if ip is not None else sa.null()).label("ip"),
    ]
    query = sa.select(*columns).where(
        created >= sa.bindparam("start", st.time_value("created_at", start), type_=created.type),
        created < sa.bindparam("end", st.time_value("created_at", end), type_=created.type),
    )
    # Statement-level options: Connection.execution_options would stream every later statement.
    result = conn.execute(query.execution_options(stream_results=True, yield_per=5000))
    for row in result:
        yield row[0], row[1], row[2]


def _minute_expr(st: SessionTable) -> sa.ColumnElement[Any]:
    """created_at truncated to its minute, as timestamptz, whatever the column's kind.

    Literal columns, not bind parameters, so the same expression renders identically in the
    SELECT list and the GROUP BY.
    """
    col = st.need("created_at")
    kind = st.mapping.time_kinds["created_at"]
    if kind == "epoch_seconds":
        return sa.func.to_timestamp(col - col % sa.literal_column("60"))
    if kind == "epoch_millis":
        return sa.func.to_timestamp((col - col % sa.literal_column("60000")) / sa.literal_column("1000"))
    truncated = sa.func.date_trunc(sa.literal_column("'minute'"), col)
    if kind == "timestamp":
        return sa.func.timezone(sa.literal_column("'UTC'"), truncated)
    return truncated


def rollup_in_database(
    conn: Connection, st: SessionTable, start: datetime, end: datetime, *, max_ip_users: int
) -> tuple[int, int]:
    """PostgreSQL fast path of the roll-up: aggregate and upsert in the server, nothing fetched.

    Three INSERT ... SELECT ... GROUP BY ... ON CONFLICT statements (global, user, ip); returns
    (sessions read, rollup rows written). The portable path (SQLite) aggregates in Python.
    """
    created = st.need("created_at")
    in_range = sa.and_(
        created >= sa.bindparam("start", st.time_value("created_at", start), type_=created.type),
        created < sa.bindparam("end", st.time_value("created_at", end), type_=created.type),
    )
    minute = _minute_expr(st)
    target = ["scope", "entity", "minute", "count", "users"]
    selects = [
        sa.select(sa.literal_column("'global'"), sa.literal_column("''"), minute, sa.func.count(), sa.null())
        .select_from(st.table)
        .where(in_range)
        .group_by(minute)
    ]
    user = st.user_expr
    user_text = sa.cast(user, sa.Text) if user is not None else None
    if user_text is not None:
        selects.append(
            sa.select(sa.literal_column("'user'"), user_text, minute, sa.func.count(), sa.null())
            .select_from(st.table)
            .where(in_range, user_text.is_not(None))
            .group_by(user_text, minute)
        )
    ip = st.c("ip")
    if ip is not None:
        address = sa.func.host(ip) if isinstance(ip.type, postgresql.INET) else sa.cast(ip, sa.Text)
        users: Any = sa.null()
        if user_text is not None:
            agg = sa.type_coerce(
                sa.func.array_agg(sa.distinct(user_text)).filter(user_text.is_not(None)),
                postgresql.ARRAY(sa.Text),
            )
            users = sa.func.to_jsonb(agg[1:max_ip_users])
        selects.append(
            sa.select(sa.literal_column("'ip'"), address, minute, sa.func.count(), users)
            .select_from(st.table)
            .where(in_range, ip.is_not(None))
            .group_by(address, minute)
        )
    written = 0
    for select in selects:
        stmt = _on_conflict(postgresql.insert(R).from_select(target, select), sa.func.greatest)
        # SQLAlchemy leaves an INSERT's rowcount unset unless asked to keep it.
        written += conn.execute(stmt.execution_options(preserve_rowcount=True)).rowcount
    read = conn.execute(sa.select(sa.func.count()).select_from(st.table).where(in_range)).scalar_one()
    return int(read), written


def earliest_created(conn: Connection, st: SessionTable, start: datetime, end: datetime) -> datetime | None:
    """The oldest created_at in [start, end) (one index probe), for the history start."""
    created = st.need("created_at")
    raw = conn.execute(
        sa.select(sa.func.min(created)).where(
            created >= sa.bindparam("start", st.time_value("created_at", start), type_=created.type),
            created < sa.bindparam("end", st.time_value("created_at", end), type_=created.type),
        )
    ).scalar()
    return st.to_datetime("created_at", raw)


def oldest_expired(conn: Connection, st: SessionTable, cutoff: datetime) -> datetime | None:
    """The earliest expiry among rows expired before ``cutoff`` (index on expires_at: one probe)."""
    expires = st.need("expires_at")
    raw = conn.execute(sa.select(sa.func.min(expires)).where(st.expired_clause(cutoff))).scalar()
    return st.to_datetime("expires_at", raw)


def count_expired(conn: Connection, st: SessionTable, cutoff: datetime, *, limit: int) -> int:
    """How many rows expired before ``cutoff``, counting at most ``limit`` (bounded cost)."""
    inner = sa.select(sa.literal(1)).select_from(st.table).where(st.expired_clause(cutoff)).limit(limit)
    return int(conn.execute(sa.select(sa.func.count()).select_from(inner.subquery())).scalar_one())


# --------------------------------------------------------------------------- rollups


def _on_conflict(stmt: Any, bigger: Any) -> Any:
    # Re-reading the lateness margin recomputes whole minutes: keep the larger count, so a
    # re-read is idempotent and rows purged since the first read never shrink the baseline.
    # Only a larger count replaces the row (and its users, read from the same larger set), so
    # an unchanged re-read minute is not rewritten at all (no dead tuple, no WAL).
    return stmt.on_conflict_do_update(
        index_elements=[R.c.scope, R.c.entity, R.c.minute],
        set_={"count": bigger(R.c.count, stmt.excluded.count), "users": stmt.excluded.users},
        where=R.c.count < stmt.excluded.count,
    )


def _pg_upsert() -> Any:
    """PostgreSQL fast path: one statement over five arrays (unnest), compiled once and cached.

    A multi-row VALUES costs a fresh compilation per chunk and an executemany a round trip
    per row; both were several seconds for a scan's tens of thousands of rows.
    """
    src = (
        sa.func.unnest(
            sa.bindparam("scopes", type_=postgresql.ARRAY(sa.Text)),
            sa.bindparam("entities", type_=postgresql.ARRAY(sa.Text)),
            sa.bindparam("minutes", type_=postgresql.ARRAY(sa.DateTime(timezone=True))),
            sa.bindparam("counts", type_=postgresql.ARRAY(sa.Integer)),
            sa.bindparam("users", type_=postgresql.ARRAY(sa.Text)),
        )
        .table_valued("scope", "entity", "minute", "count", "users")
        .render_derived(name="src")
    )
    select = sa.select(
        src.c.scope, src.c.entity, src.c.minute, src.c.count, sa.cast(src.c.users, postgresql.JSONB)
    )
    stmt = postgresql.insert(R).from_select(["scope", "entity", "minute", "count", "users"], select)
    return _on_conflict(stmt, sa.func.greatest)


def upsert_rollups(conn: Connection, rows: Sequence[dict[str, Any]]) -> int:
    """Write per-minute rollup rows {scope, entity, minute, count, users}; returns rows written."""
    if not rows:
        return 0
    if db.is_postgres(conn):
        for start in range(0, len(rows), _PG_CHUNK):
            chunk = rows[start : start + _PG_CHUNK]
            conn.execute(
                _PG_UPSERT,
                {
                    "scopes": [r["scope"] for r in chunk],
                    "entities": [r["entity"] for r in chunk],
                    "minutes": [r["minute"] for r in chunk],
                    "counts": [r["count"] for r in chunk],
                    "users": [None if r["users"] is None else json.dumps(r["users"]) for r in chunk],
                },
            )
        return len(rows)
    # SQLite runs in-process: executemany has no round trips to save.
    conn.execute(_on_conflict(sqlite.insert(R), sa.func.max), list(rows))
    return len(rows)


_PG_UPSERT = _pg_upsert()


def global_minutes(conn: Connection, ranges: Sequence[tuple[datetime, datetime]]) -> dict[datetime, int]:
    """Site-wide count per minute within the given [start, end) ranges; empty minutes absent.

    The baseline needs about 1,500 of a week's 10,080 minutes (the trailing day and the same
    quarter hour on each earlier day), so only those are read.
    """
    query = sa.select(R.c.minute, R.c.count).where(
        R.c.scope == "global",
        R.c.entity == "",
        sa.or_(*(sa.and_(R.c.minute >= a, R.c.minute < b) for a, b in ranges)),
    )
    return {m: int(c) for m, c in conn.execute(query)}


def entity_totals(
    conn: Connection, scope: str, start: datetime, end: datetime, *, at_least: int
) -> dict[str, int]:
    """Entities of ``scope`` with at least ``at_least`` sessions in [start, end), and their totals."""
    total = sa.func.sum(R.c.count)
    query = (
        sa.select(R.c.entity, total)
        .where(R.c.scope == scope, R.c.minute >= start, R.c.minute < end)
        .group_by(R.c.entity)
        .having(total >= at_least)
    )
    return {e: int(n) for e, n in conn.execute(query)}


def user_history(
    conn: Connection, users: Iterable[str], start: datetime, end: datetime
) -> dict[str, tuple[int, datetime]]:
    """For each user: sessions in [start, end) and the first minute seen there."""
    wanted = list(users)
    if not wanted:
        return {}
    query = (
        sa.select(R.c.entity, sa.func.sum(R.c.count), sa.func.min(R.c.minute))
        .where(R.c.scope == "user", R.c.entity.in_(wanted), R.c.minute >= start, R.c.minute < end)
        .group_by(R.c.entity)
    )
    out: dict[str, tuple[int, datetime]] = {}
    for entity, count, first in conn.execute(query):
        first_dt = models.UtcDateTime().process_result_value(first, conn.dialect)
        if first_dt is not None:
            out[entity] = (int(count), first_dt)
    return out


def population_counts(conn: Connection, start: datetime, end: datetime) -> list[int]:
    """Sessions per user in [start, end), one number per user seen (for the population prior)."""
    query = (
        sa.select(sa.func.sum(R.c.count))
        .where(R.c.scope == "user", R.c.minute >= start, R.c.minute < end)
        .group_by(R.c.entity)
    )
    return [int(n) for (n,) in conn.execute(query)]


def entity_minutes(
    conn: Connection, scope: str, entities: Iterable[str], start: datetime, end: datetime
) -> list[tuple[str, datetime, int, list[str] | None]]:
    """Rollup rows (entity, minute, count, users) of some entities in [start, end)."""
    wanted = list(entities)
    if not wanted:
        return []
    query = sa.select(R.c.entity, R.c.minute, R.c.count, R.c.users).where(
        R.c.scope == scope, R.c.entity.in_(wanted), R.c.minute >= start, R.c.minute < end
    )
    return [(e, m, int(c), u) for e, m, c, u in conn.execute(query)]


# --------------------------------------------------------------------------- alerts


def alerts_for_lifecycle(conn: Connection, fingerprints: Iterable[str]) -> list[dict[str, Any]]:
    """Open alerts (they may need resolving) and any alert whose fingerprint fired now."""
    wanted = list(fingerprints)
    condition = A.c.state == "open"
    if wanted:
        condition = sa.or_(condition, A.c.fingerprint.in_(wanted))
    return [dict(r._mapping) for r in conn.execute(sa.select(A).where(condition))]


def insert_alert(conn: Connection, values: dict[str, Any]) -> int:
    """A new alert row; returns its id."""
    return int(conn.execute(sa.insert(A).values(**values).returning(A.c.id)).scalar_one())


def update_alert(conn: Connection, alert_id: int, values: dict[str, Any]) -> None:
    conn.execute(sa.update(A).where(A.c.id == alert_id).values(**values))


# --------------------------------------------------------------------------- operational inputs


def snapshots_since(conn: Connection, since: datetime) -> list[dict[str, Any]]:
    """Global stats snapshots taken since ``since``, oldest first."""
    t = models.stats_snapshots
    query = (
        sa.select(t.c.taken_at, t.c.total_rows, t.c.table_bytes, t.c.index_bytes)
        .where(t.c.taken_at >= since)
        .order_by(t.c.taken_at)
    )
    return [dict(r._mapping) for r in conn.execute(query)]
