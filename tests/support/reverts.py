"""Exact revert checks for ape: the custom error and its arguments, also where ape
cannot decode them (errors bubbling up from another contract, view calls,
constructors)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import ape
from ape.exceptions import CustomError
from eth_abi import decode, encode
from eth_utils import is_address, keccak, to_checksum_address

REENTRANT_CALL_SELECTOR = keccak(text="ReentrancyGuardReentrantCall()")[:4]


def _norm(value: Any) -> Any:
    if isinstance(value, str) and is_address(value):
        return to_checksum_address(value)
    if hasattr(value, "address") and not isinstance(value, str | bytes):
        return to_checksum_address(value.address)
    if isinstance(value, bytes):
        return bytes(value)
    return value


def _revert_data(exc: Any) -> str:
    """0x-hex revert data of an error ape did not decode (one bubbled up from another
    contract, or a constructor's)."""
    base = getattr(exc, "base_err", None)
    data = getattr(base, "data", None)
    if isinstance(data, str) and data.startswith("0x"):
        return data
    return exc.revert_message or ""


def _check_error(abi: Any, actual: dict[str, Any], inputs: dict[str, Any]) -> None:
    for name, expected in inputs.items():
        assert name in actual, f"{abi.name} has no input {name!r}"
        assert _norm(actual[name]) == _norm(expected), (
            f"{abi.name}.{name}: expected {expected!r}, got {actual[name]!r}"
        )


def _decode_error(abi: Any, data: str) -> dict[str, Any]:
    selector = "0x" + keccak(text=abi.selector)[:4].hex()
    assert data.startswith(selector), f"expected {abi.selector}, got revert data {data[:80]}"
    values = decode([i.canonical_type for i in abi.inputs], bytes.fromhex(data[10:]))
    return {i.name: v for i, v in zip(abi.inputs, values, strict=True)}


@contextlib.contextmanager
def reverts(error: Any, **inputs: Any) -> Iterator[Any]:
    """The transaction in the block must revert with exactly the custom error `error`,
    and with the given `inputs` (by parameter name) where any are given.

    ape.reverts alone lets a plain or differently-named revert through whenever the
    error class is not bound to the reverting contract, and it cannot decode an error
    that bubbles up from another contract; so this checks the decoded error, or
    decodes the raw revert data itself. For view calls use `view_reverts`.
    """
    abi = error.abi if isinstance(error, type) else error
    with ape.reverts() as info:
        yield info
    exc = info.value
    if isinstance(exc, CustomError):
        assert type(exc).__name__ == abi.name, f"expected {abi.name}, got {exc!r}"
        actual = dict(exc.inputs)
    else:
        actual = _decode_error(abi, _revert_data(exc))
    _check_error(abi, actual, inputs)


def view_reverts(method: Any, args: list[Any], error: Any, **inputs: Any) -> None:
    """A view call must revert with exactly `error(**inputs)`.

    ape hands view-call custom errors over as text, so the call is made raw here
    and the revert data decoded from the JSON-RPC error.
    """
    abi = error.abi if isinstance(error, type) else error
    data = method.encode_input(*args)
    call = {"to": method.contract.address, "data": "0x" + bytes(data).hex()}
    response = ape.chain.provider.web3.provider.make_request("eth_call", [call, "latest"])
    assert "error" in response, f"call did not revert: {response}"
    _check_error(abi, _decode_error(abi, response["error"]["data"]), inputs)


def error_selector(signature: str) -> bytes:
    return keccak(text=signature)[:4]


def deploy_reverts(
    account: Any, container: Any, args: list[Any], error: Any, *expected: Any
) -> None:
    """Deploying `container(*args)` from `account` must revert with exactly `error(*expected)`.

    ape neither decodes a constructor's custom error nor reports it reliably: it
    re-runs the failed creation after the nonce has moved on, so the contract's
    own address differs and an address check (LedgerNotBound) answers differently.
    So the creation is simulated first with eth_call from the sender's current
    nonce (the very address the real deployment gets) and its revert data
    compared; then it is sent for real and must revert.
    """
    abi = error.abi
    data = container.constructor.serialize_transaction(*args).data
    call = {"from": account.address, "data": "0x" + bytes(data).hex()}
    response = ape.chain.provider.web3.provider.make_request("eth_call", [call, "latest"])
    assert "error" in response, f"deployment did not revert: {response}"
    selector = keccak(text=abi.selector)[:4]
    want = selector + encode([i.canonical_type for i in abi.inputs], list(expected))
    got = response["error"].get("data")
    assert got == "0x" + want.hex(), f"expected {abi.selector}{expected}, got {got}"
    with ape.reverts():
        account.deploy(container, *args)
