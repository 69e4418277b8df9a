"""Helpers for the escrow marketplace suite (JobMarketplace, ProofSystem, ledgers).

The whole system is deployed once per test session with `deploy_system` and set up
(one approved model, two registered hosts, funded clients); ape snapshots the chain
around every test, so each test starts from that state.

Receipts are signed with `fabstir.protocol.receipts` (the SDK's signer), so every
test here also checks the Python side produces bytes the contract accepts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import ape
from ape.exceptions import CustomError
from eth_abi import decode, encode
from eth_utils import is_address, keccak, to_checksum_address

from fabstir.chain.system import ETH
from fabstir.protocol.receipts import Eip712Domain, sign_receipt

USDC_UNIT = 10**6
FAB = 10**18
MIN_STAKE = 1000 * FAB
SETTLEMENT_WINDOW = 3600
FEE_BPS = 1000
ETH_MIN_DEPOSIT = 5 * 10**14
USDC_MIN_DEPOSIT = 1_000_000

# Host minimum prices (smallest unit per generated token).
HOST_USDC_MIN_PRICE = 100
HOST_ETH_MIN_PRICE = 10**9

# Standard session terms.
PRICE = 200  # 0.0002 USDC per token
DEPOSIT = 1_000_000  # 1 USDC -> 5000 tokens
MAX_TOKENS = DEPOSIT // PRICE
ETH_PRICE = 10**10
ETH_DEPOSIT = 10**15  # -> 100_000 tokens
DURATION = 3600
PROOF_INTERVAL = 100

MODEL_REPO = "CohereForAI/TinyVicuna-1B-32k-GGUF"
MODEL_FILE = "tiny-vicuna-1b.q4_k_m.gguf"
MODEL_ID = keccak(text=f"{MODEL_REPO}/{MODEL_FILE}")
OTHER_MODEL_REPO = "TheBloke/Llama-2-7B-Chat-GGUF"
OTHER_MODEL_FILE = "llama-2-7b-chat.Q4_K_M.gguf"
OTHER_MODEL_ID = keccak(text=f"{OTHER_MODEL_REPO}/{OTHER_MODEL_FILE}")

ZERO = ETH
ZERO_HASH = bytes(32)
REENTRANT_CALL_SELECTOR = keccak(text="ReentrancyGuardReentrantCall()")[:4]


class Status:
    NONE, ACTIVE, CLOSING, SETTLED = range(4)


class Outcome:
    OK, UNKNOWN_SESSION, NOT_OPEN, NOT_HOST, STALE, EXCEEDS_DEPOSIT, BAD_SIGNATURE = range(7)


def content_hash(n: int) -> bytes:
    """A distinct, arbitrary transcript hash per receipt number."""
    return keccak(n.to_bytes(32, "big"))


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


@dataclass
class Env:
    """The deployed system and the actors of the suite."""

    deployer: Any
    curator: Any
    treasurer: Any
    host: Any
    host2: Any
    alice: Any
    bob: Any
    mallory: Any
    payee: Any  # an account with no role: a withdrawal recipient
    keyholder: Any  # a funded account used as a session key that sends its own txs
    project: Any
    fab: Any
    usdc: Any
    models: Any
    nodes: Any
    proofs: Any
    earnings: Any
    treasury: Any
    mk: Any

    @property
    def domain(self) -> Eip712Domain:
        return domain_of(self.mk)


def domain_of(marketplace: Any) -> Eip712Domain:
    """The EIP-712 domain of receipts for `marketplace` on the connected chain."""
    return Eip712Domain(chain_id=ape.chain.chain_id, verifying_contract=marketplace.address)


def sign(
    env: Env,
    key: Any,
    session_id: int,
    tokens_used: int,
    chash: bytes | None = None,
    domain: Eip712Domain | None = None,
) -> tuple[int, int, bytes, bytes]:
    """(sessionId, tokensUsed, contentHash, signature) signed by `key` on `domain`."""
    session_id, tokens_used = int(session_id), int(tokens_used)
    chash = content_hash(tokens_used) if chash is None else chash
    private_key = key.key if hasattr(key, "key") else key.private_key  # eth-account or ape
    r = sign_receipt(private_key, domain or env.domain, session_id, tokens_used, chash)
    return session_id, tokens_used, chash, r.signature_bytes


def open_usdc(
    env: Env,
    client: Any | None = None,
    *,
    host: Any | None = None,
    key: Any | None = None,
    deposit: int = DEPOSIT,
    price: int = PRICE,
    duration: int = DURATION,
    proof_interval: int = PROOF_INTERVAL,
    model: bytes = MODEL_ID,
) -> int:
    """Open a USDC session from the wallet (approved in setup); returns its id."""
    client = client or env.alice
    host = host or env.host
    tx = env.mk.createSessionFromWallet(
        host,
        model,
        env.usdc,
        deposit,
        price,
        duration,
        proof_interval,
        key.address if key is not None else ZERO,
        sender=client,
    )
    return int(tx.decode_logs(env.mk.SessionCreated)[0].sessionId)


def open_eth(
    env: Env,
    client: Any | None = None,
    *,
    host: Any | None = None,
    key: Any | None = None,
    deposit: int = ETH_DEPOSIT,
    price: int = ETH_PRICE,
) -> int:
    client = client or env.alice
    tx = env.mk.createSessionFromWallet(
        host or env.host,
        MODEL_ID,
        ZERO,
        deposit,
        price,
        DURATION,
        PROOF_INTERVAL,
        key.address if key is not None else ZERO,
        sender=client,
        value=deposit,
    )
    return int(tx.decode_logs(env.mk.SessionCreated)[0].sessionId)


def token_totals(env: Env, token: Any, users: list[Any], hosts: list[Any]) -> int:
    """balances + escrow + host earnings + treasury, as the ledgers see them."""
    addr = getattr(token, "address", token)
    total = sum(env.mk.balanceOf(u, addr) + env.mk.escrowedOf(u, addr) for u in users)
    total += sum(env.earnings.balanceOf(h, addr) for h in hosts)
    return total + env.treasury.balanceOf(addr)


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


def deploy_marketplace(env: Env, *, fee_bps: int = FEE_BPS) -> tuple[Any, Any, Any]:
    """A second, independent marketplace (with its own ledgers) on the same registries."""
    p, d = env.project, env.deployer
    address = d.get_deployment_address(d.nonce + 2)
    earnings = d.deploy(p.HostEarnings, address)
    treasury = d.deploy(p.Treasury, d, address)
    mk2 = d.deploy(
        p.JobMarketplace,
        d,
        env.nodes,
        env.proofs,
        earnings,
        treasury,
        fee_bps,
        SETTLEMENT_WINDOW,
        ETH_MIN_DEPOSIT,
    )
    assert mk2.address == address
    mk2.configureToken(env.usdc, True, USDC_MIN_DEPOSIT, sender=d)
    return mk2, earnings, treasury


def register_contract_host(env: Env, proxy: Any, operator: Any) -> None:
    """Register a ProxyAccount-based contract as a host of MODEL_ID (ETH and USDC)."""
    env.fab.transfer(proxy, MIN_STAKE, sender=env.deployer)
    nodes = env.nodes
    proxy.execute(env.fab, 0, env.fab.approve.encode_input(nodes, MIN_STAKE), sender=operator)
    data = nodes.register.encode_input(
        MIN_STAKE,
        "wss://contract-host.example",
        "{}",
        [MODEL_ID],
        [ETH, env.usdc.address],
        [HOST_ETH_MIN_PRICE, HOST_USDC_MIN_PRICE],
    )
    proxy.execute(nodes, 0, data, sender=operator)


def fees(tx: Any) -> int:
    """Wei the sender paid for gas."""
    return int(tx.total_fees_paid)
