"""Rotating admin (and operational) roles to a multisig: grant, check, renounce."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from fabstir.chain.deploy import deploy, expected_wiring
from fabstir.chain.params import ParamsFile
from fabstir.chain.roles import RoleRotationError, apply_grants, finish_rotation, role_changes
from fabstir.chain.system import DEFAULT_ADMIN_ROLE, TxSender, attach_system, role_id


def test_rotate_admin_to_a_multisig(
    project: Any,
    accounts: Any,
    deployer: Any,
    deployed: Any,
    out_dir: Path,
    local_params: ParamsFile,
) -> None:
    safe = accounts[5].address  # stands in for the multisig
    roles = dataclasses.replace(local_params.roles, admin=safe, pauser=safe)
    target = dataclasses.replace(local_params, roles=roles)
    dep = deployed.deployment
    s = attach_system(project, dep.addresses)
    expected = expected_wiring(target, 31337, s, dep.deployer)
    tx = TxSender(deployer)

    grants, removals = role_changes(s, expected, deployer.address, dep.first_block)
    assert {(r.contract, r.role, r.action) for r in removals} == {
        (c, "DEFAULT_ADMIN_ROLE", "renounce")
        for c in ("ModelRegistry", "NodeRegistry", "Treasury", "JobMarketplace")
    } | {("JobMarketplace", "PAUSER_ROLE", "renounce")}
    assert [g.describe() for g in grants] == [
        f"ModelRegistry.grantRole(DEFAULT_ADMIN_ROLE, {safe})",
        f"NodeRegistry.grantRole(DEFAULT_ADMIN_ROLE, {safe})",
        f"Treasury.grantRole(DEFAULT_ADMIN_ROLE, {safe})",
        f"JobMarketplace.grantRole(DEFAULT_ADMIN_ROLE, {safe})",
        f"JobMarketplace.grantRole(PAUSER_ROLE, {safe})",
    ]
    # Finishing before the grants would strand the contracts: refused.
    with pytest.raises(RoleRotationError, match="run the grant step first"):
        finish_rotation(s, tx, expected, dep.first_block)

    apply_grants(s, tx, grants)
    removed, report = finish_rotation(s, tx, expected, dep.first_block)
    assert [r.action for r in removed] == ["renounce"] * 5
    assert removed[-1].role == "DEFAULT_ADMIN_ROLE"  # admin goes last
    for c in (s.model_registry, s.node_registry, s.treasury, s.marketplace):
        assert c.hasRole(DEFAULT_ADMIN_ROLE, safe) and not c.hasRole(DEFAULT_ADMIN_ROLE, deployer)
    assert not s.marketplace.hasRole(role_id("PAUSER_ROLE"), deployer)
    assert report.role_holders["JobMarketplace"]["DEFAULT_ADMIN_ROLE"] == [safe]
    # The multisig can act; the old admin cannot.
    s.marketplace.pause(sender=accounts[5])
    s.marketplace.unpause(sender=accounts[5])
    # With the params file updated, deploy verifies and reuses the rotated deployment.
    assert deploy(project, deployer, target, out_dir=out_dir).reused
