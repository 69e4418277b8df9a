"""`fabstir deploy` (fabstir.chain.deploy under ape) and `fabstir deployments show`."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
from eth_account.signers.local import LocalAccount

from fabstir.chain.deployments import Deployment, deployment_path, read_deployment
from fabstir.cli.context import (
    BASE_SEPOLIA_CHAIN_ID,
    CliError,
    Network,
    common_options,
    read_options,
    state,
)
from fabstir.cli.output import key_values, table


@contextmanager
def ape_network(network: Network) -> Iterator[Any]:
    """ape connected to `network` (the provider), without starting a chain of its own:
    local chain ids go through ape-foundry attached to the running anvil, Base Sepolia
    (84532, also a rehearsal anvil) through `base:sepolia:node`, any other chain
    through ape's ad-hoc network for the URL."""
    # Local: ape-foundry reads APE_FOUNDRY_HOST when it connects. Others: the node
    # provider gets the URI directly (ape-config.yaml's ${BASE_SEPOLIA_RPC_URL} is only
    # read when the command runs inside the checkout).
    env = "APE_FOUNDRY_HOST" if network.is_local else ""
    settings: dict[str, Any] = {}
    if network.is_local:
        choice = "ethereum:local:foundry"
    elif network.chain_id == BASE_SEPOLIA_CHAIN_ID:
        choice, settings = "base:sepolia:node", {"uri": network.rpc_url}
    else:
        choice = network.rpc_url
    saved = os.environ.get(env) if env else None
    if env:
        os.environ[env] = network.rpc_url
    try:
        from ape import networks

        with networks.parse_network_choice(choice, provider_settings=settings) as provider:
            if int(provider.chain_id) != network.chain_id:
                raise CliError(
                    f"ape connected to chain {provider.chain_id}, expected {network.chain_id}"
                )
            yield provider
    finally:
        if env:
            if saved is None:
                os.environ.pop(env, None)
            else:
                os.environ[env] = saved


@contextmanager
def ape_quiet(debug: bool) -> Iterator[None]:
    """Keep stdout for the result: ape's chatter goes to stderr, and only its
    warnings and errors unless --debug."""
    from ape.logging import logger

    level = logger.level
    if not debug:
        logger.set_level("WARNING")
    try:
        with redirect_stdout(sys.stderr):
            yield
    finally:
        logger.set_level(level)


def ape_project() -> Any:
    """The contracts project (this checkout), wherever the command runs from."""
    import ape

    from fabstir.models import REPO_ROOT

    return ape.Project(REPO_ROOT)


def ape_signer(account: LocalAccount) -> Any:
    """An ape account that signs with `account`'s key (no extra prompts: the CLI
    asks for confirmation itself)."""
    from ape_test.accounts import TestAccount

    return TestAccount(
        index=0, address_str=str(account.address), private_key="0x" + account.key.hex()
    )


def _deployment_data(dep: Deployment, path: Path) -> dict[str, Any]:
    return {
        "chain_id": dep.chain_id,
        "network": dep.network,
        "path": str(path),
        "complete": dep.complete,
        "deployer": dep.deployer,
        "params_name": dep.params_name,
        "verified_block": dep.verified_block,
        "first_block": dep.first_block,
        "updated_at": dep.updated_at,
        "git_commit": dep.git.get("commit"),
        "contracts": dep.addresses,
        "tokens": [asdict(t) for t in dep.tokens],
        "roles": dep.roles,
    }


