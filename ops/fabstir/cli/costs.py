"""What a command's transactions will cost at most, shown before sending.

On Base (an OP-stack chain) a transaction pays L2 gas plus an L1 data fee for posting
its bytes to Ethereum, priced by the GasPriceOracle predeploy
(`fabstir.chain.l1fee`). The confirmation question on live networks and the
command's --json result both carry the L2 part, the L1 part and the total, so an
operator never approves a price that leaves the larger part out. Chains without
the predeploy (anvil, Ethereum) say so instead of showing a zero that looks priced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from fabstir.chain.l1fee import TxCost, has_l1_fee
from fabstir.sdk.amounts import format_amount

if TYPE_CHECKING:
    from fabstir.cli.context import CliState
    from fabstir.sdk.sdk import FabstirSDK

NO_L1_FEE: Final = "no L1 fee (this chain has no GasPriceOracle predeploy)"
_GWEI: Final = 10**9


def eth(wei: int) -> str:
    return f"{format_amount(wei, 18)} ETH"


@dataclass(frozen=True)
class PricedTx:
    """One transaction the command will send, priced now."""

    what: str
    cost: TxCost

    def to_dict(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "gas": self.cost.gas,
            "max_fee_per_gas_wei": self.cost.max_fee_per_gas,
            "l2_fee_wei": self.cost.l2_fee,
            "l1_fee_wei": self.cost.l1_fee,
            "total_wei": self.cost.total,
        }


@dataclass(frozen=True)
class CommandCost:
    """The most a command's transactions cost (wei), or why it was not estimated."""

    txs: tuple[PricedTx, ...]
    l1_priced: bool
    unavailable: str | None = None

    @property
    def gas(self) -> int:
        return sum(t.cost.gas for t in self.txs)

    @property
    def l2_fee(self) -> int:
        return sum(t.cost.l2_fee for t in self.txs)

    @property
    def l1_fee(self) -> int:
        return sum(t.cost.l1_fee for t in self.txs)

    @property
    def total(self) -> int:
        return self.l2_fee + self.l1_fee

    def to_dict(self) -> dict[str, Any]:
        if self.unavailable is not None:
            return {"estimated": False, "reason": self.unavailable}
        return {
            "estimated": True,
            "gas": self.gas,
            "l2_fee_wei": self.l2_fee,
            "l2_fee": eth(self.l2_fee),
            "l1_fee_wei": self.l1_fee,
            "l1_fee": eth(self.l1_fee) if self.l1_priced else None,
            "l1_fee_note": None if self.l1_priced else NO_L1_FEE,
            "total_wei": self.total,
            "total": eth(self.total),
            "transactions": [t.to_dict() for t in self.txs],
        }

    def describe(self) -> str:
        """One line: 'cost at most T: L2 gas X (G gas at most F gwei) + L1 data fee Y'."""
        if self.unavailable is not None:
            return f"cost not estimated ({self.unavailable})"
        fees = sorted({t.cost.max_fee_per_gas for t in self.txs})
        price = "/".join(format_amount(f, 9) for f in fees) or "0"
        l2 = f"L2 gas {eth(self.l2_fee)} ({self.gas:,} gas at most {price} gwei)"
        l1 = f"L1 data fee {eth(self.l1_fee)}" if self.l1_priced else NO_L1_FEE
        return f"cost at most {eth(self.total)}: {l2} + {l1}"


def estimate_cost(
    sdk: FabstirSDK, calls: Sequence[tuple[str, Any]] | Callable[[], Sequence[tuple[str, Any]]]
) -> CommandCost:
    """Price `calls` ((label, bound contract function) pairs, or a function building
    them) as the SDK's sender would send them now. Signs and sends nothing. A call
    that cannot be built (bad input) or reverts at estimation is not priced: the
    command's own checks then give the reason, before anything is sent."""
    from eth_abi.exceptions import EncodingError
    from web3.exceptions import Web3Exception

    from fabstir.chain.client import ChainError
    from fabstir.cli.context import one_line
    from fabstir.sdk.errors import SDKError

    unpriceable = (ChainError, SDKError, Web3Exception, EncodingError, ValueError, TypeError)

    sender = sdk._require_sender("estimate")
    try:
        built = calls() if callable(calls) else calls
        priced = tuple(PricedTx(what, sender.estimate(fn)) for what, fn in built)
        l1_priced = has_l1_fee(sdk.chain)
    except unpriceable as exc:
        # Web3Exception (MismatchedABI, ...): web3 refusing an argument while building
        # the call (the SDK's own checks then name it properly).
        return CommandCost((), False, unavailable=f"the estimate failed: {one_line(exc)}")
    return CommandCost(priced, l1_priced)


def confirm_priced(
    st: CliState,
    sdk: FabstirSDK,
    action: str,
    calls: Sequence[tuple[str, Any]] | Callable[[], Sequence[tuple[str, Any]]],
) -> CommandCost:
    """Price the command's transactions, then ask (live networks) with that price."""
    cost = estimate_cost(sdk, calls)
    st.confirm(action, cost)
    return cost
