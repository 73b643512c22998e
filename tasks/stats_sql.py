"""Every statement of the stats job, side by side, built from the session-table mapping.

Per run the session table is read three times: one (parallel) scan for the global counts, one
for the idle-time figures, one grouped by user into a transaction-scoped temporary table. Three
small statements then work on that table alone (about one row per active user): an upsert that
writes only the users whose figures changed, a delete of the users that vanished, and the
distribution of sessions per user. Nothing is fetched into Python but single rows.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from worker import models
from worker.sessiontable import SessionTable
from worker.settings import PolicySettings, StatsSettings

#: the per-user aggregate of one run: dropped at commit (PostgreSQL) or by the job (SQLite)
USER_AGG = "sessionkeeper_user_agg"
#: the figures of a user_stats row, compared to decide whether the row is rewritten
USER_FIGURES = (
    "active_sessions",
    "created_24h",
    "distinct_ips",
    "distinct_user_agents",
    "oldest_created_at",
    "newest_created_at",
    "last_activity_at",
)
PERCENTILES = {"per_user_p50": 0.5, "per_user_p95": 0.95, "per_user_p99": 0.99}
RECENT = timedelta(hours=24)


@dataclass
class Plan:
    """What this mapping lets the job compute, and why each missing figure is missing."""

    st: SessionTable
    now: datetime
    policy: PolicySettings
    config: StatsSettings
    unavailable: dict[str, str] = field(default_factory=dict)
    #: seconds per statement, so a slow run says which step to EXPLAIN
    step_seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        self.step_seconds[name] = round(time.monotonic() - started, 3)

    @property
    def postgres(self) -> bool:
        return self.st.dialect == "postgresql"

    @property
    def active(self) -> sa.ColumnElement[bool]:
        return self.st.active_clause(self.now, self.policy)

    def missing(self, figure: str, reason: str) -> None:
        self.unavailable[figure] = reason


def _text_key(plan: Plan, expr: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    # Byte order ("C") sorts several times faster than a linguistic collation and cannot change
    # which values are equal (deterministic collations compare equal only identical strings).
    if plan.postgres and isinstance(expr.type, sa.String):
        return expr.collate("C")
    return expr


# --- global figures: one scan ---------------------------------------------------------------


def global_figures(plan: Plan, previous: datetime | None) -> sa.Select[Any]:
    """total, active, pending purge, NULL expiry, oldest purgeable expiry, created since previous."""
    st, now, active = plan.st, plan.now, plan.active
    cols: list[sa.ColumnElement[Any]] = [
        sa.func.count().label("total_rows"),
        sa.func.count().filter(active).label("active"),
    ]
    reasons = st.purge_reasons(now, plan.policy)
    if reasons:
        cols.append(sa.func.count().filter(sa.or_(*reasons.values())).label("expired_pending"))
    else:
        plan.missing("expired_pending", "no purge rule applies: map expires_at or revoked, or set a timeout")
    expires = st.c("expires_at")
    if expires is not None:
        cols.append(sa.func.count().filter(expires.is_(None)).label("null_expiry"))
        purgeable = st.expired_clause(now - plan.policy.grace)
        cols.append(sa.func.min(expires).filter(purgeable).label("oldest_purgeable_expiry"))
    else:
        for figure in ("null_expiry", "purge_lag_seconds"):
            plan.missing(figure, "no expires_at column mapped")
    created = st.c("created_at")
    if created is None:
        plan.missing("created_since_previous", "no created_at column mapped")
    elif previous is None:
        plan.missing("created_since_previous", "first snapshot: no previous one to count from")
    else:
        # Half-open [previous, now): consecutive snapshots tile time with no gap and no overlap.
        window = sa.and_(
            created >= sa.bindparam(None, st.time_value("created_at", previous), type_=created.type),
            created < sa.bindparam(None, st.time_value("created_at", now), type_=created.type),
        )
        cols.append(sa.func.count().filter(window).label("created_since_previous"))
    if st.c("last_activity_at") is None:
        for figure in ("idle_mean_seconds", "idle_p95_seconds"):
            plan.missing(figure, "no last_activity_at column mapped")
    return sa.select(*cols).select_from(st.table)


def idle_figures(plan: Plan) -> tuple[sa.Select[Any], sa.ColumnElement[Any], sa.Select[Any]]:
    """Mean (and on PostgreSQL p95) idle seconds of active sessions, and the rows for an offset p95.

    Its own statement, not a FILTER in global_figures: an ordered-set aggregate there would
    keep the whole global scan from running in parallel.
    """
    st = plan.st
    idle = st.age_seconds("last_activity_at", plan.now).label("v")
    where = (plan.active, st.need("last_activity_at").is_not(None))
    cols: list[sa.ColumnElement[Any]] = [
        sa.func.count().label("idle_count"),
        sa.func.avg(idle).label("idle_mean_seconds"),
    ]
    if plan.postgres:
        cols.append(sa.func.percentile_cont(0.95).within_group(idle).label("idle_p95_seconds"))
    return sa.select(*cols).where(*where), idle, sa.select(idle).where(*where)


# --- per-user figures: one scan into a temporary table --------------------------------------


def user_agg_table(plan: Plan) -> sa.Table:
    """The temporary per-user aggregate; its time columns already in user_stats' storage form."""
    when: sa.types.TypeEngine[Any] = sa.DateTime(timezone=True) if plan.postgres else sa.Text()
    return sa.Table(
        USER_AGG,
        sa.MetaData(),
        # SQLite probes it by key (NOT EXISTS, joins); PostgreSQL hashes it, so no index to build.
        sa.Column("user_id", sa.Text(), primary_key=not plan.postgres, nullable=False),
        sa.Column("active_sessions", sa.Integer(), nullable=False),
        sa.Column("created_24h", sa.Integer()),
        sa.Column("distinct_ips", sa.Integer()),
        sa.Column("distinct_user_agents", sa.Integer()),
        sa.Column("oldest_created_at", when),
        sa.Column("newest_created_at", when),
        sa.Column("last_activity_at", when),
        prefixes=["TEMPORARY"],
        postgresql_on_commit="DROP",
    )


