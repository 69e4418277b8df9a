"""A chain-id 84532 anvil made to look like Base Sepolia where a test needs it:
Base's GasPriceOracle predeploy (a STAND-IN, contracts/test/GasPriceOracleStandIn.sol:
Base itself cannot be reached from here) and Circle's USDC address holding MockUSDC's
code. A plain module: import it as `support.base_chain`."""

from __future__ import annotations

from typing import Any

from support.anvil import rpc

from fabstir.chain.l1fee import GAS_PRICE_ORACLE

GWEI = 10**9


def place_gas_price_oracle_stand_in(url: str, project: Any, l1_base_fee: int = 20 * GWEI) -> None:
    """The stand-in oracle at the predeploy address, pricing with `l1_base_fee` (wei)."""
    code = project.GasPriceOracleStandIn.contract_type.runtime_bytecode.bytecode
    rpc(url, "anvil_setCode", GAS_PRICE_ORACLE, code)
    # l1BaseFee is the stand-in's storage slot 0.
    rpc(
        url,
        "anvil_setStorageAt",
        GAS_PRICE_ORACLE,
        "0x0",
        "0x" + l1_base_fee.to_bytes(32, "big").hex(),
    )


def _short_string_slot(text: str) -> str:
    """Solidity storage of a string under 32 bytes: the bytes, then length * 2."""
    raw = text.encode()
    return "0x" + (raw + b"\x00" * (31 - len(raw)) + bytes([2 * len(raw)])).hex()


def place_usdc(url: str, project: Any, address: str) -> None:
    """A 6-decimal ERC20 named USDC at `address` (Base Sepolia's USDC is an existing
    contract, so the live params name it instead of deploying a mock)."""
    rpc(url, "anvil_setCode", address, project.MockUSDC.contract_type.runtime_bytecode.bytecode)
    rpc(url, "anvil_setStorageAt", address, hex(3), _short_string_slot("USDC"))
    rpc(url, "anvil_setStorageAt", address, hex(4), _short_string_slot("USDC"))
