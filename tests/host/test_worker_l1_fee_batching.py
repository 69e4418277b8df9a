"""Base's L1 data fee in the host's settlement batching decision (`--max-settle-fee`):
a batch whose cost per session (L2 gas at the max fee plus the L1 data fee) is above the
cap is held back so later closes can share the transaction, and sent once the fee drops,
the wait reaches `--settle-defer-max`, or a session is due.

The GasPriceOracle predeploy holds the STAND-IN the deploy tests use
(contracts/test/GasPriceOracleStandIn.sol, placed with anvil_setCode), on the host
suite's anvil: Base itself cannot be reached from here. Removing the code is a chain
without an L1 fee, on which the same batch is cheap enough to send."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.anvil import rpc
from support.host_env import PRICE, HostEnv
from support.protocol_client import ask_and_close
from support.waits import run, wait_until
from support.worker import WorkerThread, http_get, metric
from web3 import Web3

from fabstir.chain.client import ChainClient
from fabstir.chain.l1fee import GAS_PRICE_ORACLE, has_l1_fee
from fabstir.chain.local import ChainInfo, LocalChain, free_port
from fabstir.chain.local import test_private_key as key_of
from fabstir.chain.transactions import TxSender
from fabstir.host.chain import HostChain
from fabstir.host.config import ConfigError
from fabstir.host.metrics import HostMetrics
from fabstir.host.settlement import SettlementLoop
from fabstir.host.store import SessionStore, SessionTerms
from fabstir.protocol.receipts import Receipt

GWEI = 10**9
CAP = 10**15  # wei per session: far above the L2 gas of a one-session batch here
SETTLED, ACTIVE = 3, 1
DAY = 86_400


def _rpc(hostenv: HostEnv, method: str, *params: Any) -> Any:
    w3 = Web3(Web3.HTTPProvider(hostenv.rpc_url))
    reply = w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
    assert "error" not in reply, reply
    return reply.get("result")


@pytest.fixture
def l1_oracle(hostenv: HostEnv, project: Any) -> Iterator[Callable[[int | None], None]]:
    """`set_l1_base_fee(wei)` installs the stand-in oracle with that L1 base fee;
    `set_l1_base_fee(None)` removes it (no L1 fee)."""
    code = project.GasPriceOracleStandIn.contract_type.runtime_bytecode.bytecode

    def set_l1_base_fee(wei: int | None) -> None:
        if wei is None:
            _rpc(hostenv, "anvil_setCode", GAS_PRICE_ORACLE, "0x")
            return
        _rpc(hostenv, "anvil_setCode", GAS_PRICE_ORACLE, code)
        slot0 = "0x" + wei.to_bytes(32, "big").hex()  # l1BaseFee
        _rpc(hostenv, "anvil_setStorageAt", GAS_PRICE_ORACLE, "0x0", slot0)

    yield set_l1_base_fee
    set_l1_base_fee(None)


def _loop(w: WorkerThread) -> SettlementLoop:
    assert w.worker is not None and w.worker.settlement is not None
    return w.worker.settlement


def _serve_and_close(w: WorkerThread, hostenv: HostEnv) -> tuple[int, int]:
    opened = hostenv.open_session()

    return opened.session_id, run(ask_and_close(w.url, opened, "Name a lake.", 6))


def test_a_large_l1_fee_holds_a_small_batch_back_until_it_drops(
    hostenv: HostEnv, start_worker: Any, l1_oracle: Callable[[int | None], None]
) -> None:
    l1_oracle(10_000 * GWEI)
    w = start_worker(settlement_interval=0.3, settlement_coalesce=0.1, max_settle_fee=CAP)
    sid, tokens = _serve_and_close(w, hostenv)
    loop = _loop(w)

    def deferrals() -> float:
        return metric(http_get(w.http + "/metrics")[2], "fabstir_host_settlement_deferrals_total")

    wait_until(lambda: deferrals() >= 3 or None, timeout=30)
    cost = loop.last_batch_cost
    assert cost is not None
    # The L1 data fee is what tips it: L2 gas alone is well under the cap.
    assert cost.l2_fee < CAP < cost.l1_fee
    assert w.record(sid).state == "closing"
    assert hostenv.session(sid).status == ACTIVE

    l1_oracle(None)  # the same batch without an L1 fee: sent at once
    wait_until(lambda: w.record(sid).state == "settled" or None, timeout=30)
    assert hostenv.session(sid).tokensUsed == tokens
    cost = loop.last_batch_cost
    assert cost is not None and cost.l1_fee == 0 and cost.total < CAP


def test_a_held_back_batch_is_sent_once_it_waited_settle_defer_max(
    hostenv: HostEnv, start_worker: Any, l1_oracle: Callable[[int | None], None]
) -> None:
    l1_oracle(10_000 * GWEI)
    w = start_worker(
        settlement_interval=0.3, settlement_coalesce=0.1, max_settle_fee=CAP, settle_defer_max=0.0
    )
    sid, tokens = _serve_and_close(w, hostenv)
    wait_until(lambda: w.record(sid).state == "settled" or None, timeout=30)
    assert hostenv.session(sid).tokensUsed == tokens
    assert _loop(w).last_batch_cost is None  # due at once: not even priced


@pytest.mark.parametrize(
    ("overrides", "flag"),
    [
        ({"max_settle_fee": 0}, "--max-settle-fee"),
        ({"max_settle_fee": -5}, "--max-settle-fee"),
        ({"settle_defer_max": -1.0}, "--settle-defer-max"),
        ({"settle_defer_max": float("nan")}, "--settle-defer-max"),
    ],
)
def test_bad_batching_options_are_refused(
    make_config: Any, overrides: dict[str, Any], flag: str
) -> None:
    with pytest.raises(ConfigError, match=flag):
        make_config(**overrides)


# ------------------------------------------------- on the 84532 rehearsal anvil


class _NoConnections:
    """The server side of the loop's hooks: no client is connected in this test."""

    def is_connected(self, session_id: int) -> bool:
        return False

    async def end_session(self, session_id: int, code: Any, message: str) -> None:
        return None


