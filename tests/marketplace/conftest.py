"""Fixtures for the escrow marketplace suite; helpers and constants live in
tests/support (marketplace.py, reverts.py)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import ape
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

from fabstir.chain.params import DeployParams
from fabstir.chain.system import ETH


@pytest.fixture(scope="session")
def keyholder(accounts: Any, admin: Any) -> Any:
    """A funded account with no role, used as a session key that sends its own txs."""
    account = accounts.generate_test_account()
    admin.transfer(account, 100 * 10**18)
    return account


@pytest.fixture(scope="module")
def env(
    project: Any,
    system: Any,
    admin: Any,
    curator: Any,
    slasher: Any,
    treasury: Any,
    hosts: list[Any],
    clients: list[Any],
    outsider: Any,
    keyholder: Any,
    add_system_model: Callable[..., Any],
    register_system_host: Callable[..., Any],
    fund_client: Callable[..., None],
) -> Env:
    """The root ``system`` with this suite's actors: two models, two hosts, funded
    clients (the suite's constants are the default deploy parameters). Module scoped,
    as every suite's actors on ``system`` (the root conftest says why)."""
    defaults = DeployParams()
    assert (defaults.fee_bps, defaults.settlement_window, defaults.min_stake) == (
        FEE_BPS,
        SETTLEMENT_WINDOW,
        MIN_STAKE,
    )
    assert [(t.symbol, t.min_deposit) for t in defaults.tokens] == [
        ("ETH", ETH_MIN_DEPOSIT),
        ("USDC", USDC_MIN_DEPOSIT),
    ]
    s, deployer, treasurer = system, admin, treasury
    host, host2 = hosts[0], hosts[1]
    alice, bob, mallory = clients
    payee = outsider

    for repo, file in ((MODEL_REPO, MODEL_FILE), (OTHER_MODEL_REPO, OTHER_MODEL_FILE)):
        add_system_model(repo, file, sha256=keccak(text=file), size=1234)

    # host serves MODEL only; host2 serves both.
    for h, served in ((host, [MODEL_ID]), (host2, [MODEL_ID, OTHER_MODEL_ID])):
        register_system_host(
            h,
            served,
            {ETH: HOST_ETH_MIN_PRICE, s.usdc.address: HOST_USDC_MIN_PRICE},
            stake=MIN_STAKE,
            fund=2 * MIN_STAKE,
            api_url=f"wss://{h.address.lower()}.example",
            metadata='{"gpu":"test"}',
        )

    for user in (alice, bob, mallory, host, host2):
        fund_client(user, 1000 * USDC_UNIT)

    return Env(
        deployer=deployer,
        curator=curator,
        slasher=slasher,
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


# Keys only, nothing on chain: chain_isolation=False tells ape so, and a test first
# asking for one mid-module then does not make ape rebuild the module's env (a rebase).
@ape.fixture(scope="session", chain_isolation=False)
def session_key() -> Any:
    """A throw-away receipt key (never needs ETH: the host submits)."""
    return Account.from_key(keccak(text="fabstir test session key"))


@ape.fixture(scope="session", chain_isolation=False)
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
