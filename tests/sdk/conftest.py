"""Fixtures for the SDK's chain managers: the root ``system`` (deploy_system with the
default parameters) with this suite's actors on it, and a factory of FabstirSDK
instances that talk to that anvil over plain JSON-RPC, as a user's SDK would.

Actors (ape's funded test accounts; the roles are the root conftest's):
    deployer  accounts[0]  admin everywhere, holds all FAB (root ``admin``)
    curator   accounts[1]  ModelRegistry curator (root ``curator``)
    treasurer accounts[3]  Treasury.TREASURER_ROLE (root ``treasury``)
    host1     accounts[4]  serves MODEL_A (USDC min 200, ETH min 1 gwei)
    host2     accounts[5]  serves MODEL_A and MODEL_B (USDC min 100)
    host3     accounts[7]  serves MODEL_A (USDC min 100), one settled session of reputation
    alice     accounts[6]  client with 100 USDC (no allowance)
    bob       accounts[9]  client with no USDC
    newhost   accounts[8]  50_000 FAB, not registered (registers through the SDK)
    outsider  root ``outsider``: nothing

docs/sdk.md's examples (test_docs_examples.py) use anvil's keys #6 as the funded client
and #8 as the FAB holder that registers as a host, so alice and newhost keep those
accounts and the hosts take the accounts without a role in ``system`` around them.

The actors are set up per test module (see the root conftest for why not per session);
ape snapshots the chain around every test, so each test starts from this state. SDK
instances are per test (their nonce caches must not outlive a revert).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from ape_ethereum.trace import Trace
from eth_utils.crypto import keccak

from fabstir.chain.params import MOCK, NATIVE, DeployParams, TokenSpec
from fabstir.chain.system import ETH
from fabstir.protocol.receipts import Eip712Domain, sign_receipt
from fabstir.sdk.sdk import FabstirSDK

USDC = 10**6
FAB = 10**18
MIN_STAKE = 1000 * FAB
SETTLEMENT_WINDOW = 3600
UNBONDING = 7 * 24 * 3600

REPO_A, FILE_A = "CohereForAI/TinyVicuna-1B-32k-GGUF", "tiny-vicuna-1b.q4_k_m.gguf"
MODEL_A = "0x0b75a2061e70e736924a30c0a327db7ab719402129f76f631adbd7b7a5a5bced"
REPO_B, FILE_B = "TheBloke/Llama-2-7B-Chat-GGUF", "llama-2-7b-chat.Q4_K_M.gguf"
REPO_P, FILE_P = "pending/Model-GGUF", "pending.gguf"
#: The bytes whose sha256 MODEL_B is registered with (for file-hash checks).
MODEL_B_CONTENT = b"pretend this is a gguf file\n" * 100
MODEL_A_SHA = bytes.fromhex("aa" * 32)


def model_id(repo: str, file: str) -> str:
    return "0x" + keccak(text=f"{repo}/{file}").hex()


@pytest.fixture(autouse=True)
def _quiet_revert_traces(monkeypatch: pytest.MonkeyPatch) -> None:
    """ape-foundry prints a call trace for reverted ape transactions; not wanted here."""
    monkeypatch.setattr(Trace, "show", lambda self, *args, **kwargs: None)


@pytest.fixture(scope="module")
def env(
    system: Any,
    chain: Any,
    accounts: Any,
    admin: Any,
    curator: Any,
    treasury: Any,
    outsider: Any,
    add_system_model: Callable[..., Any],
    register_system_host: Callable[..., Any],
    open_session: Callable[..., int],
) -> SimpleNamespace:
    s, deployer, treasurer = system, admin, treasury
    defaults = DeployParams()
    assert (defaults.fee_bps, defaults.settlement_window, defaults.min_stake) == (
        1000,
        SETTLEMENT_WINDOW,
        MIN_STAKE,
    )
    assert defaults.unbonding_period == UNBONDING
    assert defaults.tokens == (
        TokenSpec("ETH", 18, 5 * 10**14, NATIVE),
        TokenSpec("USDC", 6, 1 * USDC, MOCK),
    )
    host1, host2, host3 = accounts[4], accounts[5], accounts[7]
    alice, bob, newhost = accounts[6], accounts[9], accounts[8]

    add_system_model(
        REPO_A, FILE_A, sha256=MODEL_A_SHA, size=1234, metadata='{"name":"TinyVicuna"}'
    )
    sha_b = hashlib.sha256(MODEL_B_CONTENT).digest()
    add_system_model(REPO_B, FILE_B, sha256=sha_b, size=len(MODEL_B_CONTENT))
    add_system_model(REPO_P, FILE_P, sha256=MODEL_A_SHA, size=1, metadata="not json", approve=False)

    meta = '{"hardware":{"gpu":"H100","vram":80,"ram":256},"location":"eu","costPerToken":%d}'
    for h, served, usdc_price in (
        (host1, [MODEL_A], 200),
        (host2, [MODEL_A, model_id(REPO_B, FILE_B)], 100),
        (host3, [MODEL_A], 100),
    ):
        register_system_host(
            h,
            served,
            {s.usdc.address: usdc_price, ETH: 10**9},
            api_url=f"ws://{h.address.lower()[:10]}.example:8080",
            metadata=meta % usdc_price,
        )
    s.fab.transfer(newhost, 50 * MIN_STAKE, sender=deployer)

    for who, amount in ((alice, 100 * USDC), (deployer, 100 * USDC)):
        s.usdc.mint(who, amount, sender=deployer)

    # host3 earns reputation: one settled session opened by the deployer.
    s.usdc.approve(s.marketplace, 2**256 - 1, sender=deployer)
    one = open_session(deployer, host3, MODEL_A, USDC, 100, from_wallet=True)
    domain = Eip712Domain(chain.chain_id, s.marketplace.address)
    r = sign_receipt(deployer.private_key, domain, one, 500, bytes(32))
    s.marketplace.settleWithReceipt(one, 500, bytes(32), r.signature_bytes, sender=host3)

    return SimpleNamespace(
        system=s,
        addresses=s.addresses(),
        rpc_url=chain.provider.uri,
        chain_id=chain.chain_id,
        domain=domain,
        deployer=deployer,
        curator=curator,
        treasurer=treasurer,
        host1=host1,
        host2=host2,
        host3=host3,
        alice=alice,
        bob=bob,
        newhost=newhost,
        outsider=outsider,
        model_a=MODEL_A,
        model_b=model_id(REPO_B, FILE_B),
        model_pending=model_id(REPO_P, FILE_P),
    )


@pytest.fixture
def make_sdk(env: SimpleNamespace) -> Callable[..., FabstirSDK]:
    """`make_sdk(account=None, **config)`: an SDK on the test chain, authenticated
    as `account` (an ape test account) when given."""

    def _make(account: Any = None, **overrides: Any) -> FabstirSDK:
        config: dict[str, Any] = {
            "rpc_url": env.rpc_url,
            "chain_id": env.chain_id,
            "contract_addresses": env.addresses,
            "use_deployment_file": False,
            "rpc_retries": 2,
        }
        config.update(overrides)
        sdk = FabstirSDK(**config)
        if account is not None:
            sdk.authenticate(account.private_key)
        return sdk

    return _make
