"""The worker's settlement on a chain that stops mining its transactions (automine
off, the pool dropping it): a stuck settlement is reported as pending, not as an
outage; the next passes send no second settleBatch; a dropped one is re-sent as
signed; shutdown honours its timeout while a transaction is pending."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from support.host_env import HostEnv
from support.protocol_client import ask_and_close, start_session
from support.waits import run, wait_until
from support.worker import WorkerThread, http_get
from web3 import Web3


def _serve_and_close(w: WorkerThread, hostenv: HostEnv) -> tuple[int, int]:
    """Serve a session, then stop mining (automine off) and close it: the worker's
    settlement is sent into a chain that does not mine it."""
    opened = hostenv.open_session()

    async def scenario() -> int:
        client = await start_session(w.url, opened)
        await client.ask("Name a river.", 8)
        hostenv.rpc("evm_setAutomine", False)
        await client.close_session()
        return client.tokens

    return opened.session_id, run(scenario())


def test_stuck_then_dropped_settlement_is_sent_once(hostenv: HostEnv, start_worker: Any) -> None:
    w = start_worker(settlement_interval=0.5)
    assert w.worker is not None and w.worker.chain is not None
    sender = w.worker.chain.sender
    sender.replace_after = 1.0
    sender.receipt_timeout = 1.5
    nonce0 = hostenv.host_nonce()
    try:
        sid, tokens = _serve_and_close(w, hostenv)
        wait_until(lambda: sender.pending(), timeout=20)
        stuck = sender.pending()[0]
        health = wait_until(
            lambda: (
                h
                if "pending"
                in (
                    (h := json.loads(http_get(w.http + "/health")[2]))["settlement"]["last_error"]
                    or ""
                )
                else None
            ),
            timeout=20,
        )
        assert health["status"] == "degraded"
        assert "unreachable" not in health["settlement"]["last_error"]
        # Several passes later: still exactly one settlement transaction in flight.
        time.sleep(2.0)
        assert hostenv.host_nonce("pending") == nonce0 + 1
        versions = {v.tx_hash for v in sender._slots[stuck.nonce].versions}
        assert len(versions) >= 2  # replaced with a higher fee meanwhile (same nonce)
        for h in versions:  # the pool forgets it
            hostenv.rpc("anvil_dropTransaction", h)
        wait_until(lambda: hostenv.host_nonce("pending") == nonce0 + 1, timeout=20)  # re-sent
    finally:
        hostenv.rpc("evm_setAutomine", True)
        hostenv.rpc("evm_mine")
    rec = wait_until(
        lambda: r if (r := w.record(sid)) is not None and r.state == "settled" else None,
        timeout=30,
    )
    assert rec.receipt_tokens == tokens
    assert hostenv.session(sid).tokensUsed == tokens
    assert hostenv.host_nonce() == nonce0 + 1  # one settleBatch, never a second
    w3 = Web3(Web3.HTTPProvider(hostenv.rpc_url))
    mined = [h for h in versions if hostenv.rpc("eth_getTransactionReceipt", h)]
    assert len(mined) == 1  # one of the signed versions of that one settlement
    assert rec.settle_tx == mined[0]
    assert w3.eth.get_transaction(mined[0])["nonce"] == stuck.nonce


def test_shutdown_honours_its_timeout_with_a_settlement_pending(
    hostenv: HostEnv, start_worker: Any
) -> None:
    w = start_worker(settlement_interval=0.5, shutdown_timeout=3.0)
    assert w.worker is not None and w.worker.chain is not None
    w.worker.chain.sender.receipt_timeout = 60.0  # a wait that would outlast shutdown
    try:
        _serve_and_close(w, hostenv)
        wait_until(
            lambda: (
                w.worker is not None
                and w.worker.chain is not None
                and w.worker.chain.sender.pending()
            ),
            timeout=20,
        )
        started = time.monotonic()
        w.stop(timeout=30)
        assert time.monotonic() - started < 15
    finally:
        hostenv.rpc("evm_setAutomine", True)
        hostenv.rpc("evm_mine")


def test_a_reorg_before_the_confirmations_resends_the_settlement(
    hostenv: HostEnv, start_worker: Any
) -> None:
    w = start_worker(settlement_interval=0.5, confirmations=3)
    assert w.worker is not None and w.worker.chain is not None
    sender = w.worker.chain.sender
    sender.replace_after = 0.5
    nonce0 = hostenv.host_nonce()
    opened = hostenv.open_session()
    sid = opened.session_id

    tokens = run(ask_and_close(w.url, opened, "Name a hill.", 8))
    # Mined (settled on chain) but not final: the store must not say settled yet.
    wait_until(lambda: hostenv.session(sid).status == 3, timeout=20)
    assert w.record(sid).state == "closing"
    hostenv.rpc("anvil_reorg", 1, [])  # the block holding the settlement is gone
    assert hostenv.session(sid).status == 1 and hostenv.session(sid).tokensUsed == 0
    stop = threading.Event()

    def miner() -> None:
        while not stop.wait(0.3):
            hostenv.rpc("evm_mine")

    t = threading.Thread(target=miner)
    t.start()
    try:
        rec = wait_until(lambda: r if (r := w.record(sid)).state == "settled" else None, timeout=40)
    finally:
        stop.set()
        t.join()
    assert rec.receipt_tokens == tokens
    info = hostenv.session(sid)
    assert info.status == 3 and info.tokensUsed == tokens  # paid after all
    assert hostenv.host_nonce() == nonce0 + 1  # the same settlement, sent again; not a second


def test_the_journal_lives_next_to_the_per_chain_store(
    hostenv: HostEnv,
    start_worker: Any,
    tmp_path: Any,
    monkeypatch: Any,
) -> None:
    """Without --db the store is per chain under $FABSTIR_HOME/host; the settlement
    journal must be beside it (not a file named after a missing path)."""
    monkeypatch.setenv("FABSTIR_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    w = start_worker(db_path=None, settlement_interval=0.3)
    opened = hostenv.open_session()

    async def scenario() -> None:
        client = await start_session(w.url, opened)
        await client.ask("Name a cloud.", 6)
        await client.close_session()

    run(scenario())
    wait_until(lambda: (r := w.record(opened.session_id)) is not None and r.state == "settled")
    journals = list((tmp_path / "home" / "host").glob("*.txlog"))
    assert len(journals) == 1 and journals[0].read_text().strip()
    assert not list(tmp_path.glob("None*"))
