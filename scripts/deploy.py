"""Deploy, wire and verify the Fabstir contracts: `ape run deploy --network ...`.

    ape run deploy                                    # local anvil, test account 0
    ape run deploy --network base:sepolia:node --account deployer

A thin wrapper over fabstir.chain.deploy.deploy; docs/runbooks/deploy.md has the rest.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from ape import project
from ape.cli import ConnectedProviderCommand, network_option

from fabstir.chain.deploy import (
    CostEstimate,
    DeployError,
    deploy,
    enable_autosign,
    network_name,
    resolve_account,
)
from fabstir.chain.params import ParamsError, default_params_name, load_params_file


@click.command(cls=ConnectedProviderCommand, short_help="Deploy, wire and verify the contracts")
@network_option()
@click.option("--account", "account_alias", help="ape account alias, or TEST::<n>")
@click.option(
    "--params",
    "params_name",
    help="params file stem under deployments/params/ or a path (default: by chain id)",
)
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="FABSTIR_DEPLOYMENTS_DIR",
    help="where <chainId>.json is read and written (default: deployments/)",
)
@click.option("--fresh", is_flag=True, help="deploy a new set even if one is recorded")
@click.option("--yes", "-y", is_flag=True, help="do not ask before spending on a live network")
def cli(
    provider: Any,
    account_alias: str | None,
    params_name: str | None,
    out_dir: Path | None,
    fresh: bool,
    yes: bool,
) -> None:
    live = not provider.network.is_local
    try:
        pf = load_params_file(params_name or default_params_name(int(provider.chain_id)))
    except ParamsError as err:
        raise click.UsageError(str(err)) from err
    try:
        account = resolve_account(account_alias, live)
    except DeployError as err:
        raise click.UsageError(str(err)) from err
    click.echo(
        f"network {network_name(provider)} (chain {provider.chain_id}), params {pf.name},"
        f" deployer {account.address}"
    )

    def confirm(cost: CostEstimate) -> bool:
        if not click.confirm("send these transactions?", default=False):
            return False
        enable_autosign(account)
        return True

    if live and yes:
        enable_autosign(account)
    try:
        result = deploy(
            project,
            account,
            pf,
            out_dir=out_dir,
            fresh=fresh,
            live=live,
            confirm=None if yes else confirm,
            log=click.echo,
        )
    except DeployError as err:
        click.secho(f"deploy FAILED: {err}", fg="red", err=True)
        sys.exit(1)
    state = "reused (nothing sent)" if result.reused else f"{len(result.transactions)} transactions"
    click.secho(
        f"deploy OK: {state}; wiring verified ({result.report.checks} checks at block"
        f" {result.report.block}); {result.path}",
        fg="green",
    )
