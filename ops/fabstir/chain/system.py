"""Deploy and wire the whole contract system with ape (tests, benchmarks, deploy script).

The two ledgers are deployed before the marketplace, to its precomputed address, and
the marketplace's constructor refuses ledgers that do not name it: the wiring between
vault and ledgers is fixed at deploy and cannot be forgotten afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fabstir.chain.params import DeployParams

ETH = "0x0000000000000000000000000000000000000000"


@dataclass
class System:
    """The deployed contracts (ape ContractInstance objects)."""

    fab: Any
    usdc: Any
    model_registry: Any
    node_registry: Any
    proof_system: Any
    host_earnings: Any
    treasury: Any
    marketplace: Any

    def as_dict(self) -> dict[str, Any]:
        return {
            "FABToken": self.fab,
            "USDC": self.usdc,
            "ModelRegistry": self.model_registry,
            "NodeRegistry": self.node_registry,
            "ProofSystem": self.proof_system,
            "HostEarnings": self.host_earnings,
            "Treasury": self.treasury,
            "JobMarketplace": self.marketplace,
        }


@dataclass(frozen=True)
class Roles:
    """Who gets which role; every one defaults to the deployer."""

    curator: Any
    slasher: Any
    treasurer: Any
    slash_recipient: Any


def deploy_system(project: Any, deployer: Any, params: DeployParams, roles: Roles) -> System:
    """Deploy every contract from `deployer` and grant the roles the system needs.

    The deployer keeps DEFAULT_ADMIN_ROLE everywhere; rotating it to a multisig is a
    separate, audited step (docs/runbooks/deploy.md).
    """
    fab = (
        project.FABToken.at(params.fab_address)
        if params.fab_address
        else deployer.deploy(project.FABToken, deployer, params.fab_supply)
    )
    usdc = (
        project.MockUSDC.at(params.usdc_address)
        if params.usdc_address
        else deployer.deploy(project.MockUSDC)
    )
    models = deployer.deploy(project.ModelRegistry, deployer)
    nodes = deployer.deploy(
        project.NodeRegistry,
        deployer,
        fab,
        models,
        params.min_stake,
        params.unbonding_period,
        roles.slash_recipient,
    )
    proofs = deployer.deploy(project.ProofSystem)

    nonce = deployer.nonce
    marketplace_address = deployer.get_deployment_address(nonce + 2)
    earnings = deployer.deploy(project.HostEarnings, marketplace_address)
    treasury = deployer.deploy(project.Treasury, deployer, marketplace_address)
    marketplace = deployer.deploy(
        project.JobMarketplace,
        deployer,
        nodes,
        proofs,
        earnings,
        treasury,
        params.fee_bps,
        params.settlement_window,
        params.eth_min_deposit,
    )
    if marketplace.address != marketplace_address:
        raise RuntimeError("marketplace landed at an unexpected address; nonce raced")

    models.grantRole(models.CURATOR_ROLE(), roles.curator, sender=deployer)
    nodes.grantRole(nodes.MARKETPLACE_ROLE(), marketplace, sender=deployer)
    nodes.grantRole(nodes.SLASHER_ROLE(), roles.slasher, sender=deployer)
    treasury.grantRole(treasury.TREASURER_ROLE(), roles.treasurer, sender=deployer)
    marketplace.configureToken(usdc, True, params.usdc_min_deposit, sender=deployer)
    return System(fab, usdc, models, nodes, proofs, earnings, treasury, marketplace)
