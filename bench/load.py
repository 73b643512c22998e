"""Mixed load at a larger scale than CI: API + worker + beat for N seconds, then reconcile.

    .venv/bin/python bench/load.py --seconds 60 --insert-rate 500 --revoke-rate 20

Runs tests/faults/test_load.py with the given scale (same code, same checks: every accepted job
succeeds, zero 5xx, inserted = present + purged + revoked) and prints its summary line.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--insert-rate", type=float, default=500)
    parser.add_argument("--revoke-rate", type=float, default=20)
    args = parser.parse_args()
    env = {
        **os.environ,
        "SESSIONKEEPER_TEST_LOAD_SECONDS": str(args.seconds),
        "SESSIONKEEPER_TEST_LOAD_INSERT_RATE": str(args.insert_rate),
        "SESSIONKEEPER_TEST_LOAD_REVOKE_RATE": str(args.revoke_rate),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-s",
            "-p",
            "no:randomly",
            "--timeout",
            "0",
            "tests/faults/test_load.py",
        ],
        cwd=ROOT,
        env=env,
        check=False,
    )
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
