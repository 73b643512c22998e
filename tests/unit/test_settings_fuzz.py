"""Property: no configuration, however odd, produces anything but settings or a ConfigurationError."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import cli
from worker.errors import ConfigurationError
from worker.settings import Settings, load_settings
from worker.settings_doc import rows

KEYS = [key for key, _, _ in rows()]
SECTIONS = sorted({key.split(".")[0] for key in KEYS})

scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(
        [
            "30m",
            "0s",
            "-5s",
            "1e9d",
            "* * * * *",
            "timestamptz",
            "postgres://x/y",
            "sqlite://",
            "true",
            "",
            " ",
            "NaN",
            "1h30",
        ]
    ),
)
value = st.recursive(
    scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
key = st.one_of(st.sampled_from(KEYS), st.text(min_size=1, max_size=12).map(lambda s: f"{s}.{s}"))


def _toml_value(v: object) -> str:
    import json

    if v is None:
        return '""'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return "nan" if v != v else ("inf" if v > 0 else "-inf")
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(str(v))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.dictionaries(key, value, max_size=6))
def test_any_toml_gives_settings_or_a_configuration_error(tmp_path: Path, entries: dict[str, object]) -> None:
    by_section: dict[str, list[str]] = {}
    for dotted, v in entries.items():
        section, _, name = dotted.partition(".")
        by_section.setdefault(section, []).append(f"{_json_key(name)} = {_toml_value(v)}")
    text = "".join(f"[{_json_key(s)}]\n" + "\n".join(lines) + "\n" for s, lines in by_section.items())
    path = tmp_path / "fuzz.toml"
    path.write_text(text)
    try:
        result: Settings | ConfigurationError = load_settings(path)
    except ConfigurationError as exc:
        result = exc
    if isinstance(result, ConfigurationError):
        assert result.problems, text
        for line in result.problems:
            assert "\n" not in line and line.strip(), line
    else:
        assert isinstance(result, Settings)


def _json_key(name: str) -> str:
    import json

    return name if name.replace("_", "").isalnum() and name.isascii() else json.dumps(name)


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(KEYS), raw=st.text(max_size=40))
def test_any_environment_value_gives_settings_or_a_configuration_error(name: str, raw: str) -> None:
    env_name = next(e for k, _, e in rows() if k == name)
    if "\x00" in raw:
        return  # the OS cannot carry NUL in an environment variable
    old = os.environ.get(env_name)
    os.environ[env_name] = raw
    problems: list[str] = ["(loaded)"]
    try:
        load_settings()
    except ConfigurationError as exc:
        problems = exc.problems
    finally:
        if old is None:
            del os.environ[env_name]
        else:
            os.environ[env_name] = old
    assert problems and all("\n" not in p for p in problems)


@pytest.mark.parametrize(
    "env",
    [
        {"SESSIONKEEPER_PURGE__BATCH_SIZE": "-1"},
        {"SESSIONKEEPER_API__TOKENS": "not json"},
        {"SESSIONKEEPER_SESSIONS__TIME_KINDS": '{"expires_at": "weekly"}'},
        {"SESSIONKEEPER_POLICY__MAX_SESSIONS_PER_USER": "0"},
        {"SESSIONKEEPER_ANOMALY__IP_ALLOWLIST": '["10.0.0.0/33"]'},
    ],
)
def test_cli_exits_2_for_bad_environment(env: dict[str, str]) -> None:
    proc = cli("config", env=env)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip()
