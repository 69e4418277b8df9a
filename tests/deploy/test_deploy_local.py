"""`deploy` on a fresh local anvil: every address, role and parameter; idempotence;
the wiring check catching broken roles; resuming; the cost estimate."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from fabstir.chain import system as system_mod
from fabstir.chain.deploy import (
    DeployError,
    deploy,
    estimate_cost,
    resolve_account,
    verify_recorded,
)
from fabstir.chain.deployments import TokenRecord, load_deployment
from fabstir.chain.params import DeployParams, ParamsFile, TokenSpec
from fabstir.chain.system import (
    DEFAULT_ADMIN_ROLE,
    ETH,
    Roles,
    attach_system,
    deploy_system,
    deployment_names,
    role_id,
    token_records,
)
from fabstir.chain.verify import ExpectedWiring, WiringError, verify_system

ALL_ROLES = (
    "DEFAULT_ADMIN_ROLE",
    "CURATOR_ROLE",
    "SLASHER_ROLE",
    "MARKETPLACE_ROLE",
    "TREASURER_ROLE",
    "PAUSER_ROLE",
    "TOKEN_ADMIN_ROLE",
)


def test_fresh_deploy_every_address_role_and_parameter(
    project: Any,
    deployer: Any,
    accounts: Any,
    deployed: Any,
    out_dir: Path,
    local_params: ParamsFile,
) -> None:
    p = local_params.params
    assert set(deployed.status.values()) == {"deployed"}
    assert deployed.path == out_dir / "31337.json"
    dep = load_deployment(31337, out_dir)
    assert list(dep.contracts) == list(deployment_names(p))
    assert dep.complete and dep.verified_block == deployed.report.block
    s = attach_system(project, dep.addresses)
    a = dep.addresses
    me = deployer.address

    # Addresses the contracts hold.
    assert s.marketplace.nodeRegistry() == a["NodeRegistry"]
    assert s.marketplace.modelRegistry() == a["ModelRegistry"]
    assert s.marketplace.proofSystem() == a["ProofSystem"]
    assert s.marketplace.hostEarnings() == a["HostEarnings"]
    assert s.marketplace.treasury() == a["Treasury"]
    assert s.host_earnings.marketplace() == a["JobMarketplace"]
    assert s.treasury.marketplace() == a["JobMarketplace"]
    assert s.node_registry.fabToken() == a["FABToken"]
    assert s.node_registry.modelRegistry() == a["ModelRegistry"]
    # Parameters.
    assert s.marketplace.feeBps() == p.fee_bps == 1000
    assert s.treasury.feeBps() == p.fee_bps
    assert s.marketplace.settlementWindow() == p.settlement_window
    assert s.node_registry.minStake() == p.min_stake
    assert s.node_registry.unbondingPeriod() == p.unbonding_period
    assert s.node_registry.maxSlashBps() == p.max_slash_bps == 5000
    assert s.marketplace.maxDuration() == p.max_session_duration == p.unbonding_period - 3600
    assert s.fab.totalSupply() == p.fab_supply == s.fab.balanceOf(me)
    assert s.usdc.decimals() == 6
    assert not s.marketplace.paused()
    # Tokens: exactly the table's (ETH and a mock USDC), with their minimum deposits.
    assert list(s.marketplace.tokens()) == [ETH, a["USDC"]]
    eth, usdc = s.marketplace.tokenConfig(ETH), s.marketplace.tokenConfig(a["USDC"])
    assert (eth.accepted, eth.index, eth.minDeposit) == (True, 0, 5 * 10**14)
    assert (usdc.accepted, usdc.index, usdc.minDeposit) == (True, 1, 10**6)
    assert (s.usdc.symbol(), s.usdc.name()) == ("USDC", "Mock USDC")

    # Roles: granted where needed ...
    held = {
        ("ModelRegistry", "DEFAULT_ADMIN_ROLE"): me,
        ("ModelRegistry", "CURATOR_ROLE"): me,
        ("NodeRegistry", "DEFAULT_ADMIN_ROLE"): me,
        ("NodeRegistry", "MARKETPLACE_ROLE"): a["JobMarketplace"],
        ("NodeRegistry", "SLASHER_ROLE"): me,
        ("Treasury", "DEFAULT_ADMIN_ROLE"): me,
        ("Treasury", "TREASURER_ROLE"): me,
        ("JobMarketplace", "DEFAULT_ADMIN_ROLE"): me,
        ("JobMarketplace", "PAUSER_ROLE"): me,
        ("JobMarketplace", "TOKEN_ADMIN_ROLE"): me,
    }
    contracts = s.as_dict()
    for (cname, role), who in held.items():
        assert contracts[cname].hasRole(role_id(role), who), (cname, role)
    # ... and nowhere else, for every party in the deployment and a bystander.
    parties = [me, accounts[1].address, *a.values()]
    for cname in ("ModelRegistry", "NodeRegistry", "Treasury", "JobMarketplace"):
        for role in ALL_ROLES:
            for who in parties:
                expected = held.get((cname, role)) == who
                assert contracts[cname].hasRole(role_id(role), who) == expected, (cname, role, who)
    assert deployed.report.role_holders["NodeRegistry"] == {
        "DEFAULT_ADMIN_ROLE": [me],
        "MARKETPLACE_ROLE": [a["JobMarketplace"]],
        "SLASHER_ROLE": [me],
    }

    # The record: blocks and tx hashes match the chain; compiler, git and params kept.
    for name, rec in dep.contracts.items():
        receipt = deployer.provider.get_receipt(rec.tx_hash)
        assert receipt.contract_address == rec.address and receipt.block_number == rec.block, name
    assert len(dep.transactions) == len(deployed.transactions) == 13
    assert dep.compiler == {
        "solc_version": "0.8.28",
        "evm_version": "cancun",
        "optimizer": True,
        "optimizer_runs": 10000,
        "via_ir": False,
    }
    assert len(dep.git["commit"]) == 40
    assert dep.params == p.to_dict()
    assert dep.roles["admin"] == me and dep.network == "ethereum:local:foundry"
    assert dep.address("usdc") == a["USDC"]
    # The record says which token is a mock, and what each one is.
    assert dep.contracts["USDC"].contract_type == "MockERC20"
    assert not dep.contracts["USDC"].external
    assert dep.tokens == [
        TokenRecord("ETH", 18, ETH, mock=False, min_deposit=5 * 10**14),
        TokenRecord("USDC", 6, a["USDC"], mock=True, min_deposit=10**6),
    ]
    assert json.loads((out_dir / "31337.json").read_text())["tokens"][1] == {
        "symbol": "USDC",
        "decimals": 6,
        "address": a["USDC"],
        "mock": True,
        "min_deposit": 10**6,
    }
    assert (out_dir / "31337.json").stat().st_mode & 0o777 == 0o644


def test_rerun_reuses_everything_and_sends_nothing(
    project: Any, deployer: Any, deployed: Any, out_dir: Path, local_params: ParamsFile
) -> None:
    before = (out_dir / "31337.json").read_text()
    nonce = deployer.nonce
    again = deploy(project, deployer, local_params, out_dir=out_dir)
    assert again.reused
    assert set(again.status.values()) == {"reused"}
    assert again.deployment.addresses == deployed.deployment.addresses
    assert deployer.nonce == nonce
    assert (out_dir / "31337.json").read_text() == before


def test_fresh_deploys_a_new_set_and_archives_the_old_file(
    project: Any, deployer: Any, deployed: Any, out_dir: Path, local_params: ParamsFile
) -> None:
    new = deploy(project, deployer, local_params, out_dir=out_dir, fresh=True)
    old, cur = deployed.deployment.addresses, new.deployment.addresses
    assert all(old[n] != cur[n] for n in deployment_names(local_params.params))
    archived = out_dir / "archive" / f"31337-{deployed.deployment.first_block}.json"
    assert (
        json.loads(archived.read_text())["contracts"]["JobMarketplace"]["address"]
        == old["JobMarketplace"]
    )
    assert load_deployment(31337, out_dir).address("JobMarketplace") == cur["JobMarketplace"]


def test_wiring_check_names_a_missing_role(
    project: Any, deployer: Any, deployed: Any, out_dir: Path, local_params: ParamsFile
) -> None:
    s = attach_system(project, deployed.deployment.addresses)
    s.node_registry.revokeRole(role_id("SLASHER_ROLE"), deployer, sender=deployer)
    with pytest.raises(WiringError) as err:
        verify_recorded(project, deployed.deployment, local_params)
    assert err.value.problems == [
        f"NodeRegistry: SLASHER_ROLE is not granted to {deployer.address}"
    ]
    # A re-run refuses (sends nothing) and says why.
    nonce = deployer.nonce
    with pytest.raises(DeployError, match="SLASHER_ROLE is not granted"):
        deploy(project, deployer, local_params, out_dir=out_dir)
    assert deployer.nonce == nonce


def test_wiring_check_names_an_unconfigured_holder(
    project: Any, deployer: Any, accounts: Any, deployed: Any, local_params: ParamsFile
) -> None:
    s = attach_system(project, deployed.deployment.addresses)
    intruder = accounts[7].address
    s.node_registry.grantRole(role_id("MARKETPLACE_ROLE"), intruder, sender=deployer)
    s.marketplace.grantRole(DEFAULT_ADMIN_ROLE, intruder, sender=deployer)
    with pytest.raises(WiringError) as err:
        verify_recorded(project, deployed.deployment, local_params)
    assert sorted(err.value.problems) == [
        f"JobMarketplace: DEFAULT_ADMIN_ROLE is also granted to {intruder}, which is not configured",
        f"NodeRegistry: MARKETPLACE_ROLE is also granted to {intruder}, which is not configured",
    ]


def test_wiring_check_names_a_parameter_and_a_token_config(
    project: Any, deployer: Any, deployed: Any, local_params: ParamsFile
) -> None:
    s = attach_system(project, deployed.deployment.addresses)
    s.marketplace.configureToken(s.usdc, True, 5, sender=deployer)
    other = dataclasses.replace(
        local_params, params=dataclasses.replace(local_params.params, fee_bps=500)
    )
    with pytest.raises(WiringError) as err:
        verify_recorded(project, deployed.deployment, other)
    assert "JobMarketplace.feeBps() is 1000, expected 500" in err.value.problems
    assert "Treasury.feeBps() is 1000, expected 500" in err.value.problems
    assert (
        "JobMarketplace.tokenConfig(USDC).minDeposit is 5, expected 1000000" in err.value.problems
    )


def test_changed_params_are_refused_without_fresh(
    project: Any, deployer: Any, deployed: Any, out_dir: Path, local_params: ParamsFile
) -> None:
    other = dataclasses.replace(
        local_params, params=dataclasses.replace(local_params.params, min_stake=1)
    )
    with pytest.raises(
        DeployError, match=r"NodeRegistry: minStake is 1000000000000000000000, needs 1"
    ):
        deploy(project, deployer, other, out_dir=out_dir)
    assert (
        deploy(project, deployer, other, out_dir=out_dir, fresh=True).status["NodeRegistry"]
        == "deployed"
    )


def test_interrupted_deploy_resumes_keeping_what_landed(
    project: Any,
    deployer: Any,
    out_dir: Path,
    local_params: ParamsFile,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = system_mod.TxSender.deploy

    def crash_at_proofs(self: Any, name: str, container: Any, *args: Any) -> Any:
        if name == "ProofSystem":
            raise RuntimeError("connection lost")
        return real(self, name, container, *args)

    monkeypatch.setattr(system_mod.TxSender, "deploy", crash_at_proofs)
    with pytest.raises(RuntimeError, match="connection lost"):
        deploy(project, deployer, local_params, out_dir=out_dir)
    partial = json.loads((out_dir / "31337.json").read_text())
    assert partial["complete"] is False
    assert list(partial["contracts"]) == ["FABToken", "USDC", "ModelRegistry", "NodeRegistry"]
    with pytest.raises(Exception, match="unfinished"):
        load_deployment(31337, out_dir)

    monkeypatch.setattr(system_mod.TxSender, "deploy", real)
    resumed = deploy(project, deployer, local_params, out_dir=out_dir)
    names = deployment_names(local_params.params)
    assert [resumed.status[n] for n in names] == ["reused"] * 4 + ["deployed"] * 4
    dep = load_deployment(31337, out_dir)
    assert dep.address("NodeRegistry") == partial["contracts"]["NodeRegistry"]["address"]
    assert len(dep.transactions) == 4 + 4 + 5


def test_cost_estimate_bounds_every_transaction(
    project: Any, deployer: Any, out_dir: Path, local_params: ParamsFile
) -> None:
    estimate = estimate_cost(project, deployer, local_params, {}, (10, 1, 21))
    result = deploy(project, deployer, local_params, out_dir=out_dir)
    assert len(estimate.txs) == len(result.transactions) == 13
    for planned, sent in zip(estimate.txs, result.transactions, strict=True):
        assert sent.step.startswith(planned.step.split("(")[0]), (planned.step, sent.step)
        assert sent.gas_used <= planned.gas, (planned.step, sent.gas_used, planned.gas)
        if planned.estimated:  # eth_estimateGas is close, not just an upper bound
            assert planned.gas - sent.gas_used < 50_000
    assert estimate.max_wei == estimate.total_gas * 21
    assert any("total: 13 transactions" in line for line in estimate.lines())


def test_params_for_another_chain_are_refused(project: Any, deployer: Any, out_dir: Path) -> None:
    from fabstir.chain.params import load_params_file

    with pytest.raises(DeployError, match="are for chain 84532, connected to chain 31337"):
        deploy(project, deployer, load_params_file("base-sepolia"), out_dir=out_dir)
    assert not out_dir.exists()


def test_new_deployment_with_foreign_admin_is_refused(
    project: Any, deployer: Any, accounts: Any, out_dir: Path, local_params: ParamsFile
) -> None:
    roles = dataclasses.replace(local_params.roles, admin=accounts[5].address)
    with pytest.raises(DeployError, match="starts with the deployer as admin"):
        deploy(project, deployer, dataclasses.replace(local_params, roles=roles), out_dir=out_dir)


def test_separate_pauser_and_token_admin_are_handed_over(
    project: Any, deployer: Any, accounts: Any, out_dir: Path, local_params: ParamsFile
) -> None:
    pauser, token_admin, curator = accounts[5].address, accounts[6].address, accounts[1].address
    roles = dataclasses.replace(
        local_params.roles, pauser=pauser, token_admin=token_admin, curator=curator
    )
    result = deploy(
        project, deployer, dataclasses.replace(local_params, roles=roles), out_dir=out_dir
    )
    holders = result.report.role_holders["JobMarketplace"]
    assert holders["PAUSER_ROLE"] == [pauser] and holders["TOKEN_ADMIN_ROLE"] == [token_admin]
    assert result.report.role_holders["ModelRegistry"]["CURATOR_ROLE"] == [curator]


def test_deploy_system_keeps_its_signature_for_tests_and_benchmarks(
    project: Any, deployer: Any, accounts: Any
) -> None:
    treasurer = accounts[3]
    s = deploy_system(project, deployer, DeployParams(), Roles(deployer, deployer, treasurer))
    expected = ExpectedWiring(
        params=DeployParams(),
        chain_id=31337,
        fab=s.fab.address,
        tokens=token_records(DeployParams(), s),
        roles={
            "admin": deployer.address,
            "curator": deployer.address,
            "slasher": deployer.address,
            "treasurer": treasurer.address,
            "pauser": deployer.address,
            "token_admin": deployer.address,
        },
    )
    report = verify_system(
        s.as_dict(), expected, from_block=min(r.block or 0 for r in s.records.values())
    )
    assert report.checks > 60


def test_live_networks_need_a_named_account(accounts: Any) -> None:
    with pytest.raises(DeployError, match="--account ALIAS is required on a live network"):
        resolve_account(None, live=True)
    assert resolve_account(None, live=False) == accounts[0]
    assert resolve_account("TEST::3", live=True) == accounts[3]


def _with_tokens(pf: ParamsFile, *extra: TokenSpec, **changes: Any) -> ParamsFile:
    """`pf` with its token rows changed (by symbol) and `extra` rows appended."""
    rows = tuple(
        dataclasses.replace(t, **changes.get(t.symbol, {})) for t in pf.params.tokens
    ) + tuple(extra)
    return dataclasses.replace(pf, params=dataclasses.replace(pf.params, tokens=rows))


def test_a_token_named_by_address_is_configured_verified_and_recorded(
    project: Any, deployer: Any, out_dir: Path, local_params: ParamsFile
) -> None:
    existing = project.MockERC20.deploy("Some Coin", "XYZ", 18, sender=deployer)
    pf = _with_tokens(local_params, TokenSpec("XYZ", 18, 10**17, existing.address))
    result = deploy(project, deployer, pf, out_dir=out_dir)
    assert result.status["XYZ"] == "external" and result.deployment.contracts["XYZ"].external
    s = attach_system(project, result.deployment.addresses)
    assert list(s.marketplace.tokens()) == [ETH, s.usdc.address, existing.address]
    assert s.marketplace.tokenConfig(existing).minDeposit == 10**17
    assert result.deployment.tokens[2] == TokenRecord("XYZ", 18, existing.address, False, 10**17)
    assert any(t.step == "JobMarketplace.configureToken(XYZ, true, 100000000000000000)"
               for t in result.transactions)  # fmt: skip


def test_configured_tokens_are_checked_before_anything_is_sent(
    project: Any, deployer: Any, out_dir: Path, local_params: ParamsFile
) -> None:
    six = project.MockERC20.deploy("Six", "SIX", 6, sender=deployer)
    nonce = deployer.nonce
    wrong = _with_tokens(local_params, TokenSpec("SIX", 18, 1, six.address))
    with pytest.raises(DeployError, match=f"configured SIX {six.address} has 6 decimals, not 18"):
        deploy(project, deployer, wrong, out_dir=out_dir)
    nowhere = _with_tokens(local_params, TokenSpec("NOPE", 6, 1, "0x" + "12" * 20))
    with pytest.raises(DeployError, match=r"configured NOPE 0x1212.* has no code on chain 31337"):
        deploy(project, deployer, nowhere, out_dir=out_dir)
    with pytest.raises(DeployError, match=r"must name the address of USDC .a 'mock' token is for"):
        deploy(project, deployer, local_params, out_dir=out_dir, live=True)
    assert deployer.nonce == nonce and not (out_dir / "31337.json").exists()


def test_a_changed_token_row_is_caught_by_verify_and_refused_without_fresh(
    project: Any, deployer: Any, deployed: Any, out_dir: Path, local_params: ParamsFile
) -> None:
    other = _with_tokens(local_params, USDC={"decimals": 18, "min_deposit": 7})
    with pytest.raises(WiringError) as err:
        verify_recorded(project, deployed.deployment, other)
    assert "USDC.decimals() is 6, expected 18" in err.value.problems
    assert (
        "JobMarketplace.tokenConfig(USDC).minDeposit is 1000000, expected 7" in err.value.problems
    )
    with pytest.raises(DeployError, match=r"USDC: the mock at .* is USDC with 6 decimals"):
        deploy(project, deployer, other, out_dir=out_dir)
    fresh = deploy(project, deployer, other, out_dir=out_dir, fresh=True)
    assert attach_system(project, fresh.deployment.addresses).usdc.decimals() == 18
