"""Move roles to what a params file names (e.g. admin to a multisig): `ape run roles`.

    ape run roles check  --network base:sepolia:node                      # read-only
    ape run roles grant  --network base:sepolia:node --account deployer   # step 1
    ape run roles finish --network base:sepolia:node --account deployer   # step 2

`finish` refuses unless every configured holder already holds its role; it then
revokes/renounces everything not configured and runs the full wiring check.
docs/runbooks/deploy.md ("Rotating admin roles to a multisig") walks through it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from ape import project
from ape.cli import ConnectedProviderCommand, network_option

from fabstir.chain.deploy import (
    DeployError,
    enable_autosign,
    expected_wiring,
    live_gas_price,
    network_name,
    resolve_account,
)
from fabstir.chain.deployments import DeploymentError, load_deployment, write_deployment
from fabstir.chain.params import ParamsError, default_params_name, load_params_file
from fabstir.chain.roles import RoleRotationError, apply_grants, finish_rotation, role_changes
from fabstir.chain.system import TxSender, attach_system
from fabstir.chain.verify import WiringError


@click.command(cls=ConnectedProviderCommand, short_help="Rotate roles to the params file's holders")
@click.argument("step", type=click.Choice(["check", "grant", "finish"]))
@network_option()
@click.option("--account", "account_alias", help="ape account alias, or TEST::<n>")
@click.option("--params", "params_name", help="params file stem or path (default: by chain id)")
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="FABSTIR_DEPLOYMENTS_DIR",
    help="where <chainId>.json is read and updated (default: deployments/)",
)
@click.option("--yes", "-y", is_flag=True, help="do not ask before sending on a live network")
def cli(
    provider: Any,
    step: str,
    account_alias: str | None,
    params_name: str | None,
    out_dir: Path | None,
    yes: bool,
) -> None:
    chain_id = int(provider.chain_id)
    live = not provider.network.is_local
    try:
        pf = load_params_file(params_name or default_params_name(chain_id))
        deployment = load_deployment(chain_id, out_dir)
    except (ParamsError, DeploymentError) as err:
        raise click.UsageError(str(err)) from err
    system = attach_system(project, deployment.addresses)
    expected = expected_wiring(pf, chain_id, system, deployment.deployer)
    sender_address = deployment.deployer if step == "check" else None
    try:
        account = None if step == "check" else resolve_account(account_alias, live)
    except DeployError as err:
        raise click.UsageError(str(err)) from err
    me = account.address if account is not None else sender_address
    grants, removals = role_changes(system, expected, str(me), deployment.first_block)
    click.echo(f"{network_name(provider)} (chain {chain_id}), params {pf.name}")
    for change in grants:
        click.echo(f"  to grant:  {change.describe()}")
    for change in removals:
        click.echo(f"  to remove: {change.describe()}")
    if step == "check":
        click.echo("nothing to change" if not grants and not removals else "(check only)")
        return
    todo = grants if step == "grant" else removals
    if not todo:
        click.echo(f"{step}: nothing to send")
    tx_kwargs: dict[str, Any] = {}
    if live and todo:
        _, priority, max_fee = live_gas_price(provider, pf)
        tx_kwargs = {
            "max_fee": max_fee,
            "max_priority_fee": priority,
            "required_confirmations": pf.gas.confirmations,
        }
        if not yes and not click.confirm(f"send {len(todo)} transactions as {me}?", default=False):
            click.secho("aborted; nothing was sent", fg="red", err=True)
            sys.exit(1)
        enable_autosign(account)
    tx = TxSender(account, tx_kwargs, click.echo)
    try:
        if step == "grant":
            apply_grants(system, tx, grants)
            click.secho(
                f"granted {len(grants)} roles; check them, then run `ape run roles finish`",
                fg="green",
            )
            return
        _, report = finish_rotation(system, tx, expected, deployment.first_block)
    except (RoleRotationError, WiringError) as err:
        click.secho(f"roles {step} FAILED: {err}", fg="red", err=True)
        sys.exit(1)
    deployment.roles = dict(expected.roles)
    deployment.transactions.extend(tx.transactions)
    path = write_deployment(deployment, out_dir)
    click.secho(f"roles OK: wiring verified ({report.checks} checks); {path} updated", fg="green")
