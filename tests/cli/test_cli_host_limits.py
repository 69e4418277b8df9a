"""Two host/SDK items of the live-chain work, on the CLI suite's local deployment:

- `fabstir host withdraw --to ADDRESS` (and the SDK's `withdraw_earnings(token,
  to=...)`) pays the host's earnings to another address with HostEarnings.withdrawTo;
- the SDK's pre-flight reads the marketplace's `maxDuration()` (cached per SDK), so a
  session longer than this deployment allows is refused before any transaction.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from support.cli import CLIENT, HOST, address_of, invoke, ok, ok_json, usage_error, user_error
from support.cli import test_key as key_of
from web3 import Web3

from fabstir.chain.local import ChainInfo, free_port
from fabstir.chain.marketplace import MAX_DURATION
from fabstir.protocol.receipts import sign_receipt
from fabstir.sdk.config import SDKConfig
from fabstir.sdk.errors import SDKError, SDKErrorCode
from fabstir.sdk.sdk import FabstirSDK

PAYEE = 3


def _sdk(chain: ChainInfo, index: int) -> FabstirSDK:
    sdk = FabstirSDK(SDKConfig(rpc_url=chain.rpc_url, chain_id=chain.chain_id))
    sdk.authenticate(key_of(index))
    return sdk


@pytest.fixture(scope="module")
def host_earned(local_chain: ChainInfo, deployed: dict[str, Any]) -> str:
    """The host registered, one session of the client settled with a signed receipt
    for 1,000 tokens (no worker needed): the host's earnings, as shown."""
    ok(invoke("host", "register", "--account", f"test:{HOST}",
              "--url", f"ws://127.0.0.1:{free_port()}"))  # fmt: skip
    client = _sdk(local_chain, CLIENT)
    started = client.get_session_job_manager().create_session_job(address_of(HOST), "USDC", "1.0")
    sid = started.session_id
    receipt = sign_receipt(key_of(CLIENT), client.receipt_domain(), sid, 1000, b"\x07" * 32)
    host = _sdk(local_chain, HOST)
    host.get_session_job_manager().settle(sid, receipt)
    earned = host.get_host_manager().get_host_earnings(token="USDC")
    assert Decimal(earned) > 0
    return earned


def test_host_withdraw_to_another_address(local_chain: ChainInfo, host_earned: str) -> None:
    host = ("--account", f"test:{HOST}")
    payee = address_of(PAYEE)
    usage_error(invoke("host", "withdraw", "--stake", "--to", payee, *host), "--to")
    user_error(invoke("host", "withdraw", "--to", "0x" + "00" * 20, *host), "INVALID_ADDRESS")
    user_error(invoke("host", "withdraw", "--to", "nope", *host), "INVALID_ADDRESS")
    market = ok_json(invoke("deployments", "show", "--json"))["contracts"]["JobMarketplace"]
    user_error(invoke("host", "withdraw", "--to", market, *host), "INVALID_ADDRESS")

    payee_sdk, host_sdk = _sdk(local_chain, PAYEE), _sdk(local_chain, HOST)
    payee_before = Decimal(payee_sdk.get_payment_manager().get_usdc_balance())
    host_before = Decimal(host_sdk.get_payment_manager().get_usdc_balance())
    data = ok_json(invoke("--json", "host", "withdraw", "--to", payee, *host))
    assert data["to"] == payee and data["amount"] == host_earned
    w3 = Web3(Web3.HTTPProvider(local_chain.rpc_url))
    receipt = w3.eth.get_transaction_receipt(data["tx_hash"])
    assert receipt["status"] == 1
    paid = Decimal(payee_sdk.get_payment_manager().get_usdc_balance()) - payee_before
    assert paid == Decimal(host_earned)
    assert Decimal(host_sdk.get_payment_manager().get_usdc_balance()) == host_before
    assert host_sdk.get_host_manager().get_host_earnings(token="USDC") in ("0", "0.0")
    user_error(invoke("host", "withdraw", "--to", payee, *host), "INSUFFICIENT_BALANCE")

    # The SDK refuses a list of tokens with to= (withdrawTo pays one token).
    with pytest.raises(SDKError) as err:
        host_sdk.get_host_manager().withdraw_earnings(["USDC", "ETH"], to=payee)
    assert err.value.code is SDKErrorCode.INVALID_ARGUMENT


def test_a_session_longer_than_max_duration_is_refused_before_sending(
    local_chain: ChainInfo, host_earned: str
) -> None:
    client = _sdk(local_chain, CLIENT)
    market = client.chain.contract("JobMarketplace", client.get_contract_address("JobMarketplace"))
    longest = int(market.functions.maxDuration().call())
    assert longest < MAX_DURATION  # this deployment's limit (7 d unbonding - 1 h window)

    reads: list[str] = []
    real_call = client.chain.call

    def counting_call(fn: Any, what: str, *args: Any, **kw: Any) -> Any:
        reads.append(what)
        return real_call(fn, what, *args, **kw)

    client.chain.call = counting_call  # type: ignore[method-assign]
    w3 = Web3(Web3.HTTPProvider(local_chain.rpc_url))
    me = address_of(CLIENT)
    nonce = w3.eth.get_transaction_count(me)
    jobs = client.get_session_job_manager()
    for _ in range(2):
        with pytest.raises(SDKError) as err:
            jobs.create_session_job(address_of(HOST), "USDC", "1.0", {"duration": longest + 1})
        assert err.value.code is SDKErrorCode.INVALID_ARGUMENT
        assert "maxDuration" in str(err.value) and str(longest) in str(err.value)
        assert err.value.details["max_duration"] == longest
    assert w3.eth.get_transaction_count(me) == nonce  # nothing signed: no approval either
    assert reads.count("maxDuration") == 1  # read once per SDK

    # Exactly the limit is accepted.
    started = jobs.create_session_job(address_of(HOST), "USDC", "1.0", {"duration": longest})
    assert client.get_session_job_manager().get_session(started.session_id).ends_at > 0
