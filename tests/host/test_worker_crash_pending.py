"""kill -9 while a settlement is pending (sent, not mined), then restart: the new
process adopts the journalled transaction and sends no second settleBatch."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from support.host_env import HostEnv, addresses_file
from support.protocol_client import start_session
from support.waits import run, wait_until
from support.worker import WorkerProcess
from web3 import Web3


def _rpc(hostenv: HostEnv, method: str, *params: Any) -> Any:
    w3 = Web3(Web3.HTTPProvider(hostenv.rpc_url))
    return w3.provider.make_request(method, list(params)).get("result")  # type: ignore[arg-type]


def _nonce(hostenv: HostEnv, tag: str) -> int:
    w3 = Web3(Web3.HTTPProvider(hostenv.rpc_url))
    return int(w3.eth.get_transaction_count(hostenv.host.address, tag))  # type: ignore[arg-type]


@pytest.fixture
def worker_args(hostenv: HostEnv, tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    key_file = tmp_path / "host.key"
    key_file.write_text(hostenv.host_key.key.hex() + "\n")
    key_file.chmod(0o600)
    args = [
        "--rpc-url", hostenv.rpc_url,
        "--addresses", str(addresses_file(tmp_path / "addresses.json", hostenv.addresses)),
        "--db", str(tmp_path / "host.db"),
        "--port", "0",
        "--settlement-interval", "0.5",
        "--settlement-coalesce", "0.1",
        "--n-ctx", "512",
        "--max-sequences", "2",
        "--n-threads", "1",
        "--max-tokens-per-request", "32",
        "--log-level", "INFO",
    ]  # fmt: skip
    return args, {**os.environ, "FABSTIR_HOST_KEY_FILE": str(key_file)}


def test_kill9_with_a_settlement_pending_then_restart(
    hostenv: HostEnv, tmp_path: Path, worker_args: tuple[list[str], dict[str, str]]
) -> None:
    args, env = worker_args
    db = tmp_path / "host.db"
    proc = WorkerProcess(args, env, tmp_path / "worker.log")
    nonce0 = _nonce(hostenv, "latest")
    try:
        _crash_and_restart(hostenv, proc, db, nonce0)
    finally:
        proc.cleanup()  # whatever failed: no worker outlives the test


def _crash_and_restart(hostenv: HostEnv, proc: WorkerProcess, db: Path, nonce0: int) -> None:
    try:
        proc.start()
        opened = hostenv.open_session()

        async def serve() -> int:
            client = await start_session(proc.url, opened)
            await client.ask("Name a lake.", 8)
            _rpc(hostenv, "evm_setAutomine", False)  # from here nothing is mined
            await client.close_session()
            return client.tokens

        tokens = run(serve())
        wait_until(lambda: _nonce(hostenv, "pending") == nonce0 + 1, timeout=30)
        journal = Path(f"{db}.txlog").read_text().splitlines()
        assert len(journal) >= 1  # recorded before it was sent
        proc.kill9()

        proc.start()  # the restarted worker finds the pending settlement...
        wait_until(lambda: "adopted_pending_transactions" in proc.log_path.read_text(), 30)
        time.sleep(3.0)  # ...and several passes send nothing beside it
        assert _nonce(hostenv, "pending") == nonce0 + 1
    finally:
        _rpc(hostenv, "evm_setAutomine", True)
        _rpc(hostenv, "evm_mine")

    def settled() -> Any:
        row = (
            sqlite3.connect(db)
            .execute(
                "SELECT state, settle_tx FROM sessions WHERE session_id = ?",
                (opened.session_id,),
            )
            .fetchone()
        )
        return row if row and row[0] == "settled" else None

    _state, settle_tx = wait_until(settled, timeout=30)
    assert _nonce(hostenv, "latest") == nonce0 + 1  # one settleBatch in all
    assert hostenv.session(opened.session_id).tokensUsed == tokens
    assert settle_tx in {line.split('"tx_hash":"')[1].split('"')[0] for line in journal}
