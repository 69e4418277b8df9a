"""The host's store belongs to one chain. Reproduces the report of issue 11: a worker
started against a fresh local chain (same chain id, same deterministic addresses)
refused the new chain's session 1 because the old chain's settled session 1 was in its
database. Now each chain (chain id, genesis block, marketplace) gets its own file under
$FABSTIR_HOME/host, and a file named explicitly for another chain is refused."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cli import CLIENT, HOST, invoke, ok, ok_json, run_json, test_key

from fabstir.chain.local import LocalChain, free_port


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    import socket

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"worker exited ({proc.returncode}): {log.read_text()[-2000:]}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"worker did not listen: {log.read_text()[-2000:]}")


def _worker(home: Path, rpc_url: str, port: int, *extra: str) -> subprocess.Popen[bytes]:
    key_file = home / "host.key"
    key_file.write_text(test_key(HOST) + "\n")
    key_file.chmod(0o600)
    log = home / f"worker-{port}.log"
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                sys.executable, "-m", "fabstir.host", "--rpc-url", rpc_url,
                "--chain-id", "31337", "--deployments-dir", str(home / "deployments"),
                "--port", str(port), "--n-ctx", "512", "--max-sequences", "1",
                "--n-threads", "1", "--settlement-interval", "1",
                "--settlement-coalesce", "0.1", *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "FABSTIR_HOST_KEY_FILE": str(key_file)},
        )  # fmt: skip


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def chain_dir(cli_home: Path) -> Iterator[LocalChain]:
    """Where `--network local` finds the chain; started (fresh) by the test itself."""
    lc = LocalChain(cli_home / "chain")
    yield lc
    lc.down()


def _row_state(store_dir: Path, session_id: int) -> list[str]:
    states = []
    for store in sorted(store_dir.glob("chain-31337-*.db")):
        with sqlite3.connect(store) as db:
            row = db.execute(
                "SELECT state FROM sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
            states.append(row[0] if row else "")
    return states


def test_a_fresh_chain_gets_its_own_store_and_a_wrong_one_is_refused(
    cli_home: Path, chain_dir: LocalChain, model_path: Path
) -> None:
    rpc_port = free_port()
    me = ("--account", f"test:{CLIENT}")
    marketplaces = []
    for round_ in range(2):
        chain_dir.up(port=rpc_port, persist=False)  # a new genesis block each time
        deploy = ("deploy", "--seed") if round_ == 0 else ("deploy", "--seed", "--fresh")
        marketplaces.append(run_json(*deploy)["contracts"]["JobMarketplace"])
        port = free_port()
        url = f"ws://127.0.0.1:{port}"
        ok(invoke("host", "register", "--account", f"test:{HOST}", "--url", url))
        proc = _worker(cli_home, f"http://127.0.0.1:{rpc_port}", port)  # no --db: per chain
        try:
            _wait_listening(port, proc, cli_home / f"worker-{port}.log")
            started = ok_json(invoke("session", "start", *me, "--deposit", "1.0", "--json"))
            sid = int(started["session_id"])
            assert sid == 1  # the same session id on both chains, served both times
            ok(invoke("session", "send", str(sid), "Say hi.", "--max-tokens", "8", *me))
            closed = ok_json(invoke("session", "close", str(sid), *me, "--json"))
            assert closed["settled_by_host"] is True
            deadline = time.monotonic() + 30
            while _row_state(cli_home / "host", 1).count("settled") < round_ + 1:
                assert time.monotonic() < deadline, "the host's store did not record it"
                time.sleep(0.2)
        finally:
            _stop(proc)
        if round_ == 0:
            chain_dir.down()
    assert marketplaces[0] == marketplaces[1]  # deterministic addresses: only genesis differs
    stores = sorted((cli_home / "host").glob("chain-31337-*.db"))
    assert len(stores) == 2 and _row_state(cli_home / "host", 1) == ["settled", "settled"]

    # Naming the first chain's file explicitly on the second chain is refused, clearly.
    old = min(stores, key=lambda p: p.stat().st_mtime)
    port = free_port()
    proc = _worker(cli_home, f"http://127.0.0.1:{rpc_port}", port, "--db", str(old))
    try:
        assert proc.wait(90) == 2  # a configuration error
    finally:
        _stop(proc)
    assert "belongs to another chain" in (cli_home / f"worker-{port}.log").read_text()
