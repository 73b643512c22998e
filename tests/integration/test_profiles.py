"""Every built-in profile against its framework's real table DDL, through `sessionkeeper check`."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.helpers import cli, cli_json
from tests.integration.framework_ddl import DDL, EXPECTED_CAPABILITIES
from worker.profiles import PROFILES

pytestmark = pytest.mark.integration


def _create(url: str, profile: str) -> None:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        for statement in DDL[profile]:
            conn.execute(sa.text(statement))
    engine.dispose()


def test_every_profile_has_ddl() -> None:
    assert set(DDL) == set(PROFILES) == set(EXPECTED_CAPABILITIES)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_check_reports_profile_ok_with_capabilities(pg_url: str, profile: str) -> None:
    env = {"SESSIONKEEPER_DATABASE__URL": pg_url, "SESSIONKEEPER_SESSIONS__PROFILE": profile}
    if profile == "sessionkeeper":
        cli_json("migrate", "--reference-table", env=env)
    else:
        _create(pg_url, profile)
    report = cli_json("check", env=env)
    assert report["profile"] == profile
    available = {c["name"] for c in report["capabilities"] if c["available"]}
    assert available == EXPECTED_CAPABILITIES[profile]
    for cap in report["capabilities"]:
        assert cap["reason"], cap
    human = cli("check", env=env)
    assert human.returncode == 0, human.stderr
    assert "OK" in human.stdout


def test_connect_pg_simple_reads_user_from_json(pg_url: str) -> None:
    _create(pg_url, "connect-pg-simple")
    env = {"SESSIONKEEPER_DATABASE__URL": pg_url, "SESSIONKEEPER_SESSIONS__PROFILE": "connect-pg-simple"}
    report = cli_json("check", env=env)
    assert report["columns"]["user_id"]["column"] == "sess -> passport -> user"
    user_index = next(i for i in report["indexes"] if i["key"] == "user_id")
    assert not user_index["indexed"]
    assert "CREATE INDEX CONCURRENTLY" in user_index["create"]
    engine = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:  # the recommended statement must really run
        conn.execute(sa.text(user_index["create"].replace(" CONCURRENTLY", "")))
    engine.dispose()
    assert next(i for i in cli_json("check", env=env)["indexes"] if i["key"] == "user_id")["indexed"]


def test_check_recommends_exact_missing_index(pg_url: str) -> None:
    _create(pg_url, "lucia")
    env = {"SESSIONKEEPER_DATABASE__URL": pg_url, "SESSIONKEEPER_SESSIONS__PROFILE": "lucia"}
    report = cli_json("check", env=env)
    by_key = {i["key"]: i for i in report["indexes"]}
    assert by_key["expires_at"]["create"] == (
        "CREATE INDEX CONCURRENTLY ix_user_session_expires_at ON user_session (expires_at);"
    )
    assert by_key["user_id"]["create"] == (
        "CREATE INDEX CONCURRENTLY ix_user_session_user_id ON user_session (user_id);"
    )
