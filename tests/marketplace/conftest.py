"""Fixtures for the escrow marketplace suite; helpers and constants live in
tests/support (marketplace.py, reverts.py)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from ape_ethereum.trace import Trace
from eth_account import Account
from eth_utils import keccak
from support.marketplace import (
    ETH_MIN_DEPOSIT,
    FEE_BPS,
    HOST_ETH_MIN_PRICE,
    HOST_USDC_MIN_PRICE,
    MIN_STAKE,
    MODEL_FILE,
    MODEL_ID,
    MODEL_REPO,
    OTHER_MODEL_FILE,
    OTHER_MODEL_ID,
    OTHER_MODEL_REPO,
    SETTLEMENT_WINDOW,
    USDC_MIN_DEPOSIT,
    USDC_UNIT,
    Env,
)

from fabstir.chain.params import MOCK, NATIVE, DeployParams, TokenSpec
from fabstir.chain.system import ETH, Roles, deploy_system


@pytest.fixture(scope="session")
def env(project: Any, accounts: Any) -> Env:
    deployer, curator, treasurer, host, host2, alice, bob, mallory, payee, keyholder = accounts[:10]
    params = DeployParams(
        fee_bps=FEE_BPS,
        settlement_window=SETTLEMENT_WINDOW,
        min_stake=MIN_STAKE,
        tokens=(
            TokenSpec("ETH", 18, ETH_MIN_DEPOSIT, NATIVE),
            TokenSpec("USDC", 6, USDC_MIN_DEPOSIT, MOCK),
        ),
    )
    roles = Roles(curator=curator, slasher=curator, treasurer=treasurer)
    s = deploy_system(project, deployer, params, roles)

    for repo, file in ((MODEL_REPO, MODEL_FILE), (OTHER_MODEL_REPO, OTHER_MODEL_FILE)):
        s.model_registry.addModel(repo, file, keccak(text=file), 1234, "{}", sender=curator)
        s.model_registry.approveModel(keccak(text=f"{repo}/{file}"), sender=curator)

    # host serves MODEL only; host2 serves both.
    for h, served in ((host, [MODEL_ID]), (host2, [MODEL_ID, OTHER_MODEL_ID])):
        s.fab.transfer(h, 2 * MIN_STAKE, sender=deployer)
        s.fab.approve(s.node_registry, 2 * MIN_STAKE, sender=h)
        s.node_registry.register(
            MIN_STAKE,
            f"wss://{h.address.lower()}.example",
            '{"gpu":"test"}',
            served,
            [ETH, s.usdc.address],
            [HOST_ETH_MIN_PRICE, HOST_USDC_MIN_PRICE],
            sender=h,
        )

    for user in (alice, bob, mallory, host, host2):
        s.usdc.mint(user, 1000 * USDC_UNIT, sender=deployer)
        s.usdc.approve(s.marketplace, 2**256 - 1, sender=user)

    return Env(
        deployer=deployer,
        curator=curator,
        treasurer=treasurer,
        host=host,
        host2=host2,
        alice=alice,
        bob=bob,
        mallory=mallory,
        payee=payee,
        keyholder=keyholder,
        project=project,
        fab=s.fab,
        usdc=s.usdc,
        models=s.model_registry,
        nodes=s.node_registry,
        proofs=s.proof_system,
        earnings=s.host_earnings,
        treasury=s.treasury,
        mk=s.marketplace,
    )


@pytest.fixture
def mk(env: Env) -> Any:
    return env.mk


@pytest.fixture
def usdc(env: Env) -> Any:
    return env.usdc


@pytest.fixture(scope="session")
def session_key() -> Any:
    """A throw-away receipt key (never needs ETH: the host submits)."""
    return Account.from_key(keccak(text="fabstir test session key"))


@pytest.fixture(scope="session")
def other_key() -> Any:
    return Account.from_key(keccak(text="fabstir test other key"))


@pytest.fixture(autouse=True)
def _quiet_revert_traces(monkeypatch: pytest.MonkeyPatch) -> None:
    """ape-foundry prints a full call trace for every reverted transaction (about
    0.3 s each: a debug trace plus rendering). This suite expects hundreds of
    reverts and checks each one's exact error, so the printout is skipped here;
    set FABSTIR_SHOW_TRACES=1 to get it back when debugging."""
    if os.environ.get("FABSTIR_SHOW_TRACES") != "1":
        monkeypatch.setattr(Trace, "show", lambda self, *args, **kwargs: None)
