"""Running the `fabstir` CLI in tests, and the CLI suite's test accounts.

`invoke` runs `fabstir` in-process through click's CliRunner (stdout and stderr
apart); `run` runs the installed console script as a subprocess, the way a user
or a script does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from eth_account import Account

from fabstir.chain.local import test_private_key
from fabstir.cli import main

REPO = Path(__file__).resolve().parents[2]
FABSTIR = shutil.which("fabstir", path=str(Path(sys.executable).parent)) or "fabstir"

#: anvil's standard test accounts used here (see tests/cli/conftest.py).
DEPLOYER, HOST, OTHER_HOST, CLIENT = 0, 5, 6, 8


def invoke(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
    """`fabstir ARGS` in-process."""
    runner = CliRunner(mix_stderr=False)
    return runner.invoke(main, list(args), input=input, env=env, catch_exceptions=True)


def ok(result: Result) -> Result:
    """Assert success, showing what went wrong otherwise."""
    assert result.exit_code == 0, (
        f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}\n"
        f"exception: {result.exception!r}"
    )
    return result


def ok_json(result: Result) -> Any:
    """Assert success and that stdout is exactly one JSON document."""
    return json.loads(ok(result).stdout)


def user_error(result: Result, *needles: str) -> str:
    """Assert exit status 1 with a one-line `error: ...` reason (no traceback)."""
    assert result.exit_code == 1, (
        f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}\n"
        f"exception: {result.exception!r}"
    )
    lines = result.stderr.strip().splitlines()
    assert lines, "no reason on stderr"
    assert lines[-1].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


def usage_error(result: Result, needle: str = "") -> str:
    """Assert click's usage error: exit status 2."""
    assert result.exit_code == 2, (
        f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    )
    assert "Traceback" not in result.stderr
    assert needle in result.stderr, result.stderr
    return result.stderr


def run(
    *args: str, input: str | None = None, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """The installed `fabstir` console script as a subprocess."""
    return subprocess.run(
        [FABSTIR, *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def run_json(*args: str, env: dict[str, str] | None = None) -> Any:
    proc = run("--json", *args, env=env)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout)


def test_key(index: int) -> str:
    """Private key of anvil's test account `index` (0x-hex)."""
    return test_private_key(index)


def address_of(index: int) -> str:
    return str(Account.from_key(test_key(index)).address)


test_key.__test__ = False  # type: ignore[attr-defined]
