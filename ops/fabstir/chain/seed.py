"""Seed a local chain so the demo and the tests find a ready marketplace.

Tops up every mock payment token of the deployment's token table (minted) and FAB
(from the deployer) for the standard test accounts
and adds + approves every model of models/catalogue.json. Idempotent: balances are
topped up to a target, models that exist or are approved are skipped.

Refuses anything but a local chain: the chain id must be a local one and the network
a local ape network. 84532 is refused even on a local anvil (that is the Base Sepolia
rehearsal, which must look exactly like the live chain).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fabstir.chain.deployments import Deployment
from fabstir.chain.system import address_of, role_id
from fabstir.models import CATALOGUE_PATH, load_catalogue

LOCAL_CHAIN_IDS = frozenset({31337, 1337})
KNOWN_LIVE = {
    1: "Ethereum mainnet",
    11155111: "Sepolia",
    8453: "Base mainnet",
    84532: "Base Sepolia (or its local rehearsal)",
}
# Whole tokens each recipient is topped up to, of every mock payment token.
TOKEN_TARGET = 10_000
FAB_TARGET = 10_000 * 10**18
_APPROVED = 2  # ModelRegistry.Status.Approved


class NotLocalChain(Exception):
    """seed_local was pointed at a chain that is not a local development chain."""


def ensure_local(chain_id: int, network_is_local: bool) -> None:
    if chain_id not in LOCAL_CHAIN_IDS:
        known = f" ({KNOWN_LIVE[chain_id]})" if chain_id in KNOWN_LIVE else ""
        raise NotLocalChain(
            f"seed_local only runs on a local chain (chain id {sorted(LOCAL_CHAIN_IDS)}); "
            f"this is chain {chain_id}{known}"
        )
    if not network_is_local:
        raise NotLocalChain(
            f"chain {chain_id} is reached through a live network; refusing to seed it"
        )


@dataclass
class SeedReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def seed_local(
    project: Any,
    deployment: Deployment,
    recipients: Sequence[Any],
    *,
    funder: Any,
    curator: Any,
    token_target: int = TOKEN_TARGET,
    fab_target: int = FAB_TARGET,
    catalogue: Path = CATALOGUE_PATH,
) -> SeedReport:
    provider = funder.provider
    ensure_local(int(provider.chain_id), bool(provider.network.is_local))
    if deployment.chain_id != int(provider.chain_id):
        raise NotLocalChain(
            f"deployment is for chain {deployment.chain_id}, connected to {provider.chain_id}"
        )
    report = SeedReport()
    mocks = [(t, project.MockERC20.at(t.address)) for t in deployment.tokens if t.mock]
    fab = project.FABToken.at(deployment.address("FABToken"))
    registry = project.ModelRegistry.at(deployment.address("ModelRegistry"))

    for account in recipients:
        who = address_of(account)
        for spec, token in mocks:
            target = token_target * 10**spec.decimals
            balance = int(token.balanceOf(who))
            if balance < target:
                token.mint(who, target - balance, sender=funder)
                minted = (target - balance) / 10**spec.decimals
                report.done.append(f"minted {minted:,.2f} {spec.symbol} to {who}")
            else:
                report.skipped.append(f"{spec.symbol} {who}")
        if who == address_of(funder):
            continue
        balance = int(fab.balanceOf(who))
        if balance < fab_target:
            fab.transfer(who, fab_target - balance, sender=funder)
            report.done.append(f"sent {(fab_target - balance) / 10**18:,.0f} FAB to {who}")
        else:
            report.skipped.append(f"FAB {who}")

    if not registry.hasRole(role_id("CURATOR_ROLE"), curator):
        raise PermissionError(
            f"{address_of(curator)} lacks CURATOR_ROLE on ModelRegistry {registry.address}"
        )
    for entry in load_catalogue(catalogue):
        mid = entry.model_id
        if not registry.exists(mid):
            registry.addModel(
                entry.repo,
                entry.file,
                bytes.fromhex(entry.sha256),
                entry.size,
                json.dumps(entry.metadata, separators=(",", ":"), sort_keys=True),
                sender=curator,
            )
            report.done.append(f"added model {entry.key} ({mid})")
        else:
            report.skipped.append(f"model {entry.key} exists")
        if int(registry.getModel(mid).status) != _APPROVED:
            registry.approveModel(mid, sender=curator)
            report.done.append(f"approved model {entry.key}")
        else:
            report.skipped.append(f"model {entry.key} approved")
    return report
