"""A third payment token from the params file alone.

`tests/cli/three_tokens.json` is the local params plus one more row: an 18-decimal
stablecoin deployed as a mock. This module deploys it with `fabstir deploy --params`,
registers the host with a price in it, and runs a paid session in it through the SDK
and through the CLI, against a real worker serving the bundled model. The token's
symbol, decimals and minimum deposit are read from the JSON file: no Python file
names the token, so adding one needs no code change.
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from support.cli import (
    CLIENT,
    HOST,
    address_of,
    invoke,
    ok,
    ok_json,
    test_key,
    usage_error,
    user_error,
)

from fabstir import models
from fabstir.chain.local import ChainInfo
from fabstir.sdk.config import SDKConfig
from fabstir.sdk.sdk import FabstirSDK

PARAMS = Path(__file__).with_name("three_tokens.json")
ROW = json.loads(PARAMS.read_text())["tokens"][2]
SYMBOL, DECIMALS, MIN_DEPOSIT = ROW["symbol"], ROW["decimals"], ROW["min_deposit"]
ONE = 10**DECIMALS
# The host's minimum price per generated token: 0.000001 of the token.
PRICE = ONE // 10**6
SDK_CLIENT = 9

pytestmark = pytest.mark.usefixtures("worker")


@pytest.fixture(scope="module")
def deploy_args() -> tuple[str, ...]:
    return ("--params", str(PARAMS))


@pytest.fixture(scope="module")
def host_prices() -> tuple[str, ...]:
    return ("200", f"{SYMBOL}={PRICE}")


def test_the_row_is_a_token_the_checked_in_params_do_not_have() -> None:
    local = json.loads((PARAMS.parents[2] / "deployments" / "params" / "local.json").read_text())
    assert SYMBOL not in {t["symbol"] for t in local["tokens"]}
    assert DECIMALS == 18 and ROW["address"] == "mock"


def test_deploy_records_configures_and_seeds_the_token(deployed: dict[str, Any]) -> None:
    shown = ok_json(invoke("deployments", "show", "--json"))
    row = next(t for t in shown["tokens"] if t["symbol"] == SYMBOL)
    assert row["decimals"] == DECIMALS and row["mock"] is True
    assert row["min_deposit"] == MIN_DEPOSIT and row["address"] == deployed["contracts"][SYMBOL]
    assert [t["symbol"] for t in shown["tokens"]][2] == SYMBOL
    assert f"{SYMBOL}  " in ok(invoke("deployments", "show")).stdout
    # `--seed` minted 10,000 of it to the test accounts.
    balance = ok_json(invoke("balance", "--account", f"test:{CLIENT}", "--token", SYMBOL, "--json"))
    assert balance["symbol"] == SYMBOL and Decimal(balance["wallet"]) == 10_000
    # The host's price in it is on chain, and `host list` shows a column for it.
    listed = ok(invoke("host", "list")).stdout
    assert f"{SYMBOL} price" in listed and str(PRICE) in listed


def _sdk(local_chain: ChainInfo, cli_home: Path, account: int) -> FabstirSDK:
    sdk = FabstirSDK(
        SDKConfig(
            rpc_url=local_chain.rpc_url,
            chain_id=local_chain.chain_id,
            deployments_dir=cli_home / "deployments",
            storage_dir=cli_home / f"sdk-storage-{account}",
        )
    )
    sdk.authenticate(test_key(account))
    return sdk


def _host_owed(sdk: FabstirSDK) -> Decimal:
    return Decimal(sdk.get_host_manager().get_host_earnings(address_of(HOST), SYMBOL))


def test_a_paid_session_in_the_token_through_the_sdk(
    local_chain: ChainInfo, cli_home: Path
) -> None:
    sdk = _sdk(local_chain, cli_home, SDK_CLIENT)
    token = sdk.get_token(SYMBOL)
    assert (token.symbol, token.decimals) == (SYMBOL, DECIMALS)
    pm = sdk.get_payment_manager()
    assert Decimal(pm.get_min_deposit(SYMBOL)) == Decimal(MIN_DEPOSIT) / ONE
    pm.deposit("2", SYMBOL)
    owed_before = _host_owed(sdk)

    async def session() -> Any:
        sm = sdk.get_session_manager()
        try:
            started = await sm.start_session(
                models.find().model_id,
                address_of(HOST),
                {"depositAmount": "1", "pricePerToken": PRICE, "proofInterval": 50},
                payment_token=SYMBOL,
            )
            assert started.deposit == "1.0"
            answer = await sm.send_prompt(started.session_id, "Say hello.", max_tokens=12)
            assert answer.strip()
            return await sm.complete_session(started.session_id)
        finally:
            await sm.close_all()

    result = asyncio.run(session())
    assert result.status.name == "SETTLED" and result.settled_by_host
    assert result.tokens_used > 0
    cost, refund = Decimal(result.cost), Decimal(result.refund)
    assert cost == Decimal(result.tokens_used * PRICE) / ONE and cost + refund == 1
    # The refund is back in the client's balance; the host is owed 90 % of the cost.
    assert Decimal(pm.get_deposited_balance(SYMBOL)) == 1 + refund
    assert _host_owed(sdk) - owed_before == cost * 9 / 10


def test_a_paid_session_in_the_token_through_the_cli() -> None:
    me = ("--account", f"test:{CLIENT}")
    ok(invoke("deposit", "2", "--token", SYMBOL, *me))
    started = ok_json(
        invoke(
            "session", "start", *me, "--token", SYMBOL, "--deposit", "1",
            "--proof-interval", "50", "--json",
        )
    )  # fmt: skip
    assert started["token"] == SYMBOL and started["price_per_token"] == PRICE
    sid = str(started["session_id"])
    sent = ok_json(
        invoke("session", "send", sid, "Count to three.", "--max-tokens", "8", "--json", *me)
    )
    assert sent["answer"] and sent["session_tokens"] > 0
    closed = ok_json(invoke("session", "close", sid, "--json", *me))
    assert closed["status"] == "SETTLED" and closed["settled_by_host"] is True
    cost, refund = Decimal(closed["cost"]), Decimal(closed["refund"])
    assert cost == Decimal(closed["tokens_used"] * PRICE) / ONE and cost + refund == 1
    balance = ok_json(invoke("balance", *me, "--token", SYMBOL, "--json"))
    assert Decimal(balance["deposited"]) == 1 + refund and Decimal(balance["escrowed"]) == 0


def test_host_and_treasury_withdraw_in_the_token(deployed: dict[str, Any]) -> None:
    host = ("--account", f"test:{HOST}")
    address = deployed["contracts"][SYMBOL]
    status = ok_json(invoke("host", "status", *host, "--json"))
    owed = Decimal(status["earnings_by_token"][address])
    assert owed > 0 and status["reputation"]["sessions_settled"] == 2
    shown = status["earnings_by_token"][address]
    assert f"{shown} {SYMBOL}" in ok(invoke("host", "status", *host)).stdout
    paid = ok_json(invoke("host", "withdraw", *host, "--token", SYMBOL, "--json"))
    assert Decimal(paid["amount"]) == owed
    fees = Decimal(ok_json(invoke("treasury", "info", "--token", SYMBOL, "--json"))["balance"])
    assert fees * 9 == owed  # 10 % of what both sessions cost
    wallet = ok_json(invoke("balance", *host, "--token", SYMBOL, "--json"))["wallet"]
    assert Decimal(wallet) == 10_000 + owed


def test_prices_name_listed_tokens_only() -> None:
    host = ("--account", f"test:{HOST}", "--yes")
    user_error(invoke("host", "update", *host, "--price", "NOPE=5"), "NOPE")
    usage_error(invoke("host", "update", *host, "--price", f"{SYMBOL}=lots"), "SYMBOL=N")
    usage_error(invoke("host", "update", *host, "--price", "-1"), "SYMBOL=N")
    # A listed symbol in any case; the price lands on chain in that token only.
    ok(invoke("host", "update", *host, "--price", f"{SYMBOL.lower()}={PRICE * 2}"))
    info = ok_json(invoke("host", "status", address_of(HOST), "--json"))
    tokens = {
        t["symbol"]: t["address"]
        for t in ok_json(invoke("deployments", "show", "--json"))["tokens"]
    }
    assert info["min_prices"][tokens[SYMBOL]] == PRICE * 2
    assert info["min_prices"][tokens["USDC"]] == 200
