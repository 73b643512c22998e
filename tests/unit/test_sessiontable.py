"""Mapping validation and capability rules (no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from worker.errors import ConfigurationError
from worker.profiles import PROFILES
from worker.sessiontable import SessionTable, load_mapping
from worker.settings import PolicySettings, SessionsSettings


def mapping(**keys: object):  # type: ignore[no-untyped-def]
    return load_mapping(SessionsSettings(**keys))


def test_default_is_reference_profile() -> None:
    m = mapping()
    assert m.profile == "sessionkeeper"
    assert m.columns["revoked"] == "revoked_at"


def test_profile_overridden_column_by_column_and_unmapped_with_empty_string() -> None:
    m = mapping(profile="better-auth", ip="", user_agent="ua", table="auth.session")
    assert "ip" not in m.columns
    assert m.columns["user_agent"] == "ua"
    assert (m.schema, m.name) == ("auth", "session")


def test_explicit_table_without_profile_uses_only_explicit_columns() -> None:
    m = mapping(table="s", id="sid", expires_at="exp", time_kinds={"expires_at": "epoch_millis"})
    assert m.profile is None
    assert m.columns == {"id": "sid", "expires_at": "exp"}
    assert m.time_kinds == {"expires_at": "epoch_millis"}


@pytest.mark.parametrize("bad", ['x"; DROP TABLE users; --', "a.b.c", "", "x" * 64, "tab\tle"])
def test_identifiers_that_could_inject_are_refused(bad: str) -> None:
    with pytest.raises(ConfigurationError):
        mapping(table="sessions", id="id", expires_at=bad or "a\x00")


def test_json_path_is_validated() -> None:
    with pytest.raises(ConfigurationError, match="JSON path"):
        mapping(table="s", id="sid", user_id_json={"column": "sess", "path": ["a'b"]})


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(ConfigurationError) as info:
        mapping(profile="devise")
    assert all(name in info.value.problems[0] for name in PROFILES)


def test_user_and_user_json_are_exclusive() -> None:
    with pytest.raises(ConfigurationError, match="incomplete"):
        mapping(table="s", id="i", user_id="u", user_id_json={"column": "c", "path": ["p"]})


def test_time_kinds_accept_only_time_columns() -> None:
    with pytest.raises(ValueError, match="unknown column key"):
        SessionsSettings(time_kinds={"ip": "timestamp"})


def test_capabilities_follow_columns_and_policy() -> None:
    caps = {c.name: c for c in mapping(profile="django").capabilities(PolicySettings())}
    assert not caps["per_user_stats"].available
    assert "no user column" in caps["per_user_stats"].reason
    assert not caps["creation_rate"].available
    assert caps["purge_expired"].available
    policy = PolicySettings(idle_timeout=timedelta(days=30), max_sessions_per_user=5)
    caps = {c.name: c for c in mapping(profile="rails").capabilities(policy)}
    assert caps["purge_idle"].available and not caps["purge_expired"].available
    assert not caps["session_cap"].available
    assert caps["session_cap"].reason == "needs a user column and policy.max_sessions_per_user"


def _table(kind: str) -> SessionTable:
    m = mapping(table="s", id="id", expires_at="exp", time_kind=kind)
    t = sa.Table("s", sa.MetaData(), sa.Column("id", sa.Text), sa.Column("exp", sa.BigInteger))
    return SessionTable(mapping=m, table=t, dialect="postgresql")


def test_time_values_in_the_column_kind() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)
    assert _table("epoch_seconds").time_value("expires_at", moment) == 1767323046  # rounded up
    assert _table("epoch_millis").time_value("expires_at", moment) == 1767323045600
    naive = _table("timestamp").time_value("expires_at", moment)
    assert naive.tzinfo is None and naive.hour == 3
    assert _table("timestamptz").time_value("expires_at", moment).tzinfo is not None


def test_null_expiry_is_live_and_never_expired() -> None:
    t = _table("epoch_seconds")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    active = str(t.active_clause(now, PolicySettings()).compile())
    assert "exp IS NULL OR" in active
    assert "IS NULL" not in str(t.expired_clause(now).compile())
