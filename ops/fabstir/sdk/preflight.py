"""Pre-flight checks of a new session: the contract's rules, run against chain views.

`createSession` reverts on a dozen conditions (JobMarketplace._openSession and
NodeRegistry.sessionTerms). Checking them here first, in that order, turns
each into an SDKError with a specific code and a message saying what to do,
before anything is signed or costs gas. The result is a typed `SessionPlan`:
the terms as the contract will store them and what the wallet must add.

The limits come from `fabstir.chain.marketplace` (the contract's constants,
defined once); the rest is read from the chain.
"""

from __future__ import annotations

from dataclasses import dataclass

from fabstir.chain.marketplace import (
    MAX_DURATION,
    MAX_PRICE_PER_TOKEN,
    MAX_PROOF_INTERVAL,
    MAX_SESSION_TOKENS,
    MIN_DURATION,
)
from fabstir.protocol.receipts import same_address
from fabstir.sdk._base import ManagerBase, Token, check_bytes32, fail
from fabstir.sdk.errors import SDKErrorCode
from fabstir.sdk.types import SessionConfig


@dataclass(frozen=True)
class SessionPlan:
    """A session that passed every pre-flight check; amounts in smallest units.

    `escrow` is what the contract locks (whole tokens' worth of `deposit`:
    `max_tokens * price_per_token`); `balance` the signer's in-contract
    balance; `from_wallet` what the wallet must add (sent with
    createSessionFromWallet: as value for ETH, after an approval for ERC-20).
    """

    host: str
    model_id: str
    token: Token
    deposit: int
    escrow: int
    max_tokens: int
    price_per_token: int
    duration: int
    proof_interval: int
    balance: int
    from_wallet: int


