"""SDK writes from one signer issued concurrently, and through a misbehaving RPC.

8 clients (one wallet and one SDK each) open 3 sessions each at once: each call
approves only what it needs, so without per-signer bookkeeping the approvals
overwrote each other and about half failed with ERC20InsufficientAllowance.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest
from eth_account import Account
from support.rpc_proxy import FaultProxy
from web3 import Web3

from fabstir.sdk.sdk import FabstirSDK

pytestmark = pytest.mark.usefixtures("env")

USDC = 10**6
CONFIG = {"pricePerToken": 200, "duration": 3600, "proofInterval": 100}
MakeSdk = Callable[..., FabstirSDK]


def _wallets(env: SimpleNamespace, n: int, usdc: int) -> list[Any]:
    wallets = []
    for _ in range(n):
        acct = Account.create()
        env.deployer.transfer(acct.address, 10**18)
        env.system.usdc.mint(acct.address, usdc, sender=env.deployer)
        wallets.append(acct)
    return wallets


def test_eight_clients_open_three_sessions_each_at_once(
    env: SimpleNamespace, make_sdk: MakeSdk
) -> None:
    wallets = _wallets(env, 8, 3 * USDC)
    sdks = []
    for w in wallets:
        sdk = make_sdk(rpc_retries=3)
        sdk.authenticate("0x" + bytes(w.key).hex())
        sdks.append(sdk)

    def open_one(sdk: FabstirSDK) -> int:
        jobs = sdk.get_session_job_manager()
        return jobs.create_session_job(env.host1.address, "USDC", "1.0", CONFIG).session_id

    with ThreadPoolExecutor(max_workers=24) as pool:
        futures = [pool.submit(open_one, sdk) for sdk in sdks for _ in range(3)]
        ids = [f.result() for f in futures]
    assert len(set(ids)) == 24
    market = env.system.marketplace
    for w in wallets:
        # Every deposit pulled exactly once; no wallet paid for a session it has not got.
        assert env.system.usdc.balanceOf(w.address) == 0
        assert market.balanceOf(w.address, env.system.usdc.address) == 0
    for sid in ids:
        assert market.getSession(sid).deposit == USDC


def test_session_start_through_a_throttling_rpc_opens_one_session(
    env: SimpleNamespace, make_sdk: MakeSdk
) -> None:
    (wallet,) = _wallets(env, 1, 2 * USDC)
    with FaultProxy(env.rpc_url) as proxy:
        sdk = make_sdk(rpc_url=proxy.url, rpc_retries=4)
        sdk.authenticate("0x" + bytes(wallet.key).hex())
        # The node accepts each transaction, then the RPC answers 429 (approval and
        # createSessionFromWallet): each must be found by hash, not signed again.
        proxy.accept_then_fail("eth_sendRawTransaction", times=2, status=429, retry_after=0.1)
        count = int(env.system.marketplace.sessionCount())
        result = sdk.get_session_job_manager().create_session_job(
            env.host1.address, "USDC", "1.0", CONFIG
        )
        assert proxy.injected["accept_then_status"] == 2
    assert int(env.system.marketplace.sessionCount()) == count + 1 == result.session_id
    assert env.system.usdc.balanceOf(wallet.address) == USDC  # escrowed once
    nonce = Web3(Web3.HTTPProvider(env.rpc_url)).eth.get_transaction_count(wallet.address)
    assert nonce == 2  # approve + create, nothing more


def test_session_lists_through_capped_log_ranges(env: SimpleNamespace, make_sdk: MakeSdk) -> None:
    alice = make_sdk(env.alice)
    jobs = alice.get_session_job_manager()
    opened = [jobs.create_session_job(env.host1.address, "USDC", "1.0", CONFIG) for _ in range(2)]
    with FaultProxy(env.rpc_url) as proxy:
        proxy.cap_logs(max_range=3)
        capped = make_sdk(env.alice, rpc_url=proxy.url, start_block=0)
        found = capped.get_session_job_manager().get_sessions_of_user()
        assert proxy.injected["logs_refused"] >= 1
    assert [s.session_id for s in found] == [o.session_id for o in opened]


def test_rpc_urls_fail_over(env: SimpleNamespace, make_sdk: MakeSdk) -> None:
    from fabstir.chain.local import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    sdk = make_sdk(env.alice, rpc_url=f"{dead},{env.rpc_url}")
    assert sdk.chain.rpc_urls == [dead, env.rpc_url]
    balance = sdk.get_payment_manager().get_token_balance("USDC")
    assert balance == "100.0"
    assert sdk.chain.provider.endpoint_uri == env.rpc_url  # moved past the dead one


def test_settlement_finality_view(
    env: SimpleNamespace, make_sdk: MakeSdk, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fabstir.chain.transactions as transactions

    alice = make_sdk(env.alice)
    sid = (
        alice.get_session_job_manager()
        .create_session_job(env.host1.address, "USDC", "1.0", CONFIG)
        .session_id
    )
    jobs = alice.get_session_job_manager()
    assert jobs.get_settlement_finality(sid) is None  # not settled
    make_sdk(env.host1).get_session_job_manager().settle(sid)
    monkeypatch.setattr(transactions, "confirmations_for_chain", lambda chain_id: 3)
    with FaultProxy(env.rpc_url) as proxy:
        proxy.cap_logs(max_range=2)  # found by a bounded scan
        capped = make_sdk(env.alice, rpc_url=proxy.url, start_block=0)
        first = capped.get_session_job_manager().get_settlement_finality(sid)
        assert first is not None and not first.final
        assert first.confirmations == 1 and first.required == 3
        w3 = Web3(Web3.HTTPProvider(env.rpc_url))
        w3.provider.make_request("anvil_mine", ["0x2"])  # type: ignore[arg-type]
        later = capped.get_session_job_manager().get_settlement_finality(sid)
        assert later is not None and later.final and later.tx_hash == first.tx_hash
