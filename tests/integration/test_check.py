"""`sessionkeeper check` on broken mappings: exit 2 naming the table or column, before any work."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from tests.helpers import cli, cli_json

pytestmark = pytest.mark.integration


def _exec(url: str, *statements: str) -> None:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        for s in statements:
            conn.execute(sa.text(s))
    engine.dispose()


def test_missing_column_exits_2_naming_it(pg_url: str) -> None:
    _exec(pg_url, "CREATE TABLE user_session (id text primary key, user_id text, expires_at timestamptz)")
    env = {
        "SESSIONKEEPER_DATABASE__URL": pg_url,
        "SESSIONKEEPER_SESSIONS__PROFILE": "lucia",
        "SESSIONKEEPER_SESSIONS__CREATED_AT": "created",
    }
    proc = cli("check", env=env)
    assert proc.returncode == 2
    assert "sessions.created_at" in proc.stderr and "'created'" in proc.stderr
    assert "Traceback" not in proc.stderr
    as_json = cli("check", "--json", env=env)
    assert as_json.returncode == 2
    assert json.loads(as_json.stdout)["error"]["code"] == "mapping_mismatch"


def test_missing_table_exits_2_naming_it(pg_url: str) -> None:
    proc = cli(
        "check",
        env={
            "SESSIONKEEPER_DATABASE__URL": pg_url,
            "SESSIONKEEPER_SESSIONS__TABLE": "nope",
            "SESSIONKEEPER_SESSIONS__ID": "id",
        },
    )
    assert proc.returncode == 2
    assert "'nope'" in proc.stderr


def test_naive_column_declared_timestamptz_is_refused_with_the_fix(pg_url: str) -> None:
    _exec(pg_url, "CREATE TABLE s (id int primary key, uid int, exp timestamp)")
    env = {
        "SESSIONKEEPER_DATABASE__URL": pg_url,
        "SESSIONKEEPER_SESSIONS__TABLE": "s",
        "SESSIONKEEPER_SESSIONS__ID": "id",
        "SESSIONKEEPER_SESSIONS__USER_ID": "uid",
        "SESSIONKEEPER_SESSIONS__EXPIRES_AT": "exp",
    }
    proc = cli("check", env=env)
    assert proc.returncode == 2
    assert 'time_kinds.expires_at = "timestamp"' in proc.stderr
    env["SESSIONKEEPER_SESSIONS__TIME_KIND"] = "timestamp"
    report = cli_json("check", env=env)
    assert report["columns"]["expires_at"]["kind"] == "timestamp"


def test_epoch_and_boolean_columns_are_checked(pg_url: str) -> None:
    _exec(pg_url, "CREATE TABLE s (id text primary key, owner text, exp bigint, active boolean, made bigint)")
    env = {
        "SESSIONKEEPER_DATABASE__URL": pg_url,
        "SESSIONKEEPER_SESSIONS__TABLE": "s",
        "SESSIONKEEPER_SESSIONS__ID": "id",
        "SESSIONKEEPER_SESSIONS__USER_ID": "owner",
        "SESSIONKEEPER_SESSIONS__EXPIRES_AT": "exp",
        "SESSIONKEEPER_SESSIONS__CREATED_AT": "made",
        "SESSIONKEEPER_SESSIONS__REVOKED": "active",
        "SESSIONKEEPER_SESSIONS__REVOKED_WHEN": "false",
        "SESSIONKEEPER_SESSIONS__TIME_KIND": "epoch_seconds",
    }
    report = cli_json("check", env=env)
    assert {c["name"] for c in report["capabilities"] if c["available"]} >= {"purge_revoked", "creation_rate"}
    env["SESSIONKEEPER_SESSIONS__REVOKED_WHEN"] = "true"
    env["SESSIONKEEPER_SESSIONS__REVOKED"] = "exp"
    proc = cli("check", env=env)
    assert proc.returncode == 2
    assert "needs a boolean column" in proc.stderr


def test_unreachable_database_exits_1_with_one_clear_line() -> None:
    proc = cli(
        "check",
        env={
            "SESSIONKEEPER_DATABASE__URL": "postgresql://postgres@127.0.0.1:1/x",
            "SESSIONKEEPER_DATABASE__CONNECT_TIMEOUT": "1s",
        },
    )
    assert proc.returncode == 1
    assert "database unreachable" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_check_on_sqlite_reference_table(sqlite_url: str) -> None:
    env = {"SESSIONKEEPER_DATABASE__URL": sqlite_url}
    cli_json("migrate", "--reference-table", env=env)
    report = cli_json("check", env=env)
    assert report["dialect"] == "sqlite"
    assert all(i["indexed"] for i in report["indexes"])
    assert report["schema_revision"] == report["schema_head"]