def fill_user_agg(plan: Plan, agg: sa.Table) -> sa.Insert:
    """INSERT INTO agg SELECT user, figures FROM sessions WHERE active GROUP BY user.

    Every figure is over active rows only, so the rule is evaluated once per row in WHERE and
    no aggregate needs a FILTER (each FILTER re-evaluates it: several times slower).
    """
    st, now = plan.st, plan.now
    user = st.user_expr
    if user is None:
        raise ValueError("fill_user_agg needs a mapping with a user column")
    key = _text_key(plan, sa.cast(user, sa.Text()))

    def distinct(key_name: str, figure: str) -> sa.ColumnElement[Any]:
        col = st.c(key_name)
        if col is None:
            plan.missing(f"user.{figure}", f"no {key_name} column mapped")
            return sa.null()
        if not plan.config.distinct_counts:
            plan.missing(f"user.{figure}", "disabled by stats.distinct_counts = false")
            return sa.null()
        return sa.func.count(sa.distinct(_text_key(plan, col)))

    def when(key_name: str, fn: Any, figure: str) -> sa.ColumnElement[Any]:
        col = st.c(key_name)
        if col is None:
            plan.missing(f"user.{figure}", f"no {key_name} column mapped")
            return sa.null()
        return st.utc_expr(key_name, fn(col))

    created = st.c("created_at")
    if created is None:
        plan.missing("user.created_24h", "no created_at column mapped")
        recent: sa.ColumnElement[Any] = sa.null()
    else:
        cutoff = st.time_value("created_at", now - RECENT)
        recent = sa.func.count().filter(created >= sa.bindparam(None, cutoff, type_=created.type))
    values = [
        key.label("user_id"),
        sa.func.count().label("active_sessions"),
        recent.label("created_24h"),
        distinct("ip", "distinct_ips").label("distinct_ips"),
        distinct("user_agent", "distinct_user_agents").label("distinct_user_agents"),
        when("created_at", sa.func.min, "oldest_created_at").label("oldest_created_at"),
        when("created_at", sa.func.max, "newest_created_at").label("newest_created_at"),
        when("last_activity_at", sa.func.max, "last_activity_at").label("last_activity_at"),
    ]
    query = sa.select(*values).where(plan.active, user.is_not(None)).group_by(key)
    return (
        sa.insert(agg).from_select([v.name for v in values], query).execution_options(preserve_rowcount=True)
    )


