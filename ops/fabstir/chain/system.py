"""Deploy and wire the whole contract system with ape (tests, benchmarks, deploy script).

The two ledgers are deployed before the marketplace, to its precomputed address, and
the marketplace's constructor refuses ledgers that do not name it: the wiring between
vault and ledgers is fixed at deploy and cannot be forgotten afterwards.

Every transaction goes through a `TxSender`, which records its hash, block and gas;
`deploy_system` can keep contracts that are already deployed (`reuse`), and each wiring
step is skipped when the chain already has it, so a deploy can be resumed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from fabstir.chain.deployments import CORE_CONTRACTS, ContractRecord, TokenRecord, TxRecord
from fabstir.chain.params import DeployParams

ETH = "0x0000000000000000000000000000000000000000"
DEFAULT_ADMIN_ROLE = "0x" + "00" * 32

Log = Callable[[str], None]


def role_id(name: str) -> str:
    """bytes32 id of an AccessControl role by constant name (DEFAULT_ADMIN_ROLE is zero)."""
    if name == "DEFAULT_ADMIN_ROLE":
        return DEFAULT_ADMIN_ROLE
    return "0x" + keccak(text=name).hex()


def address_of(account: Any) -> str:
    """Checksummed address of an ape account, contract instance or address string."""
    return to_checksum_address(account if isinstance(account, str) else account.address)


# Which contract type each of the system's own contracts is built from.
CONTRACT_TYPES = {
    "FABToken": "FABToken",
    "ModelRegistry": "ModelRegistry",
    "NodeRegistry": "NodeRegistry",
    "ProofSystem": "ProofSystem",
    "HostEarnings": "HostEarnings",
    "Treasury": "Treasury",
    "JobMarketplace": "JobMarketplace",
}
# What every "mock" row of the token table is deployed as; also the ABI for ERC-20 reads.
MOCK_TOKEN_TYPE = "MockERC20"
# Deployed together or not at all: the ledgers name the marketplace's precomputed address.
LEDGER_GROUP = ("HostEarnings", "Treasury", "JobMarketplace")


def deployment_names(params: DeployParams) -> tuple[str, ...]:
    """Every contract a deployment records, in deploy order: FABToken, the ERC-20
    payment tokens under their symbols (mocks deployed here, real ones external),
    then the rest of the system."""
    return (
        CORE_CONTRACTS[0],
        *(t.symbol for t in params.erc20_tokens),
        *CORE_CONTRACTS[1:],
    )


def contract_type(name: str) -> str:
    """The contract type a recorded name is built from (a token's symbol: MockERC20)."""
    return CONTRACT_TYPES.get(name, MOCK_TOKEN_TYPE)


@dataclass
class System:
    """The deployed contracts (ape ContractInstance objects)."""

    fab: Any
    model_registry: Any
    node_registry: Any
    proof_system: Any
    host_earnings: Any
    treasury: Any
    marketplace: Any
    # ERC-20 payment tokens by symbol, in the token table's order (the coin has no contract).
    tokens: dict[str, Any] = field(default_factory=dict)
    records: dict[str, ContractRecord] = field(default_factory=dict)
    transactions: list[TxRecord] = field(default_factory=list)
    # name -> "deployed" | "reused" | "external"
    status: dict[str, str] = field(default_factory=dict)

    def token(self, symbol: str) -> Any:
        """The ERC-20 payment token with `symbol` (case-insensitive)."""
        for known, instance in self.tokens.items():
            if known.lower() == symbol.lower():
                return instance
        raise KeyError(f"no payment token {symbol!r}; the system has {', '.join(self.tokens)}")

    @property
    def usdc(self) -> Any:
        """The USDC row of the table: the token the contract tests, benchmarks and
        the demo pay in (DEFAULT_TOKENS). Nothing in deploy or verify relies on it."""
        return self.token("USDC")

    def as_dict(self) -> dict[str, Any]:
        return {
            "FABToken": self.fab,
            **self.tokens,
            "ModelRegistry": self.model_registry,
            "NodeRegistry": self.node_registry,
            "ProofSystem": self.proof_system,
            "HostEarnings": self.host_earnings,
            "Treasury": self.treasury,
            "JobMarketplace": self.marketplace,
        }

    def addresses(self) -> dict[str, str]:
        return {name: address_of(c) for name, c in self.as_dict().items()}


@dataclass(frozen=True)
class Roles:
    """Who gets which role; pauser and token_admin default to the deployer (admin)."""

    curator: Any
    slasher: Any
    treasurer: Any
    pauser: Any = None
    token_admin: Any = None


def code_hash(container: Any) -> str:
    """keccak256 of a contract type's creation bytecode (constructor arguments excluded)."""
    bytecode = container.contract_type.deployment_bytecode.bytecode or "0x"
    return "0x" + keccak(hexstr=bytecode).hex()


class TxSender:
    """Sends every deploy and call from one account with the same transaction settings
    (gas pricing, confirmations), and records what each one cost."""

    def __init__(
        self, account: Any, tx_kwargs: Mapping[str, Any] | None = None, log: Log | None = None
    ):
        self.account = account
        self.tx_kwargs = dict(tx_kwargs or {})
        self.log = log or (lambda _msg: None)
        self.transactions: list[TxRecord] = []
        self.on_deployed: Callable[[str, ContractRecord], None] | None = None

    @property
    def address(self) -> str:
        return address_of(self.account)

    def deploy(self, name: str, container: Any, *args: Any) -> tuple[Any, ContractRecord]:
        self.log(f"  deploying {name} ...")
        instance = self.account.deploy(container, *args, **self.tx_kwargs)
        receipt = self.account.provider.get_receipt(instance.txn_hash)
        record = ContractRecord(
            address=address_of(instance),
            block=int(receipt.block_number),
            tx_hash=str(receipt.txn_hash),
            code_hash=code_hash(container),
            contract_type=container.contract_type.name,
        )
        self.transactions.append(
            TxRecord(
                f"deploy {name}",
                record.tx_hash or "",
                int(receipt.block_number),
                int(receipt.gas_used),
                name,
            )
        )
        self.log(
            f"  deployed  {name} at {record.address} (block {record.block}, gas {receipt.gas_used})"
        )
        if self.on_deployed is not None:
            self.on_deployed(name, record)
        return instance, record

    def call(self, step: str, method: Any, *args: Any) -> Any:
        self.log(f"  {step} ...")
        receipt = method(*args, sender=self.account, **self.tx_kwargs)
        self.transactions.append(
            TxRecord(step, str(receipt.txn_hash), int(receipt.block_number), int(receipt.gas_used))
        )
        return receipt


def deploy_system(
    project: Any,
    deployer: Any,
    params: DeployParams,
    roles: Roles,
    *,
    sender: TxSender | None = None,
    reuse: Mapping[str, tuple[Any, ContractRecord]] | None = None,
) -> System:
    """Deploy every contract from `deployer` and grant the roles the system needs.

    `reuse` maps deployment names to (instance, record) of contracts to keep; the three
    of LEDGER_GROUP are kept together or not at all. Wiring steps already present on
    chain are skipped. The deployer keeps DEFAULT_ADMIN_ROLE everywhere; rotating it to
    a multisig is a separate, audited step (docs/runbooks/deploy.md).
    """
    tx = sender or TxSender(deployer)
    keep = dict(reuse or {})
    if not all(name in keep for name in LEDGER_GROUP):
        for name in LEDGER_GROUP:
            keep.pop(name, None)
    records: dict[str, ContractRecord] = {}
    status: dict[str, str] = {}

    def get(name: str, *args: Any) -> Any:
        if name in keep:
            instance, record = keep[name]
            records[name], status[name] = record, "reused"
            return instance
        instance, records[name] = tx.deploy(name, getattr(project, contract_type(name)), *args)
        status[name] = "deployed"
        return instance

    def external(name: str, container: Any, address: str) -> Any:
        records[name] = ContractRecord(
            address=to_checksum_address(address),
            contract_type=container.contract_type.name,
            external=True,
        )
        status[name] = "external"
        return container.at(address)

    fab = (
        external("FABToken", project.FABToken, params.fab_address)
        if params.fab_address
        else get("FABToken", deployer, params.fab_supply)
    )
    tokens = {
        t.symbol: (
            get(t.symbol, mock_token_name(t.symbol), t.symbol, t.decimals)
            if t.mock
            else external(t.symbol, getattr(project, MOCK_TOKEN_TYPE), t.address)
        )
        for t in params.erc20_tokens
    }
    models = get("ModelRegistry", deployer)
    nodes = get(
        "NodeRegistry",
        deployer,
        fab,
        models,
        params.min_stake,
        params.unbonding_period,
        params.max_slash_bps,
    )
    proofs = get("ProofSystem")

    if all(name in keep for name in LEDGER_GROUP):
        earnings, treasury, marketplace = (get(name) for name in LEDGER_GROUP)
    else:
        nonce = deployer.nonce
        marketplace_address = deployer.get_deployment_address(nonce + 2)
        earnings = get("HostEarnings", marketplace_address)
        treasury = get("Treasury", deployer, marketplace_address)
        marketplace = get(
            "JobMarketplace",
            deployer,
            nodes,
            proofs,
            earnings,
            treasury,
            params.fee_bps,
            params.settlement_window,
            params.native_token.min_deposit,
        )
        if address_of(marketplace) != address_of(marketplace_address):
            raise RuntimeError("marketplace landed at an unexpected address; nonce raced")

    def grant(contract: Any, cname: str, role: str, account: Any) -> None:
        if not contract.hasRole(role_id(role), account):
            tx.call(
                f"{cname}.grantRole({role}, {address_of(account)})",
                contract.grantRole,
                role_id(role),
                account,
            )

    grant(models, "ModelRegistry", "CURATOR_ROLE", roles.curator)
    grant(nodes, "NodeRegistry", "MARKETPLACE_ROLE", marketplace)
    grant(nodes, "NodeRegistry", "SLASHER_ROLE", roles.slasher)
    grant(treasury, "Treasury", "TREASURER_ROLE", roles.treasurer)
    # Tokens are configured in table order, so tokens() lists them in that order.
    for spec in params.erc20_tokens:
        token = tokens[spec.symbol]
        config = marketplace.tokenConfig(token)
        if not config.accepted or config.minDeposit != spec.min_deposit:
            tx.call(
                f"JobMarketplace.configureToken({spec.symbol}, true, {spec.min_deposit})",
                marketplace.configureToken,
                token,
                True,
                spec.min_deposit,
            )
    # The constructor makes the deployer pauser and token admin; hand them over if asked.
    for role, holder in (("PAUSER_ROLE", roles.pauser), ("TOKEN_ADMIN_ROLE", roles.token_admin)):
        if holder is None or address_of(holder) == address_of(deployer):
            continue
        grant(marketplace, "JobMarketplace", role, holder)
        if marketplace.hasRole(role_id(role), deployer):
            tx.call(
                f"JobMarketplace.renounceRole({role}, deployer)",
                marketplace.renounceRole,
                role_id(role),
                deployer,
            )

    names = deployment_names(params)
    return System(
        fab,
        models,
        nodes,
        proofs,
        earnings,
        treasury,
        marketplace,
        tokens=tokens,
        records={n: records[n] for n in names},
        transactions=list(tx.transactions),
        status={n: status[n] for n in names},
    )


def mock_token_name(symbol: str) -> str:
    """The ERC-20 name() of the mock deployed for `symbol`."""
    return f"Mock {symbol}"


def token_records(params: DeployParams, system: System) -> list[TokenRecord]:
    """The token table with addresses, as the deployment record carries it."""
    return [
        TokenRecord(
            symbol=t.symbol,
            decimals=t.decimals,
            address=ETH if t.native else address_of(system.tokens[t.symbol]),
            mock=t.mock,
            min_deposit=t.min_deposit,
        )
        for t in params.tokens
    ]


def attach_system(project: Any, addresses: Mapping[str, str]) -> System:
    """ape instances for recorded addresses; every name that is not one of the
    system's own contracts is a payment token (attached with the MockERC20 ABI, which
    covers the ERC-20 reads)."""
    c = {name: getattr(project, contract_type(name)).at(a) for name, a in addresses.items()}
    return System(
        c["FABToken"],
        c["ModelRegistry"],
        c["NodeRegistry"],
        c["ProofSystem"],
        c["HostEarnings"],
        c["Treasury"],
        c["JobMarketplace"],
        tokens={n: i for n, i in c.items() if n not in CONTRACT_TYPES},
    )
