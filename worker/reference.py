"""sessionkeeper's reference session table, for apps that adopt ours (``migrate --reference-table``)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from worker.models import UtcDateTime

INET = sa.String(45).with_variant(postgresql.INET(), "postgresql")


def reference_table(name: str = "sessions", schema: str | None = None) -> sa.Table:
    """The table our "sessionkeeper" profile maps, with the indexes every job relies on.

    ``id`` is a public, non-secret identifier (safe to show in the API); the app looks a request
    up by ``token_hash`` (SHA-256 of the cookie value), so no token is ever stored in clear.
    """
    md = sa.MetaData()
    return sa.Table(
        name,
        md,
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("token_hash", sa.LargeBinary(), nullable=False, unique=True),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False, server_default=sa.func.now()),
        sa.Column("last_activity_at", UtcDateTime()),
        sa.Column("expires_at", UtcDateTime()),
        sa.Column("ip", INET),
        sa.Column("user_agent", sa.Text()),
        sa.Column("revoked_at", UtcDateTime()),
        sa.Index(f"ix_{name}_user_id", "user_id"),
        sa.Index(f"ix_{name}_expires_at", "expires_at"),
        sa.Index(f"ix_{name}_created_at", "created_at"),
        schema=schema,
    )


def create_reference_table(conn: Connection, table: str = "sessions") -> bool:
    """Create the reference table if it is missing; True when it was created."""
    schema, _, name = table.rpartition(".")
    ref = reference_table(name, schema or None)
    if sa.inspect(conn).has_table(name, schema=schema or None):
        return False
    ref.create(conn)
    return True
