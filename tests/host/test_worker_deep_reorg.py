"""A reorg DEEPER than the confirmation depth undoes a settlement the worker had already
called final: the periodic re-check of recently settled sessions (`--recheck-settled`)
sees that the chain no longer holds it, puts the row back to closing and settles again
with the stored receipt. Before, a settled row was never looked at again and the session
stayed unpaid (finalized later with whatever the chain last recorded)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from support.host_env import HostEnv
from support.protocol_client import ask_and_close, start_session
from support.rpc_proxy import FaultProxy
from support.waits import run, wait_until
from support.worker import http_get, metric
from web3 import Web3

from fabstir.host.config import ConfigError

SETTLED = 3


def _rpc(hostenv: HostEnv, method: str, *params: Any) -> Any:
    w3 = Web3(Web3.HTTPProvider(hostenv.rpc_url))
    reply = w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
    assert "error" not in reply, reply
    return reply.get("result")


class Miner:
    """Mines a block every `every` seconds while running (confirmations need blocks)."""

    def __init__(self, hostenv: HostEnv, every: float = 0.3) -> None:
        self.hostenv, self.every = hostenv, every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            _rpc(self.hostenv, "evm_mine")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


@pytest.fixture
def miner(hostenv: HostEnv) -> Iterator[Miner]:
    m = Miner(hostenv)
    yield m
    m.stop()


def test_settlement_undone_by_a_reorg_deeper_than_the_confirmations_is_sent_again(
    hostenv: HostEnv, start_worker: Any, miner: Miner
) -> None:
    confirmations = 2
    w = start_worker(
        settlement_interval=0.3,
        settlement_coalesce=0.1,
        chain_poll_interval=0.5,
        confirmations=confirmations,
        settled_recheck_window=600.0,
    )
    opened = hostenv.open_session()
    sid = opened.session_id
    miner.start()

    tokens = run(ask_and_close(w.url, opened, "Name a river.", 8))
    assert tokens > 0
    first = wait_until(lambda: r if (r := w.record(sid)).state == "settled" else None, timeout=30)
    miner.stop()
    w3 = Web3(Web3.HTTPProvider(hostenv.rpc_url))
    settled_in = int(w3.eth.get_transaction_receipt(first.settle_tx)["blockNumber"])
    _rpc(hostenv, "evm_mine")
    depth = w3.eth.block_number - settled_in + 1
    assert depth > confirmations  # the worker had called it final
    # Replace the blocks from the settlement's on with empty ones; the settlement does
    # not come back by itself (as on a chain where it fell out of every pool).
    _rpc(hostenv, "anvil_reorg", depth, [])
    _rpc(hostenv, "anvil_dropAllTransactions")
    info = hostenv.session(sid)
    assert info.status != SETTLED and info.tokensUsed < tokens

    miner.start()
    wait_until(lambda: hostenv.session(sid).status == SETTLED or None, timeout=60)
    assert hostenv.session(sid).tokensUsed == tokens  # the stored receipt, exactly
    again = wait_until(lambda: r if (r := w.record(sid)).state == "settled" else None, timeout=30)
    # Settled anew (the same nonce, fees and data sign to the same transaction hash).
    assert again.settled_at is not None and first.settled_at is not None
    assert again.settled_at > first.settled_at and again.receipt_tokens == tokens
    body = http_get(w.http + "/metrics")[2]
    assert metric(body, "fabstir_host_settlements_total", outcome="reorged") == 1


def test_the_recheck_costs_one_receipt_lookup_per_settlement_transaction(
    hostenv: HostEnv, start_worker: Any
) -> None:
    with FaultProxy(hostenv.rpc_url) as proxy:
        w = start_worker(rpc_url=proxy.url, chain_poll_interval=0.2, settled_recheck_window=600.0)
        sessions = [hostenv.open_session() for _ in range(3)]

        async def scenario() -> None:
            clients = [await start_session(w.url, s) for s in sessions]
            for c in clients:
                await c.ask("Name a bird.", 4)
            for c in clients:
                await c.close_session()

        run(scenario())
        for s in sessions:
            wait_until(lambda s=s: w.record(s.session_id).state == "settled" or None, timeout=30)
        lookups, reads = proxy.calls["eth_getTransactionReceipt"], proxy.calls["eth_call"]
        wait_until(
            lambda: proxy.calls["eth_getTransactionReceipt"] >= lookups + 5 or None, timeout=30
        )
        # Re-checked every poll, but with the transaction still on chain no session is
        # read (getSession is an eth_call).
        assert proxy.calls["eth_call"] == reads


@pytest.mark.parametrize("value", [-1.0, float("nan")])
def test_recheck_window_must_not_be_negative(make_config: Any, value: float) -> None:
    with pytest.raises(ConfigError, match="recheck"):
        make_config(settled_recheck_window=value)