@pytest.fixture
def base_rehearsal(tmp_path: Path, project: Any) -> Iterator[ChainInfo]:
    """An anvil with Base Sepolia's chain id whose GasPriceOracle predeploy holds the
    stand-in (as in tests/chain/test_l1fee.py)."""
    lc = LocalChain(tmp_path / "base")
    info = lc.up(port=free_port(), chain_id=84532, persist=False)
    try:
        code = project.GasPriceOracleStandIn.contract_type.runtime_bytecode.bytecode
        rpc(info.rpc_url, "anvil_setCode", GAS_PRICE_ORACLE, code)
        yield info
    finally:
        lc.down()


def test_on_the_base_rehearsal_the_l1_fee_decides_whether_a_batch_is_sent(
    base_rehearsal: ChainInfo, tmp_path: Path
) -> None:
    """The settlement loop itself (real store, real chain client and sender) on chain
    84532. No marketplace is deployed on this anvil: `JobMarketplace` names an account
    without code, which takes the settleBatch calldata like any transaction, so the
    batch is priced (L2 gas + the oracle's L1 fee on its bytes) and sent for real."""
    url = base_rehearsal.rpc_url

    def set_l1_base_fee(wei: int) -> None:
        rpc(
            url, "anvil_setStorageAt", GAS_PRICE_ORACLE, "0x0", "0x" + wei.to_bytes(32, "big").hex()
        )

    nobody = "0x" + "5e" * 20
    client = ChainClient(
        url, {"JobMarketplace": nobody, "ModelRegistry": nobody, "NodeRegistry": nobody}
    )
    assert client.chain_id == 84532 and has_l1_fee(client)
    chain = HostChain(client, TxSender(client, key_of(1)))

    async def scenario() -> None:
        store = SessionStore(tmp_path / "host.db")
        await store.open()
        try:
            now = time.time()
            terms = SessionTerms(7, nobody, nobody, nobody, PRICE, 5000, 50, int(now) + DAY)
            await store.register(terms)
            receipt = Receipt(7, 120, "0x" + "ab" * 32, "0x" + "11" * 64 + "1b")
            assert await store.save_receipt(receipt)
            await store.mark_closing(7, "client")
            loop = SettlementLoop(
                store=store,
                chain=chain,
                metrics=HostMetrics(),
                hooks=_NoConnections(),
                interval=1.0,
                poll_interval=60.0,
                idle_timeout=600.0,
                expiry_margin=30.0,
                max_settle_fee=CAP,
            )
            set_l1_base_fee(10_000 * GWEI)
            assert await loop.pass_once(poll_chain=False)
            cost = loop.last_batch_cost
            assert cost is not None and cost.l2_fee < CAP < cost.l1_fee
            held = await store.get(7)
            assert held is not None and held.state == "closing"  # held back

            set_l1_base_fee(1)  # the L1 fee falls: the same batch goes out
            assert await loop.pass_once(poll_chain=False)
            cost = loop.last_batch_cost
            assert cost is not None and cost.total < CAP
            rec = await store.get(7)
            assert rec is not None and rec.state == "settled" and rec.settle_tx is not None
        finally:
            await store.close()

    asyncio.run(scenario())
