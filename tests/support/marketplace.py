"""The escrow marketplace suite's system (JobMarketplace, ProofSystem, ledgers): the
deployed parameters, the actors (`Env`), session factories (`open_usdc`, `open_eth`)
and receipts signed with `fabstir.protocol.receipts` (the SDK's signer), so every test
also checks the Python side produces bytes the contract accepts.

The system is deployed once per test session (tests/marketplace/conftest.py) and ape
snapshots the chain around every test, so each test starts from that state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ape
from eth_utils import keccak

from fabstir.chain.system import ETH
from fabstir.protocol.receipts import Eip712Domain, sign_receipt

USDC_UNIT = 10**6


FAB = 10**18


MIN_STAKE = 1000 * FAB


SETTLEMENT_WINDOW = 3600


FEE_BPS = 1000


ETH_MIN_DEPOSIT = 5 * 10**14


USDC_MIN_DEPOSIT = 1_000_000


HOST_USDC_MIN_PRICE = 100


HOST_ETH_MIN_PRICE = 10**9


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


class Status:
    NONE, ACTIVE, CLOSING, SETTLED = range(4)


class Outcome:
    OK, UNKNOWN_SESSION, NOT_OPEN, NOT_HOST, STALE, EXCEEDS_DEPOSIT, BAD_SIGNATURE = range(7)


def content_hash(n: int) -> bytes:
    """A distinct, arbitrary transcript hash per receipt number."""
    return keccak(n.to_bytes(32, "big"))


@dataclass
class Env:
    """The deployed system and the actors of the suite."""

    deployer: Any
    curator: Any
    slasher: Any
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
