"""seed_local: funds the test accounts and registers the catalogue's models, once;
refuses anything but a local chain."""

from __future__ import annotations

from typing import Any

import pytest

from fabstir.chain.seed import FAB_TARGET, TOKEN_TARGET, NotLocalChain, ensure_local, seed_local
from fabstir.chain.system import attach_system
from fabstir.models import load_catalogue


def test_seed_funds_accounts_and_registers_models_idempotently(
    project: Any, accounts: Any, deployer: Any, deployed: Any
) -> None:
    dep = deployed.deployment
    recipients = list(accounts)[:5]
    report = seed_local(project, dep, recipients, funder=deployer, curator=deployer)
    s = attach_system(project, dep.addresses)
    for acct in recipients:
        assert s.usdc.balanceOf(acct) == TOKEN_TARGET * 10**6
        if acct != deployer:
            assert s.fab.balanceOf(acct) == FAB_TARGET
    catalogue = load_catalogue()
    assert catalogue
    for entry in catalogue:
        assert s.model_registry.isApproved(entry.model_id)
        model = s.model_registry.getModel(entry.model_id)
        assert (model.repo, model.file, model.size) == (entry.repo, entry.file, entry.size)
        assert model.sha256Hash.hex().removeprefix("0x") == entry.sha256
    assert len(report.done) == 5 + 4 + 2 * len(catalogue)

    nonce = deployer.nonce
    again = seed_local(project, dep, recipients, funder=deployer, curator=deployer)
    assert again.done == [] and deployer.nonce == nonce


def test_seed_without_curator_role_says_so(
    project: Any, accounts: Any, deployer: Any, deployed: Any
) -> None:
    with pytest.raises(PermissionError, match="lacks CURATOR_ROLE"):
        seed_local(project, deployed.deployment, [], funder=deployer, curator=accounts[4])


@pytest.mark.parametrize(
    ("chain_id", "is_local", "message"),
    [
        (84532, True, "this is chain 84532 \\(Base Sepolia \\(or its local rehearsal\\)\\)"),
        (84532, False, "chain 84532"),
        (8453, False, "Base mainnet"),
        (1, False, "Ethereum mainnet"),
        (31337, False, "reached through a live network"),
    ],
)
def test_seed_refuses_non_local_chains(chain_id: int, is_local: bool, message: str) -> None:
    with pytest.raises(NotLocalChain, match=message):
        ensure_local(chain_id, is_local)


def test_seed_accepts_local_chains() -> None:
    ensure_local(31337, True)
    ensure_local(1337, True)
