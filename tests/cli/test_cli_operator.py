"""Operator commands (`session finalize`, `host settle`, `admin pause|unpause|token`)
and the CLI behind a throttling RPC, on the module's own anvil with `fabstir deploy
--seed`. Sessions are opened with the SDK (no worker is needed here)."""

from __future__ import annotations

from typing import Any

import pytest
from support.cli import (
    CLIENT,
    DEPLOYER,
    HOST,
    address_of,
    invoke,
    ok,
    ok_json,
    test_key,
    user_error,
)
from support.rpc_proxy import FaultProxy
from web3 import Web3

from fabstir.chain.local import ChainInfo
from fabstir.sdk.sdk import FabstirSDK

pytestmark = pytest.mark.usefixtures("deployed")

CONFIG = {"depositAmount": "1.0", "pricePerToken": 200, "duration": 3600, "proofInterval": 100}


def _rpc(url: str, method: str, *params: Any) -> Any:
    return Web3(Web3.HTTPProvider(url)).provider.make_request(method, list(params))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def host_registered(deployed: dict[str, Any]) -> str:
    ok(invoke("host", "register", "--account", f"test:{HOST}", "--url", "ws://127.0.0.1:9"))
    return address_of(HOST)


def _open(chain: ChainInfo) -> int:
    sdk = FabstirSDK(rpc_url=chain.rpc_url, chain_id=chain.chain_id)
    sdk.authenticate(test_key(CLIENT))
    jobs = sdk.get_session_job_manager()
    return jobs.create_session_job(address_of(HOST), "USDC", "1.0", CONFIG).session_id


def _close(chain: ChainInfo, sid: int) -> None:
    sdk = FabstirSDK(rpc_url=chain.rpc_url, chain_id=chain.chain_id)
    sdk.authenticate(test_key(CLIENT))
    sdk.get_session_job_manager().request_close(sid)


def test_session_finalize_after_the_window(local_chain: ChainInfo, host_registered: str) -> None:
    sid = _open(local_chain)
    _close(local_chain, sid)
    user_error(invoke("session", "finalize", str(sid), "--account", "test:9"), "finalized after")
    _rpc(local_chain.rpc_url, "evm_increaseTime", 2 * 3600)
    _rpc(local_chain.rpc_url, "evm_mine")
    data = ok_json(invoke("--json", "session", "finalize", str(sid), "--account", "test:9"))
    assert data["session_id"] == sid and data["status"] == "SETTLED"
    assert data["tx_hash"].startswith("0x") and data["tokens_used"] == 0
    user_error(invoke("session", "finalize", str(sid), "--account", "test:9"), "already settled")


def test_host_settle_one_and_due(local_chain: ChainInfo, host_registered: str) -> None:
    one, closing, running = _open(local_chain), _open(local_chain), _open(local_chain)
    _close(local_chain, closing)
    data = ok_json(invoke("--json", "host", "settle", str(one), "--account", f"test:{HOST}"))
    assert data["sessions"] == [{"session_id": one, "outcome": "OK"}]
    settled = ok_json(invoke("--json", "session", "status", str(one)))
    assert settled["status"] == "SETTLED" and settled["settlement"]["final"] is True
    assert settled["settlement"]["tx_hash"] == data["tx_hash"]
    assert "confirmations: final" in ok(invoke("session", "status", str(one))).stdout
    due = ok_json(invoke("--json", "host", "settle", "--due", "--account", f"test:{HOST}"))
    assert [s["session_id"] for s in due["sessions"]] == [closing]  # not the running one
    status = ok_json(invoke("--json", "session", "status", str(running)))
    assert status["status"] == "ACTIVE"
    # Not this host's session: refused with a reason, nothing sent.
    user_error(invoke("host", "settle", str(running), "--account", "test:6"), "NOT_AUTHORIZED")
    assert "give SESSION_ID" in invoke("host", "settle", "--account", f"test:{HOST}").stderr


def test_admin_pause_unpause_and_token(local_chain: ChainInfo, host_registered: str) -> None:
    admin = ("--account", f"test:{DEPLOYER}")
    user_error(invoke("admin", "pause", "--account", f"test:{CLIENT}"), "does not hold PAUSER_ROLE")
    assert ok_json(invoke("--json", "admin", "pause", *admin))["paused"] is True
    with pytest.raises(Exception, match="paused"):
        _open(local_chain)
    assert ok_json(invoke("--json", "admin", "unpause", *admin))["paused"] is False
    _open(local_chain)

    data = ok_json(invoke("--json", "admin", "token", "USDC", "--min-deposit", "2.0", *admin))
    assert data["accepted"] is True and data["min_deposit_raw"] == 2_000_000
    with pytest.raises(Exception, match=r"DEPOSIT_TOO_LOW|minimum"):
        _open(local_chain)  # 1.0 is now below the minimum
    ok(invoke("admin", "token", "USDC", "--min-deposit", "1.0", *admin))
    user_error(
        invoke("admin", "token", "USDC", "--account", f"test:{CLIENT}"),
        "does not hold TOKEN_ADMIN_ROLE",
    )


def test_cli_through_a_throttling_rpc(local_chain: ChainInfo, host_registered: str) -> None:
    """30% of requests answered 429 (Retry-After), the first eth_chainId always: every
    command still answers."""
    with FaultProxy(local_chain.rpc_url, seed=7) as proxy:
        net = ("--network", proxy.url)
        proxy.fail_next(1, status=429, retry_after=0.2, methods="eth_chainId")
        proxy.fail_next(-1, status=429, retry_after=0.05, rate=0.3)
        commands = [
            ("balance", address_of(CLIENT)),
            ("treasury", "info"),
            ("host", "list"),
            ("host", "status", address_of(HOST)),
            ("session", "status", "1"),
            ("session", "list", address_of(CLIENT)),
            ("deployments", "show"),
            ("models", "list", "--on-chain"),
            ("balance", address_of(HOST), "--token", "ETH"),
        ]
        for args in commands:
            ok(invoke("--json", *net, *args))
        assert proxy.injected["status"] >= 3
