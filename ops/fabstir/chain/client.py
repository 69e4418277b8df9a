"""Chain access for the SDK and the host worker: contracts by name, decoded reverts,
and one transaction sender per key (a single nonce sequence, retries with backoff).

web3.py is used directly (not ape) so that the SDK and the worker run without a
compiler or ape's project machinery; ABIs come from `fabstir.chain.abi`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import requests
from eth_abi.abi import decode as abi_decode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils.abi import function_signature_to_4byte_selector
from eth_utils.address import to_checksum_address
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import (
    ContractCustomError,
    ContractLogicError,
    ContractPanicError,
    ProviderConnectionError,
    TimeExhausted,
    Web3RPCError,
)

from fabstir.chain.abi import CONTRACTS as ABI_CONTRACTS
from fabstir.chain.abi import load_abi

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Errors worth retrying: the node did not answer, or answered "try later".
TRANSIENT = (
    requests.ConnectionError,
    requests.Timeout,
    ProviderConnectionError,
    ConnectionError,
    TimeoutError,
    TimeExhausted,
)


class ChainError(Exception):
    """A call or transaction reverted; `name` is the decoded custom error, if any."""

    def __init__(self, name: str, args: tuple[Any, ...] = (), message: str = "") -> None:
        self.name = name
        self.error_args = args
        text = message or (f"{name}({', '.join(map(_fmt, args))})" if args else name)
        super().__init__(text)


class ChainUnavailable(Exception):
    """The RPC endpoint stayed unreachable through every retry."""


def _fmt(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    first_delay: float = 0.25
    max_delay: float = 8.0

    def run(self, fn: Callable[[], T], what: str) -> T:
        delay = self.first_delay
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except TRANSIENT as exc:
                if attempt == self.attempts:
                    raise ChainUnavailable(
                        f"{what}: RPC unreachable after {attempt} tries: {exc}"
                    ) from exc
                log.warning("%s: RPC error (%s), retry %d in %.2fs", what, exc, attempt, delay)
                time.sleep(delay)
                delay = min(delay * 2, self.max_delay)
        raise AssertionError("unreachable")


class ErrorDecoder:
    """Maps 4-byte selectors of every custom error in our ABIs to names and types."""

    def __init__(self) -> None:
        self._errors: dict[bytes, tuple[str, list[str]]] = {}
        for name in ABI_CONTRACTS:
            for item in load_abi(name):
                if item.get("type") != "error":
                    continue
                types = [_abi_type(i) for i in item.get("inputs", [])]
                sig = f"{item['name']}({','.join(types)})"
                self._errors[function_signature_to_4byte_selector(sig)] = (item["name"], types)

    def decode(self, data: bytes | str | None) -> ChainError:
        raw = _to_bytes(data)
        if len(raw) >= 4 and raw[:4] in self._errors:
            name, types = self._errors[raw[:4]]
            try:
                args = tuple(abi_decode(types, raw[4:]))
            except Exception:  # undecodable arguments still name the error
                args = ()
            return ChainError(name, args)
        if raw[:4] == bytes.fromhex("08c379a0"):
            (reason,) = abi_decode(["string"], raw[4:])
            return ChainError("Error", (reason,), str(reason))
        if raw[:4] == bytes.fromhex("4e487b71"):
            (code,) = abi_decode(["uint256"], raw[4:])
            return ChainError("Panic", (code,), f"Panic(0x{code:02x})")
        return ChainError(
            "Reverted", (), f"reverted without a known reason (data {raw.hex() or 'empty'})"
        )

    def from_exception(self, exc: Exception) -> ChainError:
        data = getattr(exc, "data", None)
        if isinstance(exc, ContractCustomError | ContractPanicError | ContractLogicError) and data:
            return self.decode(data)
        return ChainError("Reverted", (), str(exc))


def _abi_type(item: dict[str, Any]) -> str:
    kind: str = item["type"]
    if kind.startswith("tuple"):
        inner = ",".join(_abi_type(c) for c in item["components"])
        return f"({inner}){kind[len('tuple') :]}"
    return kind


def _to_bytes(data: bytes | str | None) -> bytes:
    if data is None:
        return b""
    if isinstance(data, bytes):
        return data
    text = data[2:] if data.startswith("0x") else data
    try:
        return bytes.fromhex(text)
    except ValueError:
        return b""


class ChainClient:
    """A web3 connection plus the deployed contracts, addressed by contract name."""

    def __init__(
        self,
        rpc_url: str,
        addresses: dict[str, str],
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.rpc_url = rpc_url
        self.w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))
        self.addresses = {k: to_checksum_address(v) for k, v in addresses.items()}
        self.retry = retry or RetryPolicy()
        self.errors = ErrorDecoder()
        self._contracts: dict[str, Contract] = {}
        self._chain_id: int | None = None

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = self.retry.run(lambda: int(self.w3.eth.chain_id), "eth_chainId")
        return self._chain_id

    def contract(self, name: str, address: str | None = None) -> Contract:
        """Contract `name` at its deployed address (or at `address`, e.g. a token)."""
        # Names without an ABI of their own are payment tokens (their symbols):
        # MockERC20's ABI covers the ERC-20 calls made on any of them.
        abi_name = name if name in ABI_CONTRACTS else "MockERC20"
        if address is not None:
            return self.w3.eth.contract(
                address=to_checksum_address(address), abi=load_abi(abi_name)
            )
        if name not in self._contracts:
            if name not in self.addresses:
                raise KeyError(f"no address for {name!r} in this deployment")
            self._contracts[name] = self.w3.eth.contract(
                address=self.addresses[name], abi=load_abi(abi_name)
            )
        return self._contracts[name]

    def call(self, fn: Any, what: str = "call") -> Any:
        """Run a view call with retries; reverts become ChainError."""

        def run() -> Any:
            try:
                return fn.call()
            except (ContractCustomError, ContractLogicError, ContractPanicError) as exc:
                raise self.errors.from_exception(exc) from exc

        return self.retry.run(run, what)

    def balance(self, address: str) -> int:
        return int(
            self.retry.run(
                lambda: self.w3.eth.get_balance(to_checksum_address(address)), "eth_getBalance"
            )
        )

    def block_timestamp(self) -> int:
        return int(
            self.retry.run(lambda: self.w3.eth.get_block("latest")["timestamp"], "eth_getBlock")
        )


@dataclass(frozen=True)
class TxResult:
    tx_hash: str
    gas_used: int
    block_number: int
    receipt: Any


class TxSender:
    """Sends transactions from one key with one nonce sequence (thread-safe).

    Gas estimation runs first, so a call that would revert raises ChainError before
    anything is signed and no nonce is used. A signed transaction is re-sent as is
    when the node is unreachable (same hash: never a double spend), and the local
    nonce resynchronises from the chain when the node says it is off.
    """

    def __init__(
        self, client: ChainClient, private_key: str | bytes, *, receipt_timeout: float = 120.0
    ) -> None:
        self.client = client
        self.account: LocalAccount = Account.from_key(private_key)
        self.address: ChecksumAddress = self.account.address
        self.receipt_timeout = receipt_timeout
        self._lock = threading.Lock()
        self._nonce: int | None = None

    def _chain_nonce(self) -> int:
        w3 = self.client.w3
        return int(
            self.client.retry.run(
                lambda: w3.eth.get_transaction_count(self.address, "pending"), "nonce"
            )
        )

    def _send_raw(self, raw: bytes, what: str) -> Any:
        w3 = self.client.w3
        return self.client.retry.run(lambda: w3.eth.send_raw_transaction(raw), f"{what}: send")

    def send(self, fn: Any, *, value: int = 0, what: str = "transaction") -> TxResult:
        """Estimate, sign, send and wait for `fn` (a bound web3 contract function)."""
        w3 = self.client.w3
        with self._lock:
            if self._nonce is None:
                self._nonce = self._chain_nonce()
            params: dict[str, Any] = {
                "from": self.address,
                "value": value,
                "chainId": self.client.chain_id,
            }
            for attempt in range(2):
                params["nonce"] = self._nonce
                try:
                    tx = self.client.retry.run(
                        lambda: fn.build_transaction(params), f"{what}: estimate"
                    )
                except (ContractCustomError, ContractLogicError, ContractPanicError) as exc:
                    raise self.client.errors.from_exception(exc) from exc
                raw: bytes = self.account.sign_transaction(tx).raw_transaction
                try:
                    tx_hash = self._send_raw(raw, what)
                except Web3RPCError as exc:
                    if "nonce" in str(exc).lower() and attempt == 0:
                        log.warning("%s: nonce out of sync (%s); resyncing", what, exc)
                        self._nonce = self._chain_nonce()
                        continue
                    raise ChainError(
                        "Rejected", (), f"{what}: node rejected the transaction: {exc}"
                    ) from exc
                self._nonce += 1
                break
            else:  # pragma: no cover - the loop either breaks or raises
                raise ChainError("Rejected", (), f"{what}: could not get a valid nonce")
        receipt = self.client.retry.run(
            lambda: w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.receipt_timeout),
            f"{what}: receipt",
        )
        if receipt["status"] != 1:
            raise ChainError(
                "Reverted", (), f"{what}: transaction {tx_hash.hex()} reverted on chain"
            )
        return TxResult(
            "0x" + bytes(tx_hash).hex().removeprefix("0x"),
            int(receipt["gasUsed"]),
            int(receipt["blockNumber"]),
            receipt,
        )
