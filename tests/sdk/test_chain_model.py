"""The marketplace's data model in `fabstir.chain.marketplace` is the contracts' own:
the constants read back from a deployed JobMarketplace, the enums and storage
widths read from the Solidity source, a decoded session, and settleBatch items."""

from __future__ import annotations

import re
from enum import IntEnum
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fabstir.chain import marketplace as model
from fabstir.chain.marketplace import ModelStatus, OnChainSession, Outcome, SettleItem, Status
from fabstir.protocol.receipts import sign_receipt
from fabstir.sdk.errors import SDKError, SDKErrorCode
from fabstir.sdk.preflight import SessionPlan, SessionPreflight
from fabstir.sdk.types import ReceiptOutcome, SessionConfig, SessionStatus

CONTRACTS = Path(__file__).resolve().parents[2] / "contracts"


def _solidity() -> str:
    return "\n".join(p.read_text("utf-8") for p in sorted(CONTRACTS.rglob("*.sol")))


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()


@pytest.mark.parametrize(
    ("enum", "source_name", "contract"),
    [(Status, "Status", "JobMarketplace"), (Outcome, "Outcome", "JobMarketplace"),
     (ModelStatus, "Status", "ModelRegistry")],
)  # fmt: skip
def test_enums_are_the_contracts(enum: type[IntEnum], source_name: str, contract: str) -> None:
    # The enum as declared in the contract or its interface (whichever holds it).
    texts = [p.read_text("utf-8") for p in CONTRACTS.rglob("*.sol") if contract in p.name]
    bodies = [
        m.group(1)
        for text in texts
        for m in re.finditer(rf"enum {source_name}\s*\{{([^}}]*)\}}", text)
    ]
    assert bodies, f"no enum {source_name} in {contract}"
    members = [_snake(n.strip()) for n in bodies[0].split(",") if n.strip()]
    assert [m.name for m in enum] == members
    assert [m.value for m in enum] == list(range(len(members)))


def test_sdk_names_are_the_same_enums() -> None:
    assert SessionStatus is Status and ReceiptOutcome is Outcome


def test_storage_widths_are_the_session_structs() -> None:
    source = _solidity()
    for solidity_type, field, limit in (
        ("uint64", "pricePerToken", model.MAX_PRICE_PER_TOKEN),
        ("uint24", "proofInterval", model.MAX_PROOF_INTERVAL),
        ("uint40", "maxTokens", model.MAX_SESSION_TOKENS),
    ):
        assert re.search(rf"\b{solidity_type} {field};", source), field
        assert limit == 2 ** int(solidity_type[4:]) - 1


def test_constants_are_the_deployed_contracts(env: SimpleNamespace) -> None:
    market = env.system.marketplace
    assert market.MAX_BATCH() == model.MAX_BATCH
    assert market.MIN_DURATION() == model.MIN_DURATION
    assert market.MAX_DURATION() == model.MAX_DURATION


def test_get_session_decodes(env: SimpleNamespace) -> None:
    # Session 1 of the fixture: opened by the deployer with no session key,
    # settled by host3 with a receipt for 500 tokens.
    s = OnChainSession.from_tuple(env.system.marketplace.getSession(1))
    assert (s.session_id, s.status, s.tokens_used) == (1, Status.SETTLED, 500)
    assert s.host == env.host3.address and s.depositor == env.deployer.address
    assert s.signer == env.deployer.address and not s.is_open
    assert s.model_id == env.model_a.lower() and s.price == 100


def test_settle_item_carries_one_receipt(env: SimpleNamespace) -> None:
    receipt = sign_receipt(env.deployer.private_key, env.domain, 4, 10, bytes(32))
    assert SettleItem.of(receipt).as_tuple() == receipt.call_args()
    assert SettleItem.of(receipt).tokens_used == 10
    assert SettleItem(4).as_tuple() == (4, 0, bytes(32), b"") and SettleItem(4).tokens_used == 0
    with pytest.raises(SDKError) as info:
        SettleItem(5, receipt)
    assert info.value.code is SDKErrorCode.INVALID_ARGUMENT


def test_preflight_returns_a_typed_plan(env: SimpleNamespace, make_sdk: Any) -> None:
    """The pre-flight plan is what the contract will store and what the wallet adds:
    a deposit of 2.00005 USDC at 300 per token escrows whole tokens' worth only."""
    sdk = make_sdk(env.alice)
    usdc = sdk._token("USDC")
    config = SessionConfig(deposit_amount="2.00005", price_per_token=300, proof_interval=100)
    balance = sdk.get_payment_manager()._call(
        sdk._contract("JobMarketplace").functions.balanceOf(env.alice.address, usdc.address), "b"
    )
    plan = SessionPreflight(sdk).plan(
        env.alice.address, env.host1.address, usdc, 2_000_050, config, None
    )
    assert isinstance(plan, SessionPlan)
    assert plan.model_id == env.model_a.lower() and plan.host == env.host1.address
    assert plan.max_tokens == 2_000_050 // 300 == 6666
    assert plan.escrow == 6666 * 300 == 1_999_800
    assert (plan.balance, plan.from_wallet) == (balance, max(0, 1_999_800 - balance))
    assert (plan.duration, plan.proof_interval, plan.price_per_token) == (
        config.duration,
        100,
        300,
    )
