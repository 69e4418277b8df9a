"""PaymentManager: paying for sessions, and the in-contract balance.

Money lives in three places for a user, per token:

- the wallet (an ERC-20 balance, or ETH);
- the in-contract balance at the JobMarketplace ("deposited"): free to
  withdraw or to fund sessions; refunds of unused escrow land here;
- escrow ("escrowed"): locked in the user's open sessions.

The design replaces the reference's Base Account Kit sub-account with this
in-contract balance plus a throw-away session key per session (DESIGN.md
section 6), so `fund_sub_account` deposits into the in-contract balance.

Amounts are human strings ("1.0") in and out; decimals come from the token
contract (ETH: 18). Every method checks its input and the balances against
the chain before it signs anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fabstir.protocol.receipts import same_address
from fabstir.sdk._base import ManagerBase, Token, check_address, fail
from fabstir.sdk.errors import SDKErrorCode
from fabstir.sdk.types import SessionConfig, SessionJobResult, TokenBalances


class PaymentManager(ManagerBase):
    """USDC and ETH payments (the reference's PaymentManager)."""

    # --- sessions -----------------------------------------------------------------

    def create_session_job_with_usdc(
        self,
        provider: str,
        amount: str,
        config: SessionConfig | Mapping[str, Any] | None = None,
        *,
        model_id: str | None = None,
        session_key: str | None = None,
    ) -> SessionJobResult:
        """Open a USDC-paid session with host `provider`, escrowing `amount` USDC
        ("1.0"). `config` gives price_per_token (smallest USDC units per token),
        duration (s) and proof_interval (tokens); defaults are the constants.

        Approves the marketplace for what the in-contract balance lacks, then
        calls createSessionFromWallet. See SessionJobManager.create_session_job
        for `model_id`, `session_key` and the errors raised before sending.
        """
        return self._sdk.get_session_job_manager().create_session_job(
            provider, "USDC", amount, config, model_id=model_id, session_key=session_key
        )

    def create_session_job_with_eth(
        self,
        provider: str,
        amount: str,
        config: SessionConfig | Mapping[str, Any] | None = None,
        *,
        model_id: str | None = None,
        session_key: str | None = None,
    ) -> SessionJobResult:
        """Open an ETH-paid session, escrowing `amount` ETH ("0.001"); the price
        per token is in wei. What the in-contract ETH balance lacks is sent as
        the transaction's value. Otherwise as `create_session_job_with_usdc`."""
        return self._sdk.get_session_job_manager().create_session_job(
            provider, "ETH", amount, config, model_id=model_id, session_key=session_key
        )

    # --- balances ---------------------------------------------------------------------

    def get_usdc_balance(self, address: str | None = None) -> str:
        """USDC in the wallet of `address` (default: the signer), human string."""
        return self.get_token_balance("USDC", address)

    def get_eth_balance(self, address: str | None = None) -> str:
        """ETH in the wallet of `address` (default: the signer), human string."""
        return self.get_token_balance("ETH", address)

    def get_token_balance(self, token: str | None, address: str | None = None) -> str:
        """Wallet balance of `token` ("USDC", "ETH", "FAB" or an address)."""
        tok = self._token(token)
        who = self._address_or_me(address, "address", "get_token_balance")
        return tok.format(self._erc20_balance(tok, who))

    def get_deposited_balance(self, token: str | None = "USDC", address: str | None = None) -> str:
        """The in-contract balance (free, withdrawable, funds sessions)."""
        return self.get_balances(address, token).deposited

    def get_escrowed_balance(self, token: str | None = "USDC", address: str | None = None) -> str:
        """What is locked in `address`'s open sessions."""
        return self.get_balances(address, token).escrowed

    def get_balances(self, address: str | None = None, token: str | None = "USDC") -> TokenBalances:
        """Wallet, in-contract and escrowed balances of one token for `address`."""
        tok = self._token(token)
        who = self._address_or_me(address, "address", "get_balances")
        market = self._contract("JobMarketplace")
        wallet = self._erc20_balance(tok, who)
        deposited = int(self._call(market.functions.balanceOf(who, tok.address), "balanceOf"))
        escrowed = int(self._call(market.functions.escrowedOf(who, tok.address), "escrowedOf"))
        return TokenBalances(
            token=tok.address,
            symbol=tok.symbol,
            decimals=tok.decimals,
            wallet=tok.format(wallet),
            deposited=tok.format(deposited),
            escrowed=tok.format(escrowed),
            wallet_raw=wallet,
            deposited_raw=deposited,
            escrowed_raw=escrowed,
        )

    def get_min_deposit(self, token: str | None = "USDC") -> str:
        """The smallest session deposit the marketplace accepts in `token` (set by
        an admin; USDC default 1.0). SDKError(INVALID_ARGUMENT) if not accepted."""
        tok = self._token(token)
        return tok.format(self._accepted(tok))

    def _accepted(self, tok: Token) -> int:
        market = self._contract("JobMarketplace")
        accepted, _index, min_deposit = self._call(
            market.functions.tokenConfig(tok.address), "tokenConfig"
        )
        if not accepted:
            fail(
                SDKErrorCode.INVALID_ARGUMENT,
                f"the marketplace does not accept {tok.symbol} ({tok.address}); use USDC or ETH",
                token=tok.address,
            )
        return int(min_deposit)

    # --- deposit / withdraw -------------------------------------------------------------

    def deposit(self, amount: str, token: str | None = "USDC") -> str:
        """Move `amount` of `token` from the wallet into the in-contract balance
        (approving the marketplace first when needed). Returns the tx hash.

        Raises SDKError: AUTH_REQUIRED, INVALID_AMOUNT (malformed, negative or
        zero), INVALID_ARGUMENT (token not accepted), INSUFFICIENT_BALANCE
        (the wallet holds less), APPROVAL_FAILED.
        """
        what = "deposit"
        me = self._me(what)
        tok = self._token(token)
        value = tok.parse(amount)
        if value == 0:
            fail(SDKErrorCode.INVALID_AMOUNT, "amount must be more than 0")
        self._accepted(tok)
        wallet = self._erc20_balance(tok, me)
        if wallet < value:
            fail(
                SDKErrorCode.INSUFFICIENT_BALANCE,
                f"the wallet holds {tok.format(wallet)} {tok.symbol}, less than the "
                f"{tok.format(value)} to deposit",
                wallet=wallet,
                required=value,
            )
        marketplace = self._sdk.get_contract_address("JobMarketplace")
        market = self._contract("JobMarketplace")
        fn = market.functions.deposit(tok.address, value)
        result, _ = self._send_pulling(
            tok, marketplace, value, fn, f"deposit {tok.symbol}", value=value if tok.is_eth else 0
        )
        return result.tx_hash

    def withdraw(self, amount: str | None = None, token: str | None = "USDC") -> str:
        """Take `amount` (None: all) of the in-contract balance back to the wallet.
        Returns the tx hash.

        Raises SDKError: AUTH_REQUIRED, INVALID_AMOUNT, INSUFFICIENT_BALANCE
        (less is free; escrow in open sessions cannot be withdrawn).
        """
        what = "withdraw"
        me = self._me(what)
        tok = self._token(token)
        market = self._contract("JobMarketplace")
        balance = int(self._call(market.functions.balanceOf(me, tok.address), "balanceOf"))
        value = balance if amount is None else tok.parse(amount)
        if value == 0:
            fail(
                SDKErrorCode.INSUFFICIENT_BALANCE
                if amount is None
                else SDKErrorCode.INVALID_AMOUNT,
                "nothing to withdraw" if amount is None else "amount must be more than 0",
            )
        if value > balance:
            fail(
                SDKErrorCode.INSUFFICIENT_BALANCE,
                f"the in-contract balance is {tok.format(balance)} {tok.symbol}, less than the "
                f"{tok.format(value)} asked (escrow of open sessions is not withdrawable)",
                deposited=balance,
                required=value,
            )
        return self._send(
            market.functions.withdraw(tok.address, value), f"withdraw {tok.symbol}"
        ).tx_hash

    def fund_sub_account(
        self,
        from_address: str | None,
        to_address: str | None,
        amount: str,
        token: str | None = "USDC",
    ) -> str:
        """The reference's sub-account funding, as the design resolves it: a
        deposit of `amount` from the signer's wallet into its in-contract
        balance at the JobMarketplace.

        That balance plays the sub-account's role: sessions draw their escrow
        from it without a wallet prompt, unused escrow is refunded to it, and
        it can be withdrawn at any time. Sessions are signed by a throw-away
        session key, so no second funded account is needed.

        `from_address` (if given) must be the signer; `to_address` (if given)
        must be the signer (whose balance is credited) or the JobMarketplace.
        Returns the tx hash; raises what `deposit` raises, plus
        NOT_AUTHORIZED / INVALID_ARGUMENT for other addresses.
        """
        me = self._me("fund_sub_account")
        if from_address is not None:
            source = check_address(from_address, "from_address")
            if not same_address(source, me):
                fail(
                    SDKErrorCode.NOT_AUTHORIZED,
                    f"funds can only come from the signer's wallet ({me}), not {source}",
                )
        if to_address is not None:
            target = check_address(to_address, "to_address")
            marketplace = self._sdk.get_contract_address("JobMarketplace")
            if not (same_address(target, me) or same_address(target, marketplace)):
                fail(
                    SDKErrorCode.INVALID_ARGUMENT,
                    f"the sub-account is your in-contract balance at the JobMarketplace; it can "
                    f"only credit the depositor ({me}), not {target}",
                )
        return self.deposit(amount, token)
