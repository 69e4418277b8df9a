"""TreasuryManager: the protocol fee ledger (Treasury contract).

The marketplace credits the treasury its fee at each settlement (bookkeeping:
the tokens stay in the marketplace vault); an account holding TREASURER_ROLE
withdraws them to any address.
"""

from __future__ import annotations

from eth_utils.crypto import keccak

from fabstir.sdk._base import ZERO_ADDRESS, ManagerBase, check_address, fail
from fabstir.sdk.errors import SDKErrorCode
from fabstir.sdk.types import TreasuryInfo

TREASURER_ROLE = "0x" + keccak(text="TREASURER_ROLE").hex()


class TreasuryManager(ManagerBase):
    """Treasury figures and withdrawals (the reference's TreasuryManager)."""

    def _tokens(self) -> list[str]:
        market = self._contract("JobMarketplace")
        return [str(t) for t in self._call(market.functions.tokens(), "tokens")]

    def get_fee_bps(self) -> int:
        """The marketplace fee in basis points (1000 = 10 %), fixed at deploy."""
        treasury = self._contract("Treasury")
        return int(self._call(treasury.functions.feeBps(), "feeBps"))

    def get_treasury_info(self, token: str | None = "USDC") -> TreasuryInfo:
        """The treasury's address, fee, and balance / total collected in `token`,
        plus both figures for every payment token (address -> human string)."""
        tok = self._token(token)
        treasury = self._contract("Treasury")
        fee_bps = self.get_fee_bps()
        balances: dict[str, str] = {}
        totals: dict[str, str] = {}
        for address in self._tokens():
            t = self._token(address if address != ZERO_ADDRESS else "ETH")
            balances[address] = t.format(
                int(self._call(treasury.functions.balanceOf(address), "Treasury.balanceOf"))
            )
            totals[address] = t.format(
                int(self._call(treasury.functions.totalCollected(address), "totalCollected"))
            )
        balance = int(self._call(treasury.functions.balanceOf(tok.address), "Treasury.balanceOf"))
        total = int(self._call(treasury.functions.totalCollected(tok.address), "totalCollected"))
        return TreasuryInfo(
            address=str(treasury.address),
            token=tok.address,
            balance=tok.format(balance),
            total_collected=tok.format(total),
            fee_percentage=fee_bps / 100,
            fee_bps=fee_bps,
            balances=balances,
            totals=totals,
        )

    def get_treasury_balance(self, token_address: str | None = "USDC") -> str:
        """Fees the treasury holds now in `token_address` ("USDC", "ETH" or an address)."""
        tok = self._token(token_address)
        treasury = self._contract("Treasury")
        return tok.format(
            int(self._call(treasury.functions.balanceOf(tok.address), "Treasury.balanceOf"))
        )

    def is_treasurer(self, address: str | None = None) -> bool:
        """Whether `address` (default: the signer) may withdraw fees."""
        who = self._address_or_me(address, "address", "is_treasurer")
        treasury = self._contract("Treasury")
        return bool(self._call(treasury.functions.hasRole(TREASURER_ROLE, who), "hasRole"))

    def withdraw_treasury_funds(
        self, token_address: str | None, amount: str, to: str | None = None
    ) -> str:
        """Treasurer: pay `amount` of collected `token_address` fees to `to`
        (default: the signer). Returns the tx hash.

        Raises SDKError before sending: AUTH_REQUIRED, INVALID_ADDRESS,
        INVALID_AMOUNT, NOT_AUTHORIZED (no TREASURER_ROLE),
        INSUFFICIENT_BALANCE (more than the treasury holds).
        """
        what = "withdraw_treasury_funds"
        me = self._me(what)
        tok = self._token(token_address)
        recipient = me if to is None else check_address(to, "to")
        if recipient == ZERO_ADDRESS:
            fail(SDKErrorCode.INVALID_ADDRESS, "to must not be the zero address")
        value = tok.parse(amount)
        if value == 0:
            fail(SDKErrorCode.INVALID_AMOUNT, "amount must be more than 0")
        if not self.is_treasurer(me):
            fail(
                SDKErrorCode.NOT_AUTHORIZED,
                f"{me} does not hold TREASURER_ROLE; only a treasurer can withdraw fees",
            )
        treasury = self._contract("Treasury")
        available = int(self._call(treasury.functions.balanceOf(tok.address), "Treasury.balanceOf"))
        if value > available:
            fail(
                SDKErrorCode.INSUFFICIENT_BALANCE,
                f"the treasury holds {tok.format(available)} {tok.symbol}, less than "
                f"{tok.format(value)}",
                available=available,
                required=value,
            )
        fn = treasury.functions.withdraw(tok.address, recipient, value)
        return self._send(fn, f"Treasury.withdraw {tok.symbol}").tx_hash