def upsert_user_stats(plan: Plan, agg: sa.Table) -> sa.Insert:
    """Write the users whose figures changed (new users too); unchanged rows are not touched.

    The outer join drops unchanged users before the insert, so an unchanged run writes nothing
    and never reaches the conflict path; ON CONFLICT ... WHERE keeps the statement exact anyway.
    """
    us = models.user_stats
    changed = sa.or_(us.c.user_id.is_(None), *(us.c[f].is_distinct_from(agg.c[f]) for f in USER_FIGURES))
    source = (
        sa.select(
            agg.c.user_id,
            *(agg.c[f] for f in USER_FIGURES),
            sa.literal(plan.now, models.UtcDateTime()).label("updated_at"),
        )
        .select_from(agg.outerjoin(us, us.c.user_id == agg.c.user_id))
        .where(changed)
    )
    insert = postgresql.insert(us) if plan.postgres else sqlite.insert(us)
    insert = insert.from_select(["user_id", *USER_FIGURES, "updated_at"], source)
    return insert.on_conflict_do_update(
        index_elements=[us.c.user_id],
        set_={f: insert.excluded[f] for f in (*USER_FIGURES, "updated_at")},
        where=sa.or_(*(us.c[f].is_distinct_from(insert.excluded[f]) for f in USER_FIGURES)),
    ).execution_options(preserve_rowcount=True)


def delete_vanished_users(agg: sa.Table) -> sa.Delete:
    """Remove users with no active session left (absent from this run's aggregate)."""
    us = models.user_stats
    present = sa.select(sa.literal(1)).select_from(agg).where(agg.c.user_id == us.c.user_id)
    return sa.delete(us).where(~sa.exists(present))


def user_distribution(plan: Plan, agg: sa.Table) -> sa.Select[Any]:
    """users_active, max, and on PostgreSQL the per-user percentiles, over the aggregate."""
    n = agg.c.active_sessions
    cols: list[sa.ColumnElement[Any]] = [
        sa.func.count().label("users_active"),
        sa.func.max(n).label("per_user_max"),
    ]
    if plan.postgres:
        cols += [sa.func.percentile_cont(p).within_group(n).label(name) for name, p in PERCENTILES.items()]
    return sa.select(*cols).select_from(agg)


def percentiles_by_offset(
    conn: Connection, value: sa.ColumnElement[Any], query: sa.Select[Any], count: int, ps: dict[str, float]
) -> dict[str, float | None]:
    """percentile_cont (linear interpolation) where the database has none: two rows per percentile."""
    out: dict[str, float | None] = {}
    for name, p in ps.items():
        if count == 0:
            out[name] = None
            continue
        position = p * (count - 1)
        low = math.floor(position)
        ordered = query.order_by(value).offset(low).limit(2).subquery()
        pair = [float(v) for v in conn.execute(sa.select(ordered.c[value.name])).scalars()]
        out[name] = pair[0] + (position - low) * ((pair[1] if len(pair) > 1 else pair[0]) - pair[0])
    return out


# --- the rest -------------------------------------------------------------------------------


def table_bytes(qualified: str) -> sa.Select[int, int]:
    """Heap (with TOAST) and index bytes of the session table, summed over partitions if any.

    ``qualified`` is the table name as the dialect quotes it, passed as a parameter to to_regclass.
    """
    table = sa.func.to_regclass(qualified)
    tree = sa.func.pg_partition_tree(table).table_valued("relid")
    # The tree is empty for a plain table; for a partitioned one it lists the (sizeless) root too.
    rel = sa.union(sa.select(tree.c.relid), sa.select(table.label("relid"))).subquery()
    return sa.select(
        sa.cast(sa.func.sum(sa.func.pg_table_size(rel.c.relid)), sa.BigInteger).label("table_bytes"),
        sa.cast(sa.func.sum(sa.func.pg_indexes_size(rel.c.relid)), sa.BigInteger).label("index_bytes"),
    ).select_from(rel)


def previous_snapshot_time() -> sa.Select[Any]:
    s = models.stats_snapshots
    return sa.select(s.c.taken_at).order_by(s.c.taken_at.desc(), s.c.id.desc()).limit(1)
