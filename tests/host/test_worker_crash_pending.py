"""kill -9 while a settlement is pending (sent, not mined), then restart: the new
process adopts the journalled transaction and sends no second settleBatch."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from support.host_env import HostEnv
from support.protocol_client import start_session
from support.waits import run, wait_until
from support.worker import WorkerProcess


def test_kill9_with_a_settlement_pending_then_restart(
    hostenv: HostEnv, tmp_path: Path, worker_args: tuple[list[str], dict[str, str]]
) -> None:
    args, env = worker_args
    db = tmp_path / "host.db"
    proc = WorkerProcess(args, env, tmp_path / "worker.log")
    nonce0 = hostenv.host_nonce("latest")
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
            hostenv.rpc("evm_setAutomine", False)  # from here nothing is mined
            await client.close_session()
            return client.tokens

        tokens = run(serve())
        wait_until(lambda: hostenv.host_nonce("pending") == nonce0 + 1, timeout=30)
        journal = Path(f"{db}.txlog").read_text().splitlines()
        assert len(journal) >= 1  # recorded before it was sent
        proc.kill9()

        proc.start()  # the restarted worker finds the pending settlement...
        wait_until(lambda: "adopted_pending_transactions" in proc.log_path.read_text(), 30)
        time.sleep(3.0)  # ...and several passes send nothing beside it
        assert hostenv.host_nonce("pending") == nonce0 + 1
    finally:
        hostenv.rpc("evm_setAutomine", True)
        hostenv.rpc("evm_mine")

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
    assert hostenv.host_nonce("latest") == nonce0 + 1  # one settleBatch in all
    assert hostenv.session(opened.session_id).tokensUsed == tokens
    assert settle_tx in {line.split('"tx_hash":"')[1].split('"')[0] for line in journal}
