"""Publish the deployed contracts' sources to the explorer: `ape run publish_sources`.

    ape run publish_sources --network base:sepolia:node --dry-run out/   # payloads only
    FABSTIR_EXPLORER_API_KEY_FILE=~/.basescan-key \\
        ape run publish_sources --network base:sepolia:node               # submit, wait

One Etherscan-compatible `verifysourcecode` call per contract deployed by us (the
standard-JSON input ape compiled, the constructor arguments read back from the
deploying transaction the deployment record names), then `checkverifystatus` polls
until the explorer says "Pass - Verified" (or that it had the source already).
The API key comes from a file or the environment ($FABSTIR_EXPLORER_API_KEY_FILE,
$FABSTIR_ETHERSCAN_API_KEY, $FABSTIR_EXPLORER_API_KEY). Re-running is safe: verified
contracts answer "already verified". docs/runbooks/deploy.md ("What to check after")
has the procedure.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from ape import project
from ape.cli import ConnectedProviderCommand, network_option

from fabstir.chain.deployments import DeploymentError, load_deployment
from fabstir.chain.sourceverify import (
    BASE_SEPOLIA_API,
    ExplorerClient,
    SourceVerifyError,
    api_key_from_environment,
    build_payloads,
)


@click.command(cls=ConnectedProviderCommand, short_help="Publish sources to the explorer")
@network_option()
@click.option(
    "--dry-run",
    "dry_run",
    type=click.Path(file_okay=False, path_type=Path),
    help="write each payload (without the key) to this directory; submit nothing",
)
@click.option("--api-url", default=BASE_SEPOLIA_API, show_default=True)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.0),
    default=5.0,
    show_default=True,
    help="seconds between checkverifystatus polls",
)
@click.option(
    "--deployments-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="FABSTIR_DEPLOYMENTS_DIR",
)
def cli(
    provider: Any,
    dry_run: Path | None,
    api_url: str,
    poll_interval: float,
    deployments_dir: Path | None,
) -> None:
    try:
        dep = load_deployment(int(provider.chain_id), deployments_dir)
        key = "DRY-RUN" if dry_run else api_key_from_environment()
        payloads = build_payloads(project, dep, provider.web3, key)
        if dry_run:
            dry_run.mkdir(parents=True, exist_ok=True)
            for name, payload in payloads:
                body = {k: v for k, v in payload.items() if k != "apikey"}
                (dry_run / f"{name}.json").write_text(json.dumps(body, indent=1))
                click.echo(f"{name}: payload written ({payload['contractname']})")
            return
        with ExplorerClient(api_url, key, poll_interval=poll_interval) as explorer:
            for name, payload in payloads:
                done = explorer.verify(payload)
                guid = f" (guid {done.guid})" if done.guid else ""
                click.echo(f"{name} {done.address}: {done.status}{guid}")
    except (DeploymentError, SourceVerifyError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
