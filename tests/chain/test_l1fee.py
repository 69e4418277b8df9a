"""Base's L1 data fee in cost estimates, on a chain-id 84532 rehearsal anvil whose
GasPriceOracle predeploy holds a STAND-IN (contracts/test/GasPriceOracleStandIn.sol):
Base itself cannot be reached from here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.base_chain import place_gas_price_oracle_stand_in
from web3 import Web3

from fabstir.chain.abi import load_abi
from fabstir.chain.client import ChainClient
from fabstir.chain.l1fee import has_l1_fee, l1_fee
from fabstir.chain.local import ChainInfo, LocalChain, free_port
from fabstir.chain.local import test_private_key as key_of
from fabstir.chain.transactions import TxSender

GWEI = 10**9


@pytest.fixture
def base_rehearsal(tmp_path: Path, project: Any) -> Iterator[ChainInfo]:
    lc = LocalChain(tmp_path / "base")
    info = lc.up(port=free_port(), chain_id=84532, persist=False)
    try:
        place_gas_price_oracle_stand_in(info.rpc_url, project, 20 * GWEI)  # 20 gwei on L1
        yield info
    finally:
        lc.down()


def test_l1_fee_is_part_of_the_estimate_on_base(
    base_rehearsal: ChainInfo, anvil: ChainInfo, usdc_address: str, project: Any
) -> None:
    client = ChainClient(base_rehearsal.rpc_url, {})
    assert has_l1_fee(client)
    small, big = l1_fee(client, b"\x01" * 10), l1_fee(client, b"\x01" * 1000)
    assert 0 < small < big  # priced by the bytes posted to L1
    assert l1_fee(client, b"\x00" * 1000) < big  # zero bytes are cheaper

    # A real transaction's estimate: L2 gas at the max fee plus the L1 data fee.
    w3 = Web3(Web3.HTTPProvider(base_rehearsal.rpc_url))
    deployer = w3.eth.account.from_key(key_of(0))
    bytecode = project.MockERC20.contract_type.deployment_bytecode.bytecode
    token = w3.eth.contract(abi=load_abi("MockERC20"), bytecode=bytecode)
    tx = token.constructor("Mock USD Coin", "USDC", 6).build_transaction(
        {"from": deployer.address, "nonce": 0}
    )
    h = w3.eth.send_raw_transaction(deployer.sign_transaction(tx).raw_transaction)
    address = w3.eth.wait_for_transaction_receipt(h)["contractAddress"]
    client = ChainClient(base_rehearsal.rpc_url, {"USDC": address})
    sender = TxSender(client, key_of(1))
    cost = sender.estimate(client.contract("USDC").functions.mint(sender.address, 1))
    assert cost.l1_fee > 0 and cost.total == cost.gas * cost.max_fee_per_gas + cost.l1_fee

    # The same on a chain without the predeploy: no L1 fee.
    plain = TxSender(ChainClient(anvil.rpc_url, {"USDC": usdc_address}), key_of(1))
    assert (
        plain.estimate(plain.client.contract("USDC").functions.mint(plain.address, 1)).l1_fee == 0
    )
