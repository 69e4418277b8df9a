"""`fabstir demo`: the whole paid lifecycle for real, and its clean-up on failure."""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import pytest
from support.cli import run

from fabstir import models


def _demo_anvil_pid(stderr: str) -> int:
    found = re.search(r"anvil pid (\d+)", stderr)
    assert found, f"the demo did not report its chain: {stderr}"
    return int(found[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in _proc_state(pid)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def _demo_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("fabstir-demo-*")}


def _port_open(url: str) -> bool:
    parsed = urlparse(url)
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((parsed.hostname or "127.0.0.1", parsed.port or 0)) == 0


@pytest.fixture(scope="module")
def bundled_model() -> Path:
    path = models.local_path(models.find())
    if not path.is_file():
        pytest.skip(f"bundled model not fetched ({path}); run `make setup`")
    return path


def test_demo_runs_a_paid_session_end_to_end(bundled_model: Path) -> None:
    dirs = _demo_dirs()
    proc = run("demo", "--json", "--prompt", "Say hello.", "--prompt", "Count to three.")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)

    assert [a.strip() for a in report["answers"]] != ["", ""]
    assert report["tokens_used"] == report["tokens_streamed"] > 0
    # 200 units per token, 10 % fee, the rest back to the client's balance.
    assert report["cost"] == report["tokens_used"] * 200
    assert report["fee"] == report["cost"] // 10
    assert report["host_amount"] + report["fee"] + report["refund"] == report["deposit"]
    assert report["deposit"] == 1_000_000
    assert report["books_balance"] is True and all(report["books"]["checks"].values())
    assert report["conversation_cid"].startswith("bafk")
    steps = [tx["step"] for tx in report["transactions"]]
    assert "createSessionFromWallet" in steps and "treasury withdraws fees" in steps
    assert all(
        tx["gas_used"] > 21_000 and len(tx["tx_hash"]) == 66 for tx in report["transactions"]
    )
    assert set(report["phases"]) >= {"chain", "deploy", "serve", "chat", "settle", "books"}

    # Everything it started is gone.
    assert not _alive(_demo_anvil_pid(proc.stderr))
    assert _demo_dirs() == dirs
    assert not _port_open(report["rpc_url"])
    assert not _port_open(report["host_url"].replace("ws://", "http://"))


@pytest.mark.parametrize("phase", ["deploy", "chat"])
def test_demo_cleans_up_after_a_failure_half_way(bundled_model: Path, phase: str) -> None:
    dirs = _demo_dirs()
    proc = run("demo", env={"FABSTIR_DEMO_FAIL_AT": phase})
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and phase in last
    assert "Traceback" not in proc.stderr
    assert not _alive(_demo_anvil_pid(proc.stderr))
    assert _demo_dirs() == dirs
