"""Fixtures for the chain-level suite: a fresh anvil per test (started with
LocalChain on a free port, so automine, reorgs and base fees can be changed without
touching ape's own chain), a MockUSDC deployed on it from the compiled artifact, and
the fault-injecting proxy of tests/support in front of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from support.rpc_proxy import FaultProxy
from web3 import Web3

from fabstir.chain.abi import load_abi
from fabstir.chain.client import ChainClient, RetryPolicy
from fabstir.chain.local import ChainInfo, LocalChain, free_port, test_private_key


@pytest.fixture
def anvil(tmp_path: Path) -> Iterator[ChainInfo]:
    lc = LocalChain(tmp_path / "chain")
    info = lc.up(port=free_port(), persist=False)
    yield info
    lc.down()


@pytest.fixture
def usdc_address(anvil: ChainInfo, project: Any) -> str:
    """A 6-decimal mock USDC (MockERC20) deployed on the test's anvil (account 0), from ape's compiled artifact."""
    w3 = Web3(Web3.HTTPProvider(anvil.rpc_url))
    deployer = w3.eth.account.from_key(test_private_key(0))
    bytecode = project.MockERC20.contract_type.deployment_bytecode.bytecode
    factory = w3.eth.contract(abi=load_abi("MockERC20"), bytecode=bytecode)
    tx = factory.constructor("Mock USD Coin", "USDC", 6).build_transaction(
        {"from": deployer.address, "nonce": w3.eth.get_transaction_count(deployer.address)}
    )
    tx_hash = w3.eth.send_raw_transaction(deployer.sign_transaction(tx).raw_transaction)
    return str(w3.eth.wait_for_transaction_receipt(tx_hash)["contractAddress"])


@pytest.fixture
def proxy(anvil: ChainInfo) -> Iterator[FaultProxy]:
    with FaultProxy(anvil.rpc_url) as p:
        yield p


@pytest.fixture
def make_client(usdc_address: str) -> Any:
    def make(url: str | list[str], attempts: int = 3) -> ChainClient:
        return ChainClient(
            url,
            {"USDC": usdc_address},
            timeout=2.0,
            retry=RetryPolicy(attempts=attempts, first_delay=0.05, max_delay=0.2),
        )

    return make


@pytest.fixture
def ns(anvil: ChainInfo, usdc_address: str) -> SimpleNamespace:
    w3 = Web3(Web3.HTTPProvider(anvil.rpc_url))
    return SimpleNamespace(
        url=anvil.rpc_url,
        w3=w3,
        usdc=w3.eth.contract(
            address=Web3.to_checksum_address(usdc_address), abi=load_abi("MockERC20")
        ),
        key=test_private_key(1),
        address=w3.eth.account.from_key(test_private_key(1)).address,
    )