class SessionPreflight(ManagerBase):
    """Runs the pre-flight checks for SessionJobManager.create_session_job."""

    def plan(
        self,
        me: str,
        host: str,
        token: Token,
        deposit: int,
        config: SessionConfig,
        model_id: str | None,
    ) -> SessionPlan:
        """Check `me` opening a session with `host` for `deposit` of `token` on
        `config`'s terms; `model_id` None means the host's only model.

        Raises the SDKErrors listed on SessionJobManager.create_session_job,
        in the order the checks run: terms, marketplace, token, deposit,
        model, host, price, balances."""
        market = self._contract("JobMarketplace")
        nodes = self._contract("NodeRegistry")
        price = config.price_per_token
        if same_address(host, me):
            fail(SDKErrorCode.INVALID_ARGUMENT, "provider is your own address; pick another host")
        if price > MAX_PRICE_PER_TOKEN:
            fail(SDKErrorCode.INVALID_AMOUNT, f"price_per_token {price} is above 2**64-1")
        if not MIN_DURATION <= config.duration <= MAX_DURATION:
            fail(
                SDKErrorCode.INVALID_ARGUMENT,
                f"duration must be {MIN_DURATION}..{MAX_DURATION} seconds, got {config.duration}",
            )
        # The deployment's own limit (unbonding minus settlement window) is usually
        # shorter than the contract-wide 30 days: 23 h on Base Sepolia.
        longest = self._sdk._max_session_duration()
        if config.duration > longest:
            fail(
                SDKErrorCode.INVALID_ARGUMENT,
                f"duration {config.duration} s is longer than this marketplace allows "
                f"({longest} s, its maxDuration); ask for at most that",
                duration=config.duration,
                max_duration=longest,
            )
        if config.proof_interval > MAX_PROOF_INTERVAL:
            fail(
                SDKErrorCode.INVALID_ARGUMENT,
                f"proof_interval must be at most {MAX_PROOF_INTERVAL}",
            )
        if deposit == 0:
            fail(SDKErrorCode.INVALID_AMOUNT, "deposit_amount must be more than 0")
        if bool(self._call(market.functions.paused(), "paused")):
            fail(
                SDKErrorCode.SERVICE_UNAVAILABLE,
                "the marketplace is paused: no new sessions for now; try again later",
            )
        accepted, _index, min_deposit = self._call(
            market.functions.tokenConfig(token.address), "tokenConfig"
        )
        if not accepted:
            fail(
                SDKErrorCode.INVALID_ARGUMENT,
                f"the marketplace does not accept {token.symbol} ({token.address}); pay in USDC or ETH",
                token=token.address,
            )
        max_tokens = deposit // price
        if max_tokens < config.proof_interval:
            fail(
                SDKErrorCode.DEPOSIT_TOO_LOW,
                f"a deposit of {token.format(deposit)} {token.symbol} at {price} per token covers "
                f"{max_tokens} tokens, fewer than the proof interval ({config.proof_interval}); "
                f"deposit at least {token.format(price * config.proof_interval)} {token.symbol}",
                covers=max_tokens,
                proof_interval=config.proof_interval,
            )
        if max_tokens > MAX_SESSION_TOKENS:
            fail(SDKErrorCode.INVALID_AMOUNT, "deposit is too large for one session")
        escrow = max_tokens * price
        if escrow < int(min_deposit):
            fail(
                SDKErrorCode.DEPOSIT_TOO_LOW,
                f"deposit {token.format(escrow)} {token.symbol}"
                + (
                    f" (whole tokens' worth of {token.format(deposit)} at {price} per token)"
                    if escrow != deposit
                    else ""
                )
                + f" is below the minimum of {token.format(int(min_deposit))} {token.symbol}; "
                "deposit at least that much",
                deposit=escrow,
                minimum=int(min_deposit),
            )
        model = self.session_model(host, model_id)
        active, serves, approved, min_price, _ = self._call(
            nodes.functions.sessionTerms(host, model, token.address), "sessionTerms"
        )
        if not active:
            fail(
                SDKErrorCode.HOST_NOT_FOUND,
                f"{host} is not an active host; find one with "
                "get_host_manager().find_hosts_for_model(model_id)",
                host=host,
            )
        if not approved:
            self._sdk.get_model_manager().require_approved(model)
        if not serves:
            fail(
                SDKErrorCode.MODEL_MISMATCH,
                f"host {host} does not serve model {model}; pick a host from "
                "find_hosts_for_model(model_id)",
                host=host,
                model_id=model,
            )
        if int(min_price) == 0:
            fail(
                SDKErrorCode.INVALID_ARGUMENT,
                f"host {host} does not accept {token.symbol}; pay in a token it prices",
                host=host,
                token=token.address,
            )
        if price < int(min_price):
            fail(
                SDKErrorCode.PRICE_TOO_LOW,
                f"price_per_token {price} is below host {host}'s minimum of {int(min_price)} "
                f"(smallest {token.symbol} units per token); offer at least {int(min_price)}",
                price=price,
                minimum=int(min_price),
            )
        balance = int(self._call(market.functions.balanceOf(me, token.address), "balanceOf"))
        missing = max(0, escrow - balance)
        if missing:
            wallet = self._erc20_balance(token, me)
            if wallet < missing:
                fail(
                    SDKErrorCode.INSUFFICIENT_BALANCE,
                    f"the session needs {token.format(escrow)} {token.symbol}: "
                    f"{token.format(balance)} in the marketplace balance plus "
                    f"{token.format(wallet)} in the wallet is not enough; add "
                    f"{token.format(missing - wallet)} {token.symbol}",
                    required=escrow,
                    deposited=balance,
                    wallet=wallet,
                )
        return SessionPlan(
            host=host,
            model_id=model,
            token=token,
            deposit=deposit,
            escrow=escrow,
            max_tokens=max_tokens,
            price_per_token=price,
            duration=config.duration,
            proof_interval=config.proof_interval,
            balance=balance,
            from_wallet=missing,
        )

    def session_model(self, host: str, model_id: str | None) -> str:
        """`model_id` checked, or the host's model when it serves exactly one."""
        if model_id is not None:
            return check_bytes32(model_id, "model_id")
        nodes = self._contract("NodeRegistry")
        models = [
            "0x" + bytes(m).hex()
            for m in self._call(nodes.functions.hostModels(host), "hostModels")
        ]
        if len(models) == 1:
            return models[0]
        if not models:
            fail(
                SDKErrorCode.HOST_NOT_FOUND,
                f"{host} is not an active host (it lists no model); pick one from "
                "find_hosts_for_model(model_id)",
                host=host,
            )
        fail(
            SDKErrorCode.INVALID_ARGUMENT,
            f"host {host} serves {len(models)} models; pass model_id (one of {', '.join(models)})",
            models=models,
        )
