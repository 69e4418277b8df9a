"""Seed a local chain: `ape run seed_local` (after `ape run deploy`).

Tops up the mock payment tokens and FAB for the standard test accounts and adds + approves every
model of models/catalogue.json. Idempotent. Refuses any chain that is not local
(chain id 31337/1337 on a local ape network); see fabstir.chain.seed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from ape import accounts, project
from ape.cli import ConnectedProviderCommand, network_option

from fabstir.chain.deployments import DeploymentError, load_deployment
from fabstir.chain.seed import NotLocalChain, ensure_local, seed_local


@click.command(cls=ConnectedProviderCommand, short_help="Fund test accounts, register models")
@network_option()
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="FABSTIR_DEPLOYMENTS_DIR",
    help="where <chainId>.json is read (default: deployments/)",
)
def cli(provider: Any, out_dir: Path | None) -> None:
    chain_id = int(provider.chain_id)
    try:
        ensure_local(chain_id, bool(provider.network.is_local))
        deployment = load_deployment(chain_id, out_dir)
        deployer = accounts.test_accounts[0]
        report = seed_local(
            project, deployment, list(accounts.test_accounts), funder=deployer, curator=deployer
        )
    except (NotLocalChain, DeploymentError, PermissionError) as err:
        click.secho(f"seed_local refused: {err}", fg="red", err=True)
        sys.exit(1)
    for line in report.done:
        click.echo(f"  {line}")
    click.secho(
        f"seed OK: {len(report.done)} changes, {len(report.skipped)} already in place", fg="green"
    )
