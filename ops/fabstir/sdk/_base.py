"""Shared plumbing of the chain managers: input checks, token handling, sending
transactions and turning chain failures into SDKErrors.

Not public API: the managers are. Every check here runs before anything is
signed, so bad input never costs gas.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NoReturn

from eth_utils.address import to_checksum_address
from web3.exceptions import Web3RPCError, Web3ValidationError

from fabstir.chain.client import ChainError, ChainUnavailable
from fabstir.chain.transactions import TxResult
from fabstir.protocol.receipts import is_valid_address, to_bytes32
from fabstir.sdk.amounts import format_amount, parse_amount
from fabstir.sdk.constants import NATIVE_TOKEN_ADDRESS
from fabstir.sdk.errors import SDKError, SDKErrorCode

if TYPE_CHECKING:
    from fabstir.sdk.sdk import FabstirSDK

log = logging.getLogger("fabstir.sdk")

ZERO_ADDRESS: Final = NATIVE_TOKEN_ADDRESS
MAX_UINT256: Final = 2**256 - 1

#: Custom errors of our contracts (and OpenZeppelin's) -> the SDK's codes.
#: Anything not listed is TRANSACTION_FAILED; the name is always in the message.
ERROR_CODES: Final[Mapping[str, SDKErrorCode]] = {
    # balances
    "InsufficientBalance": SDKErrorCode.INSUFFICIENT_BALANCE,
    "ERC20InsufficientBalance": SDKErrorCode.INSUFFICIENT_BALANCE,
    "NothingToWithdraw": SDKErrorCode.INSUFFICIENT_BALANCE,
    "InsufficientFees": SDKErrorCode.INSUFFICIENT_BALANCE,
    "ERC20InsufficientAllowance": SDKErrorCode.APPROVAL_FAILED,
    "ZeroAmount": SDKErrorCode.INVALID_AMOUNT,
    "WrongEthValue": SDKErrorCode.INVALID_AMOUNT,
    "DepositTooLarge": SDKErrorCode.INVALID_AMOUNT,
    "DepositBelowMinimum": SDKErrorCode.DEPOSIT_TOO_LOW,
    "DepositBelowProofInterval": SDKErrorCode.DEPOSIT_TOO_LOW,
    "StakeBelowMinimum": SDKErrorCode.INVALID_AMOUNT,
    "InvalidPrice": SDKErrorCode.INVALID_AMOUNT,
    "PriceBelowHostMinimum": SDKErrorCode.PRICE_TOO_LOW,
    "TokenNotAccepted": SDKErrorCode.INVALID_ARGUMENT,
    "HostDoesNotAcceptToken": SDKErrorCode.INVALID_ARGUMENT,
    "InvalidDuration": SDKErrorCode.INVALID_ARGUMENT,
    "InvalidProofInterval": SDKErrorCode.INVALID_ARGUMENT,
    "SelfSession": SDKErrorCode.INVALID_ARGUMENT,
    "ZeroAddress": SDKErrorCode.INVALID_ADDRESS,
    # sessions
    "UnknownSession": SDKErrorCode.SESSION_NOT_FOUND,
    "SessionNotOpen": SDKErrorCode.INVALID_SESSION_STATE,
    "SettlementWindowOpen": SDKErrorCode.INVALID_SESSION_STATE,
    "StaleReceipt": SDKErrorCode.STALE_RECEIPT,
    "ExceedsDeposit": SDKErrorCode.SESSION_BUDGET_EXHAUSTED,
    "InvalidReceiptSigner": SDKErrorCode.PROOF_VERIFICATION_FAILED,
    "EmptyBatch": SDKErrorCode.INVALID_ARGUMENT,
    "BatchTooLarge": SDKErrorCode.INVALID_ARGUMENT,
    # roles
    "NotSessionHost": SDKErrorCode.NOT_AUTHORIZED,
    "NotSessionClient": SDKErrorCode.NOT_AUTHORIZED,
    "AccessControlUnauthorizedAccount": SDKErrorCode.NOT_AUTHORIZED,
    "OnlyLedger": SDKErrorCode.NOT_AUTHORIZED,
    "OnlyMarketplace": SDKErrorCode.NOT_AUTHORIZED,
    "EnforcedPause": SDKErrorCode.SERVICE_UNAVAILABLE,
    # models and hosts
    "ModelNotApproved": SDKErrorCode.MODEL_NOT_APPROVED,
    "UnknownModel": SDKErrorCode.MODEL_NOT_FOUND,
    "HostDoesNotServeModel": SDKErrorCode.MODEL_MISMATCH,
    "HostNotActive": SDKErrorCode.HOST_NOT_FOUND,
    "NotActive": SDKErrorCode.HOST_NOT_FOUND,
    "NotRegistered": SDKErrorCode.HOST_NOT_FOUND,
    "AlreadyRegistered": SDKErrorCode.INVALID_ARGUMENT,
    "NotUnbonding": SDKErrorCode.INVALID_ARGUMENT,
    "UnbondingNotOver": SDKErrorCode.INVALID_ARGUMENT,
    "NoModels": SDKErrorCode.INVALID_ARGUMENT,
    "TooManyModels": SDKErrorCode.INVALID_ARGUMENT,
    "DuplicateModel": SDKErrorCode.INVALID_ARGUMENT,
    "EmptyApiUrl": SDKErrorCode.INVALID_ARGUMENT,
    "ApiUrlTooLong": SDKErrorCode.INVALID_ARGUMENT,
    "MetadataTooLong": SDKErrorCode.INVALID_ARGUMENT,
    "LengthMismatch": SDKErrorCode.INVALID_ARGUMENT,
}


def chain_error_to_sdk(exc: ChainError, what: str) -> SDKError:
    """A decoded revert as an SDKError: the mapped code, the error's name and
    arguments in the message and in `details`."""
    code = ERROR_CODES.get(exc.name, SDKErrorCode.TRANSACTION_FAILED)
    args = [_plain(a) for a in exc.error_args]
    return SDKError(
        code,
        f"{what} reverted: {exc}",
        {"error": exc.name, "args": args, "action": what},
    )


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return value


def fail(code: SDKErrorCode, message: str, **details: Any) -> NoReturn:
    """Raise SDKError(code, message, details)."""
    raise SDKError(code, message, details)


def check_address(value: Any, name: str = "address") -> str:
    """A checksummed address, or SDKError(INVALID_ADDRESS) saying what is wrong."""
    if not is_valid_address(value):
        hint = ""
        if isinstance(value, str) and len(value) == 42 and value.startswith("0x"):
            hint = " (mixed case must be a valid EIP-55 checksum; try all lowercase)"
        fail(
            SDKErrorCode.INVALID_ADDRESS,
            f"{name} must be a 0x-prefixed 20-byte hex address{hint}, got {value!r}",
            field=name,
            value=repr(value),
        )
    return to_checksum_address(value)


def check_bytes32(value: Any, name: str) -> str:
    """0x + 64 lowercase hex digits, or SDKError(INVALID_ARGUMENT)."""
    return "0x" + to_bytes32(value, name).hex()


def check_uint(value: Any, name: str, *, positive: bool = False, maximum: int = MAX_UINT256) -> int:
    """A non-negative (or positive) int that fits `maximum`."""
    low = 1 if positive else 0
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= maximum:
        fail(
            SDKErrorCode.INVALID_ARGUMENT,
            f"{name} must be an int in {low}..{maximum}, got {value!r}",
            field=name,
        )
    return int(value)


@dataclass(frozen=True)
class Token:
    """A payment token: address (zero for ETH), symbol and decimals (read from the token)."""

    address: str
    symbol: str
    decimals: int

    @property
    def is_eth(self) -> bool:
        """True for native ETH."""
        return self.address == ZERO_ADDRESS

    def parse(self, amount: Any, name: str = "amount") -> int:
        """Human string -> smallest units (SDKError(INVALID_AMOUNT) names the field)."""
        try:
            return parse_amount(amount, self.decimals)
        except SDKError as exc:
            raise SDKError(
                exc.code, f"{name}: {exc.message} ({self.symbol})", {**exc.details, "field": name}
            ) from None

    def format(self, value: int) -> str:
        """Smallest units -> human string."""
        return format_amount(int(value), self.decimals)


class ManagerBase:
    """What every chain manager shares: the SDK, tokens, sending, error mapping."""

    def __init__(self, sdk: FabstirSDK) -> None:
        self._sdk = sdk

    # --- plumbing ------------------------------------------------------------

    @property
    def sdk(self) -> FabstirSDK:
        """The FabstirSDK this manager belongs to."""
        return self._sdk

    def _contract(self, name: str) -> Any:
        return self._sdk._contract(name)

    def _call(self, fn: Any, what: str) -> Any:
        with translate_errors(what):
            return self._sdk.chain.call(fn, what)

    def _send(self, fn: Any, what: str, *, value: int = 0) -> TxResult:
        sender = self._sdk._require_sender(what)
        log.debug("sending %s from %s (value %d)", what, sender.address, value)
        with translate_errors(what):
            result = sender.send(fn, value=value, what=what)
        log.info(
            "%s: tx %s (gas %d, block %d)",
            what,
            result.tx_hash,
            result.gas_used,
            result.block_number,
        )
        return result

    def _me(self, what: str) -> str:
        return str(self._sdk._require_sender(what).address)

    def _address_or_me(self, address: str | None, name: str, what: str) -> str:
        if address is None:
            return self._me(what)
        return check_address(address, name)

    # --- tokens --------------------------------------------------------------

    def _token(self, token: str | None) -> Token:
        """ "USDC", "ETH", None (USDC) or an address -> Token with decimals from the chain."""
        return self._sdk._token(token)

    def _erc20_balance(self, token: Token, owner: str) -> int:
        if token.is_eth:
            with translate_errors("eth_getBalance"):
                return self._sdk.chain.balance(owner)
        erc20 = self._sdk.chain.contract("USDC", token.address)
        return int(self._call(erc20.functions.balanceOf(owner), f"{token.symbol}.balanceOf"))

    def _pay_and_send(
        self,
        fn: Any,
        what: str,
        *,
        token: Token,
        spender: str,
        amount: int,
        purpose: str | None,
    ) -> tuple[TxResult, str | None]:
        """The one balance -> allowance -> send sequence, for a call that takes `amount`
        of `token` from the signer's wallet: check the wallet holds it
        (INSUFFICIENT_BALANCE naming `purpose`; None when the caller has checked it
        already), approve `spender` when the ERC-20 allowance left for it is short
        (APPROVAL_FAILED), then send `fn`, with `amount` as value for ETH.

        Safe to call from several threads at once for one signer: the allowance check,
        the approval and the submission happen under the signer's allowance book
        (fabstir.sdk.allowances), which counts what submitted calls will still pull;
        the receipt is awaited outside it. Returns the transaction and the approval's
        tx hash (None when none was needed).
        """
        me = self._me(what)
        if purpose is not None and amount:
            wallet = self._erc20_balance(token, me)
            if wallet < amount:
                fail(
                    SDKErrorCode.INSUFFICIENT_BALANCE,
                    f"{purpose}: the wallet holds {token.format(wallet)} {token.symbol}, "
                    f"less than {token.format(amount)} {token.symbol}",
                    wallet=wallet,
                    required=amount,
                )
        sender = self._sdk._require_sender(what)
        book = self._sdk.allowances
        pulled = 0 if token.is_eth else amount
        with book.lock:
            approval = self._ensure_allowance(
                token, me, spender, amount, what, in_flight=book.pending(token.address, spender)
            )
            log.debug("sending %s from %s", what, me)
            with translate_errors(what):
                rec = sender.submit(fn, value=amount if token.is_eth else 0, what=what)
            book.add(token.address, spender, pulled)
        try:
            with translate_errors(what):
                result = sender.wait(rec)
        finally:
            book.release(token.address, spender, pulled)
        log.info("%s: tx %s (gas %d)", what, result.tx_hash, result.gas_used)
        return result, approval

    def _ensure_allowance(
        self,
        token: Token,
        owner: str,
        spender: str,
        amount: int,
        what: str,
        *,
        in_flight: int = 0,
    ) -> str | None:
        """Approve `spender` for `amount` of `token` if the allowance, less what
        `in_flight` pulls will still take, is short. Returns the approval's tx hash,
        or None when none was needed."""
        if token.is_eth or amount == 0:
            return None
        erc20 = self._sdk.chain.contract("USDC", token.address)
        allowance = int(self._call(erc20.functions.allowance(owner, spender), "allowance"))
        if allowance - in_flight >= amount:
            return None
        try:
            result = self._send(
                erc20.functions.approve(spender, amount), f"{token.symbol}.approve for {what}"
            )
        except SDKError as exc:
            if exc.code is SDKErrorCode.NETWORK_ERROR:
                raise
            raise SDKError(
                SDKErrorCode.APPROVAL_FAILED,
                f"approving {token.format(amount)} {token.symbol} for {what} failed: {exc.message}",
                exc.details,
            ) from exc
        return result.tx_hash


@contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn ChainError / ChainUnavailable raised inside into SDKErrors."""
    try:
        yield
    except SDKError:
        raise
    except ChainError as exc:
        raise chain_error_to_sdk(exc, what) from exc
    except ChainUnavailable as exc:
        raise SDKError(SDKErrorCode.NETWORK_ERROR, f"{what}: {exc}") from exc
    except Web3ValidationError as exc:
        raise SDKError(SDKErrorCode.INVALID_ARGUMENT, f"{what}: {exc}") from exc
    except Web3RPCError as exc:
        text = str(exc)
        code = (
            SDKErrorCode.INSUFFICIENT_BALANCE
            if "insufficient funds" in text.lower()
            else SDKErrorCode.TRANSACTION_FAILED
        )
        raise SDKError(code, f"{what}: the node refused: {text}", {"action": what}) from exc
    except (ConnectionError, TimeoutError, OSError) as exc:
        raise SDKError(SDKErrorCode.NETWORK_ERROR, f"{what}: RPC failed: {exc}") from exc
