"""Base (OP stack) charges an L1 data fee on top of L2 gas: the cost of posting the
transaction's bytes to Ethereum. It is read from the GasPriceOracle predeploy, so
cost estimates (CLI output, settlement batching, the deploy budget) can include it.
Chains without the predeploy (anvil, Ethereum) have no L1 fee: 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak

from fabstir.chain.client import ChainClient

#: OP-stack predeploy that prices the L1 data part of a transaction.
GAS_PRICE_ORACLE = "0x420000000000000000000000000000000000000F"
_GET_L1_FEE = keccak(text="getL1Fee(bytes)")[:4]


@dataclass(frozen=True)
class TxCost:
    """What one transaction costs at most, in wei."""

    gas: int
    max_fee_per_gas: int
    l1_fee: int

    @property
    def l2_fee(self) -> int:
        return self.gas * self.max_fee_per_gas

    @property
    def total(self) -> int:
        return self.l2_fee + self.l1_fee


def has_l1_fee(client: ChainClient) -> bool:
    """Whether the chain has the GasPriceOracle predeploy (an OP-stack chain)."""
    w3 = client.w3
    code = client.retry.run(lambda: w3.eth.get_code(GAS_PRICE_ORACLE), "eth_getCode")  # type: ignore[arg-type]
    return len(code) > 0


def l1_fee(client: ChainClient, tx_bytes: bytes) -> int:
    """The L1 data fee (wei) of a transaction whose unsigned RLP bytes are `tx_bytes`
    (0 on a chain without the predeploy)."""
    if not has_l1_fee(client):
        return 0
    w3 = client.w3
    data = _GET_L1_FEE + abi_encode(["bytes"], [tx_bytes])
    raw: Any = client.retry.run(
        lambda: w3.eth.call({"to": GAS_PRICE_ORACLE, "data": data}),  # type: ignore[typeddict-item]
        "GasPriceOracle.getL1Fee",
    )
    (fee,) = abi_decode(["uint256"], bytes(raw))
    return int(fee)


def tx_cost(client: ChainClient, tx: dict[str, Any]) -> TxCost:
    """The most a built transaction (web3 dict with gas and maxFeePerGas) can cost,
    L1 data fee included. Priced on the transaction signed by a throw-away key: the
    oracle adds room for a signature to unsigned bytes, so this errs a little high."""
    from eth_account import Account

    fields = {k: v for k, v in tx.items() if k != "from"}
    raw = bytes(Account.create().sign_transaction(fields).raw_transaction)
    return TxCost(int(tx["gas"]), int(tx.get("maxFeePerGas", 0)), l1_fee(client, raw))