@click.command()
@click.option(
    "--params",
    "params_name",
    metavar="NAME|PATH",
    help="Params file: a name under deployments/params/ or a path (default: by chain id).",
)
@click.option("--fresh", is_flag=True, help="Deploy a new set even if one is recorded.")
@click.option(
    "--seed",
    is_flag=True,
    help="Local chains: then mint the mock payment tokens and FAB to test:0-9 and approve"
    " the catalogue models.",
)
@common_options
def deploy(params_name: str | None, fresh: bool, seed: bool) -> None:
    """Deploy, wire and verify the contracts; record deployments/<chainId>.json.

    Re-running is safe: a verified deployment is reused (nothing sent), an
    interrupted one is resumed. On a live network the cost is shown and
    confirmed first (--yes skips the question). The account defaults to
    test:0 on local chains. Files go to $FABSTIR_DEPLOYMENTS_DIR or deployments/.

    \b
    Examples:
      fabstir deploy --seed                                  # local chain, test:0
      fabstir deploy --network base-sepolia --account deployer
      fabstir deploy --network base-sepolia --account deployer --fresh --yes
    """
    from fabstir.chain.deploy import CostEstimate
    from fabstir.chain.deploy import deploy as run_deploy
    from fabstir.chain.params import default_params_name, load_params_file

    st = state()
    network = st.network()
    if seed and not network.is_local:
        raise CliError(f"--seed is for local chains only; {network.label} is not local")
    account = st.account(default_test=0)
    pf = load_params_file(params_name or default_params_name(network.chain_id))
    st.out.log(f"deploy on {network.label}, params {pf.name}, deployer {account.address}")

    def confirm(cost: CostEstimate) -> bool:
        return click.confirm("send these transactions?", default=False, err=True)

    project = ape_project()
    with ape_quiet(st.debug), ape_network(network):
        signer = ape_signer(account)
        result = run_deploy(
            project,
            signer,
            pf,
            fresh=fresh,
            live=not network.is_local,
            confirm=None if st.yes else confirm,
            log=st.out.log,
        )
        seeded: list[str] = []
        if seed:
            seeded = _seed(project, result.deployment, signer)
    data = {
        **network.to_dict(),
        "reused": result.reused,
        "transactions": len(result.transactions),
        "checks": result.report.checks,
        "verified_block": result.report.block,
        "path": str(result.path),
        "contracts": result.deployment.addresses,
        "seeded": seeded,
    }
    sent = "reused (nothing sent)" if result.reused else f"{len(result.transactions)} transactions"
    lines = [
        f"deploy OK: {sent}; wiring verified ({result.report.checks} checks at block "
        f"{result.report.block}); {result.path}",
        table(["contract", "address"], sorted(result.deployment.addresses.items())),
    ]
    if seed:
        lines.append(f"seed: {len(seeded)} changes")
    st.out.result(data, "\n".join(lines))


def _seed(project: Any, deployment: Deployment, signer: Any) -> list[str]:
    from ape import accounts

    from fabstir.chain.seed import seed_local

    recipients = [accounts.test_accounts[i] for i in range(10)]
    report = seed_local(project, deployment, recipients, funder=signer, curator=signer)
    return report.done


@click.group()
def deployments() -> None:
    """Recorded deployments (deployments/<chainId>.json).

    \b
    Examples:
      fabstir deployments show
      fabstir deployments show --chain-id 84532 --json
    """


@deployments.command()
@click.option(
    "--chain-id",
    type=click.IntRange(min=1),
    help="Chain to show without connecting (default: the --network's chain).",
)
@read_options
def show(chain_id: int | None) -> None:
    """Addresses, state and provenance of the deployment on a chain."""
    st = state()
    cid = chain_id if chain_id is not None else st.network().chain_id
    dep = read_deployment(cid)
    path = deployment_path(cid)
    if dep is None:
        raise CliError(f"no deployment recorded for chain {cid} ({path}); run `fabstir deploy`")
    data = _deployment_data(dep, path)
    head = key_values(
        [
            ("chain", dep.chain_id),
            ("network", dep.network),
            ("file", path),
            ("complete", dep.complete),
            ("deployer", dep.deployer),
            ("params", dep.params_name),
            ("verified at block", dep.verified_block),
            ("git commit", dep.git.get("commit")),
            ("updated", dep.updated_at),
        ]
    )
    contracts = table(
        ["contract", "address", "block"],
        [(n, r.address, r.block) for n, r in dep.contracts.items()],
    )
    tokens = table(
        ["payment token", "decimals", "address", "mock", "min deposit"],
        [(t.symbol, t.decimals, t.address, t.mock, t.min_deposit) for t in dep.tokens],
    )
    st.out.result(data, f"{head}\n\n{contracts}\n\n{tokens}")
