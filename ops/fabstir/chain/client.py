"""Chain access for the SDK and the host worker: contracts by name, decoded reverts,
and one transaction sender per key (a single nonce sequence, retries with backoff).

web3.py is used directly (not ape) so that the SDK and the worker run without a
compiler or ape's project machinery; ABIs come from `fabstir.chain.abi`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import requests
from eth_abi.abi import decode as abi_decode
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
)

from fabstir.chain.abi import CONTRACTS as ABI_CONTRACTS
from fabstir.chain.abi import load_abi
from fabstir.chain.rpc import FailoverHTTPProvider, RpcRetry, split_urls

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


class TxPending(Exception):
    """A transaction was sent (hash known) but is not mined yet: stuck behind a low fee,
    a gap, or a slow node. Not an RPC outage: the transaction may still land, and
    `TxSender.wait` / `TxSender.recover` pick it up again by its hash."""

    def __init__(self, message: str, tx_hashes: Sequence[str], nonce: int) -> None:
        super().__init__(message)
        self.tx_hashes = list(tx_hashes)
        self.nonce = nonce


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
        rpc_url: str | Sequence[str],
        addresses: dict[str, str],
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        rpc_retry: RpcRetry | None = None,
    ) -> None:
        urls = split_urls(rpc_url)
        # The first URL names the endpoint in messages; the provider fails over to the rest.
        self.rpc_url = urls[0]
        self.rpc_urls = urls
        # Short rounds in the provider (each URL, Retry-After honoured), the longer
        # backoff in `retry` above it: an outage is reported in seconds, not minutes.
        self.provider = FailoverHTTPProvider(
            urls,
            timeout=timeout,
            retry=rpc_retry or RpcRetry(attempts=max(3, 2 * len(urls)), max_delay=1.0),
        )
        self.w3 = Web3(self.provider)
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
