"""The command line explains itself: every command has help, every --json output parses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.helpers import cli
from worker.cli import main


def test_every_command_has_a_help_text_that_runs() -> None:
    runner = CliRunner()
    top = runner.invoke(main, ["--help"])
    assert top.exit_code == 0
    assert "Exit codes" in top.output
    for name, command in main.commands.items():
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert command.help and len(command.help) > 20, f"{name} needs a real help text"
        assert name in top.output


def test_commands_with_output_accept_json() -> None:
    runner = CliRunner()
    for name in ("check", "profiles", "config", "migrate", "demo", "health"):
        result = runner.invoke(main, [name, "--help"])
        assert "--json" in result.output, name


def test_profiles_and_config_json_parse() -> None:
    runner = CliRunner()
    profiles = json.loads(runner.invoke(main, ["profiles", "--json"]).output)
    assert {p["name"] for p in profiles} >= {"authjs", "django", "supabase"}
    config = json.loads(runner.invoke(main, ["config", "--json"]).output)
    assert config["resolved_mapping"]["profile"] == "sessionkeeper"
    assert "**" in config["database"]["url"] or config["database"]["url"].startswith("sqlite")


def test_secrets_are_never_printed_by_config() -> None:
    proc = cli(
        "config",
        "--json",
        env={
            "SESSIONKEEPER_DATABASE__URL": "postgresql://u:hunter2@h/db",
            "SESSIONKEEPER_SENTRY__DSN": "https://key@sentry.example/1",
        },
    )
    assert proc.returncode == 0, proc.stderr
    assert "hunter2" not in proc.stdout and "key@" not in proc.stdout


def test_demo_runs_without_services_and_json_parses(tmp_path: Path) -> None:
    # No database URL, no broker: the demo must not need them.
    proc = cli(
        "demo",
        "--database",
        str(tmp_path / "d.db"),
        "--users",
        "200",
        "--json",
        env={"SESSIONKEEPER_BROKER__URL": "redis://127.0.0.1:1/0"},
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["seeded"]["sessions"] > 200
    human = cli("demo", "--database", str(tmp_path / "e.db"), "--users", "200")
    assert human.returncode == 0, human.stderr
    assert "Seeded" in human.stdout


@pytest.mark.parametrize("args", [["purge-everything"], ["check", "--bogus"], ["demo", "--users", "0"]])
def test_bad_usage_exits_2(args: list[str]) -> None:
    proc = cli(*args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


def test_insecure_dev_api_refuses_a_public_address() -> None:
    proc = cli("api", "--host", "0.0.0.0", env={"SESSIONKEEPER_API__INSECURE_DEV": "true"}, timeout=20)  # noqa: S104 - the refusal is the point
    assert proc.returncode == 2
    assert "api.insecure_dev" in proc.stderr and "Traceback" not in proc.stderr
