"""Read a deployment back from the chain and compare it with what was configured.

`verify_system` checks every address the contracts hold, every parameter, the token
configuration and every role, and raises `WiringError` listing all differences. Role
membership is checked both ways: each configured holder has its role, and nobody else
does. The contracts use plain AccessControl (no enumeration), so the holders of each
role are rebuilt from the RoleGranted/RoleRevoked events since the deploy block.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_abi.abi import encode as abi_encode
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from fabstir.chain.deployments import TokenRecord
from fabstir.chain.params import DeployParams
from fabstir.chain.system import DEFAULT_ADMIN_ROLE, ETH, address_of, role_id

ROLE_GRANTED = "0x" + keccak(text="RoleGranted(bytes32,address,address)").hex()
ROLE_REVOKED = "0x" + keccak(text="RoleRevoked(bytes32,address,address)").hex()
ROLE_NAMES = (
    "DEFAULT_ADMIN_ROLE",
    "CURATOR_ROLE",
    "SLASHER_ROLE",
    "MARKETPLACE_ROLE",
    "TREASURER_ROLE",
    "PAUSER_ROLE",
    "TOKEN_ADMIN_ROLE",
)
_ROLE_BY_ID = {role_id(n): n for n in ROLE_NAMES}
DOMAIN_TYPEHASH = keccak(
    text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
# The block range of one eth_getLogs request (public RPCs cap it).
LOG_CHUNK = 10_000


class WiringError(Exception):
    """The deployment on chain is not what was configured; `problems` says how."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("wiring check failed:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class ExpectedWiring:
    """What a deployment must look like: parameters, tokens and role holders."""

    params: DeployParams
    chain_id: int
    fab: str
    # The token table with addresses (the coin at the zero address), in table order.
    tokens: Sequence[TokenRecord]
    # role name in the params file -> address (see RoleConfig.resolve)
    roles: Mapping[str, str]

    def role_holders(self, marketplace: str) -> dict[str, dict[str, set[str]]]:
        """contract -> role -> the exact set of holders."""
        r: dict[str, str] = {k: str(to_checksum_address(v)) for k, v in self.roles.items()}
        admin = {r["admin"]}
        return {
            "ModelRegistry": {"DEFAULT_ADMIN_ROLE": admin, "CURATOR_ROLE": {r["curator"]}},
            "NodeRegistry": {
                "DEFAULT_ADMIN_ROLE": admin,
                "MARKETPLACE_ROLE": {str(to_checksum_address(marketplace))},
                "SLASHER_ROLE": {r["slasher"]},
            },
            "Treasury": {"DEFAULT_ADMIN_ROLE": admin, "TREASURER_ROLE": {r["treasurer"]}},
            "JobMarketplace": {
                "DEFAULT_ADMIN_ROLE": admin,
                "PAUSER_ROLE": {r["pauser"]},
                "TOKEN_ADMIN_ROLE": {r["token_admin"]},
            },
        }


@dataclass
class VerifyReport:
    checks: int = 0
    block: int = 0
    role_holders: dict[str, dict[str, list[str]]] = field(default_factory=dict)


def domain_separator(chain_id: int, marketplace: str) -> bytes:
    return keccak(
        abi_encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address"],
            [
                DOMAIN_TYPEHASH,
                keccak(text="Fabstir Marketplace"),
                keccak(text="1"),
                chain_id,
                to_checksum_address(marketplace),
            ],
        )
    )


