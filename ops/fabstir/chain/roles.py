"""Move roles to the holders a params file names (e.g. admin to a multisig), safely.

Two steps, each its own command (`ape run roles grant`, then `ape run roles finish`):

1. grant: every configured holder that lacks its role gets it (the current admin sends).
2. finish: refuses unless every configured holder now holds its role; then revokes the
   role from every holder that is not configured (renouncing the sender's own roles,
   DEFAULT_ADMIN_ROLE last), and runs the full wiring check.

Between the two the operator checks on chain (and from the multisig itself) that the
new holders can act, before the old admin lets go.
"""

from __future__ import annotations

from dataclasses import dataclass

from fabstir.chain.system import System, TxSender, address_of, role_id
from fabstir.chain.verify import ExpectedWiring, VerifyReport, role_holders_from_logs, verify_system

_ROLE_ORDER = (
    "CURATOR_ROLE",
    "SLASHER_ROLE",
    "MARKETPLACE_ROLE",
    "TREASURER_ROLE",
    "PAUSER_ROLE",
    "TOKEN_ADMIN_ROLE",
)


class RoleRotationError(Exception):
    """A role change would leave a role without its configured holder."""


@dataclass(frozen=True)
class RoleChange:
    contract: str
    role: str
    account: str
    action: str  # "grant" | "revoke" | "renounce"

    def describe(self) -> str:
        verb = {"grant": "grant", "revoke": "revoke", "renounce": "renounce"}[self.action]
        return f"{self.contract}.{verb}Role({self.role}, {self.account})"


def _name(role_hex: str) -> str:
    for n in ("DEFAULT_ADMIN_ROLE", *_ROLE_ORDER):
        if role_id(n) == role_hex:
            return n
    return role_hex


def role_changes(
    system: System, expected: ExpectedWiring, sender: str, from_block: int = 0
) -> tuple[list[RoleChange], list[RoleChange]]:
    """(grants still needed, removals still needed) to reach `expected`'s role holders."""
    contracts = system.as_dict()
    web3 = system.marketplace.provider.web3
    head = int(web3.eth.block_number)
    wanted = expected.role_holders(address_of(system.marketplace))
    grants: list[RoleChange] = []
    removals: list[RoleChange] = []
    for cname, roles in wanted.items():
        contract = contracts[cname]
        for role, members in roles.items():
            for member in sorted(members):
                if not contract.hasRole(role_id(role), member):
                    grants.append(RoleChange(cname, role, member, "grant"))
        held = role_holders_from_logs(web3, address_of(contract), from_block, head)
        for rid, holders in held.items():
            role = _name(rid)
            for member in sorted(holders - roles.get(role, set())):
                action = "renounce" if member == address_of(sender) else "revoke"
                removals.append(RoleChange(cname, role, member, action))
    # Operational roles first, the sender's own admin role last of all.
    removals.sort(key=lambda c: (c.role == "DEFAULT_ADMIN_ROLE", c.action == "renounce"))
    return grants, removals


def apply_grants(system: System, tx: TxSender, grants: list[RoleChange]) -> None:
    contracts = system.as_dict()
    for change in grants:
        c = contracts[change.contract]
        tx.call(change.describe(), c.grantRole, role_id(change.role), change.account)


def finish_rotation(
    system: System, tx: TxSender, expected: ExpectedWiring, from_block: int = 0
) -> tuple[list[RoleChange], VerifyReport]:
    """Remove every unconfigured holder (after checking every configured one holds its
    role), then verify the whole deployment."""
    grants, removals = role_changes(system, expected, tx.address, from_block)
    if grants:
        raise RoleRotationError(
            "configured holders lack their roles; run the grant step first:\n"
            + "\n".join(f"  - {g.describe()}" for g in grants)
        )
    contracts = system.as_dict()
    for change in removals:
        c = contracts[change.contract]
        if change.action == "renounce":
            tx.call(change.describe(), c.renounceRole, role_id(change.role), change.account)
        else:
            tx.call(change.describe(), c.revokeRole, role_id(change.role), change.account)
    return removals, verify_system(system.as_dict(), expected, from_block=from_block)
