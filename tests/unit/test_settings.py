"""Settings: durations, environment and TOML sources, and the one-line-per-problem errors."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from tests.helpers import cli
from worker.durations import format_duration, parse_duration, parse_schedule
from worker.errors import ConfigurationError
from worker.settings import load_settings


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("12h", 43200),
        ("30d", 2592000),
        ("1h30m", 5400),
        ("250ms", 0.25),
        ("2w", 1209600),
        (" 5 m ", 300),
        ("45", 45),
        (0, 0),
        (1.5, 1.5),
    ],
)
def test_durations_parse(text: object, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("bad", ["", "5x", "m5", "1h-", "-5s", "abc", True, None, [1]])
def test_bad_durations_say_what_is_accepted(bad: object) -> None:
    with pytest.raises(ValueError, match="duration|negative"):
        parse_duration(bad)


def test_duration_round_trip() -> None:
    for text in ("90s", "1h30m", "30d", "250ms"):
        assert parse_duration(format_duration(parse_duration(text))) == parse_duration(text)


def test_schedules() -> None:
    assert parse_schedule("*/5 * * * *") == "*/5 * * * *"
    assert parse_schedule("5m") == "5m"
    for bad in ("every day", "0.5s", "* * * *", "a b c d e"):
        with pytest.raises(ValueError, match="schedule|crontab|short"):
            parse_schedule(bad)


def test_defaults_need_nothing() -> None:
    s = load_settings()
    assert s.database.url.get_secret_value().startswith("sqlite:///")
    assert s.purge.schedule == "5m"
    assert s.policy.grace == timedelta(0)


def test_env_overrides_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "sk.toml"
    cfg.write_text('[policy]\ngrace = "1h"\nidle_timeout = "30d"\n[sessions]\nprofile = "django"\n')
    monkeypatch.setenv("SESSIONKEEPER_POLICY__GRACE", "90s")
    s = load_settings(cfg)
    assert s.policy.grace == timedelta(seconds=90)
    assert s.policy.idle_timeout == timedelta(days=30)
    assert s.sessions.profile == "django"


def test_config_from_env_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "sk.toml"
    cfg.write_text("[purge]\nbatch_size = 123\n")
    monkeypatch.setenv("SESSIONKEEPER_CONFIG", str(cfg))
    assert load_settings().purge.batch_size == 123


def test_every_problem_is_one_line_naming_key_and_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "sk.toml"
    cfg.write_text(
        '[sessions]\ntabel = "x"\n[policy]\ngrace = "5x"\n'
        '[api]\ntokens = [{name = "a", sha256 = "plain-token", scope = "admin"}]\n'
    )
    monkeypatch.setenv("SESSIONKEEPER_PURGE__BATCH_SIZE", "lots")
    with pytest.raises(ConfigurationError) as info:
        load_settings(cfg)
    problems = "\n".join(info.value.problems)
    assert "sessions.tabel [SESSIONKEEPER_SESSIONS__TABEL]: unknown key" in problems
    assert "policy.grace [SESSIONKEEPER_POLICY__GRACE]" in problems and '"30m"' in problems
    assert "purge.batch_size [SESSIONKEEPER_PURGE__BATCH_SIZE]" in problems
    assert "api.tokens.0.sha256" in problems and "plain-token" not in problems  # never echo secrets
    assert "'read' or 'revoke'" in problems
    assert len(info.value.problems) == 5


def test_unknown_section_and_bad_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "sk.toml"
    cfg.write_text("[purg]\nbatch_size = 1\n")
    with pytest.raises(ConfigurationError, match="unknown sections"):
        load_settings(cfg)
    cfg.write_text("[purge\n")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        load_settings(cfg)
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")


def test_time_limits_must_stay_below_visibility_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SESSIONKEEPER_BROKER__VISIBILITY_TIMEOUT", "5m")
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert "visibility_timeout" in "\n".join(info.value.problems)


def test_database_url_schemes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SESSIONKEEPER_DATABASE__URL", "mysql://x/y")
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert "unsupported database scheme 'mysql'" in info.value.problems[0]
    monkeypatch.setenv("SESSIONKEEPER_DATABASE__URL", "postgres://u:secret@h/db")
    assert load_settings().database.url.get_secret_value().startswith("postgres://")


def test_cli_exits_2_with_lines_not_a_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "sk.toml"
    cfg.write_text('[policy]\ngrace = "soon"\n[sessions]\nprofile = "nope"\n')
    proc = cli("--config", str(cfg), "check")
    assert proc.returncode == 2
    assert "policy.grace" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = cli("check", env={"SESSIONKEEPER_SESSIONS__PROFILE": "nope"})
    assert proc.returncode == 2
    assert "unknown profile 'nope'" in proc.stderr and "authjs" in proc.stderr


def test_readme_documents_every_setting() -> None:
    from worker import settings_doc

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split(settings_doc.BEGIN)[1].split(settings_doc.END)[0].strip()
    assert block == settings_doc.markdown(), "run: .venv/bin/python -m worker.settings_doc --write README.md"