def _hex(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    return str(value).lower()


def role_holders_from_logs(
    web3: Any, address: str, from_block: int, to_block: int, chunk: int = LOG_CHUNK
) -> dict[str, set[str]]:
    """role id -> current holders, replaying RoleGranted/RoleRevoked of `address`
    (a bounded scan: ranges the RPC refuses are shrunk, see fabstir.chain.logscan)."""
    from fabstir.chain.logscan import LogRange, scan_logs

    logs = scan_logs(
        web3,
        address=address,
        topics=[[ROLE_GRANTED, ROLE_REVOKED]],
        from_block=from_block,
        to_block=to_block,
        ranges=LogRange(initial=chunk, maximum=chunk),
    )
    logs.sort(key=lambda lg: (int(lg["blockNumber"]), int(lg["logIndex"])))
    holders: dict[str, set[str]] = {}
    for lg in logs:
        topics = [_hex(t) for t in lg["topics"]]
        role, account = topics[1], to_checksum_address("0x" + topics[2][-40:])
        members = holders.setdefault(role, set())
        if topics[0] == ROLE_GRANTED:
            members.add(account)
        else:
            members.discard(account)
    return {role: members for role, members in holders.items() if members}


def verify_system(
    contracts: Mapping[str, Any],
    expected: ExpectedWiring,
    *,
    from_block: int = 0,
    provider: Any = None,
) -> VerifyReport:
    """Check the deployment `contracts` (deployment name -> ape instance) against
    `expected`; raise WiringError naming every difference."""
    c = dict(contracts)
    mkt, nodes = c["JobMarketplace"], c["NodeRegistry"]
    earnings, treasury, proofs = c["HostEarnings"], c["Treasury"], c["ProofSystem"]
    prov = provider or mkt.provider
    web3 = prov.web3
    p = expected.params
    problems: list[str] = []
    report = VerifyReport(block=int(web3.eth.block_number))

    def check(what: str, actual: Any, want: Any) -> None:
        report.checks += 1
        if isinstance(want, str) and want.startswith("0x") and len(want) == 42:
            ok = isinstance(actual, str) and actual.lower() == want.lower()
        else:
            ok = actual == want
        if not ok:
            problems.append(f"{what} is {actual!r}, expected {want!r}")

    chain_id = int(web3.eth.chain_id)
    check("chain id", chain_id, expected.chain_id)
    addr = {name: address_of(inst) for name, inst in c.items()}
    check("FABToken address", addr["FABToken"], expected.fab)
    erc20 = [t for t in expected.tokens if to_checksum_address(t.address) != ETH]
    for t in erc20:
        if t.symbol not in addr:
            problems.append(f"payment token {t.symbol} is not among the contracts checked")
        else:
            check(f"{t.symbol} address", addr[t.symbol], t.address)
    for name, a in addr.items():
        report.checks += 1
        if len(web3.eth.get_code(a)) == 0:
            problems.append(f"{name} at {a} has no code")
    if problems:  # nothing else can be read
        raise WiringError(problems)

    # Tokens: the decimals the table promises (amounts are scaled by them everywhere).
    for t in erc20:
        check(f"{t.symbol}.decimals()", c[t.symbol].decimals(), t.decimals)
    check("FABToken.decimals()", c["FABToken"].decimals(), 18)

    # JobMarketplace: the addresses it holds and its parameters.
    check("JobMarketplace.nodeRegistry()", mkt.nodeRegistry(), addr["NodeRegistry"])
    check("JobMarketplace.modelRegistry()", mkt.modelRegistry(), addr["ModelRegistry"])
    check("JobMarketplace.proofSystem()", mkt.proofSystem(), addr["ProofSystem"])
    check("JobMarketplace.hostEarnings()", mkt.hostEarnings(), addr["HostEarnings"])
    check("JobMarketplace.treasury()", mkt.treasury(), addr["Treasury"])
    check("JobMarketplace.feeBps()", mkt.feeBps(), p.fee_bps)
    check("JobMarketplace.settlementWindow()", mkt.settlementWindow(), p.settlement_window)
    check("JobMarketplace.paused()", mkt.paused(), False)
    check(
        "JobMarketplace.domainSeparator()",
        _hex(mkt.domainSeparator()),
        "0x" + domain_separator(chain_id, addr["JobMarketplace"]).hex(),
    )
    tokens = [to_checksum_address(t) for t in mkt.tokens()]
    # The coin is always index 0 (the constructor); the ERC-20s follow in table order.
    check(
        "JobMarketplace.tokens()",
        tokens,
        [ETH, *(to_checksum_address(t.address) for t in erc20)],
    )
    for t in expected.tokens:
        cfg = mkt.tokenConfig(to_checksum_address(t.address))
        check(f"JobMarketplace.tokenConfig({t.symbol}).accepted", cfg.accepted, True)
        check(f"JobMarketplace.tokenConfig({t.symbol}).minDeposit", cfg.minDeposit, t.min_deposit)

    # Ledgers name the marketplace.
    check("HostEarnings.marketplace()", earnings.marketplace(), addr["JobMarketplace"])
    check("Treasury.marketplace()", treasury.marketplace(), addr["JobMarketplace"])
    check("Treasury.feeBps()", treasury.feeBps(), p.fee_bps)

    # NodeRegistry.
    check("NodeRegistry.fabToken()", nodes.fabToken(), addr["FABToken"])
    check("NodeRegistry.modelRegistry()", nodes.modelRegistry(), addr["ModelRegistry"])
    check("NodeRegistry.minStake()", nodes.minStake(), p.min_stake)
    check("NodeRegistry.unbondingPeriod()", nodes.unbondingPeriod(), p.unbonding_period)
    check("NodeRegistry.maxSlashBps()", nodes.maxSlashBps(), p.max_slash_bps)
    check("JobMarketplace.maxDuration()", mkt.maxDuration(), p.max_session_duration)

    # ProofSystem answers for this marketplace and chain.
    check(
        "ProofSystem.domainSeparator(marketplace)",
        _hex(proofs.domainSeparator(addr["JobMarketplace"])),
        "0x" + domain_separator(chain_id, addr["JobMarketplace"]).hex(),
    )

    # Roles: every configured holder has its role (hasRole), and the event history
    # shows nobody else holding any role.
    wanted = expected.role_holders(addr["JobMarketplace"])
    for cname, roles in wanted.items():
        contract = c[cname]
        for role, members in roles.items():
            for member in sorted(members):
                report.checks += 1
                if not contract.hasRole(role_id(role), member):
                    problems.append(f"{cname}: {role} is not granted to {member}")
        seen = role_holders_from_logs(web3, addr[cname], from_block, report.block)
        report.role_holders[cname] = {
            _ROLE_BY_ID.get(r, r): sorted(m) for r, m in sorted(seen.items())
        }
        for rid, holders in seen.items():
            name = _ROLE_BY_ID.get(rid, rid)
            extra = holders - roles.get(name, set())
            report.checks += 1
            for member in sorted(extra):
                if name not in roles:
                    problems.append(f"{cname}: unexpected role {name} is granted to {member}")
                else:
                    problems.append(
                        f"{cname}: {name} is also granted to {member}, which is not configured"
                    )
        # A role the events say nobody holds, but which is configured, is caught by
        # the hasRole checks above; DEFAULT_ADMIN must also be admin of every role.
        for role in roles:
            report.checks += 1
            admin_role = _hex(contract.getRoleAdmin(role_id(role)))
            if admin_role != DEFAULT_ADMIN_ROLE:
                problems.append(
                    f"{cname}: admin of {role} is {admin_role}, expected DEFAULT_ADMIN_ROLE"
                )

    if problems:
        raise WiringError(problems)
    return report
