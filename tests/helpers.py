"""Helpers for tests that run real sessionkeeper processes (CLI, worker, API)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).with_name("sessionkeeper")


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real ``sessionkeeper`` command with the given environment additions."""
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SESSIONKEEPER_") or k.startswith("SESSIONKEEPER_TEST")
    }
    full_env.update(env or {})
    return subprocess.run(
        [str(BIN), *args], capture_output=True, text=True, env=full_env, timeout=timeout, cwd=cwd, check=False
    )


def cli_json(*args: str, env: dict[str, str] | None = None, expect: int = 0, **kw: Any) -> Any:
    """Run a ``--json`` command and parse its stdout; assert its exit code."""
    proc = cli(*args, "--json", env=env, **kw)
    assert proc.returncode == expect, f"exit {proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}"
    return json.loads(proc.stdout)
