"""Publish the deployed contracts' sources to the explorer: `ape run publish_sources`.

    ape run publish_sources --network base:sepolia:node --dry-run out/   # payloads only
    FABSTIR_EXPLORER_API_KEY_FILE=~/.basescan-key \\
        ape run publish_sources --network base:sepolia:node               # submit

One Etherscan-compatible `verifysourcecode` call per contract deployed by us (the
standard-JSON input ape compiled, the constructor arguments read back from the
deploying transaction). The API key comes from a file or the environment.
docs/runbooks/deploy.md ("What to check after") has the procedure.
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
    SourceVerifyError,
    api_key_from_environment,
    constructor_arguments,
    publish,
    standard_input,
    verification_payload,
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
    "--deployments-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="FABSTIR_DEPLOYMENTS_DIR",
)
def cli(provider: Any, dry_run: Path | None, api_url: str, deployments_dir: Path | None) -> None:
    try:
        dep = load_deployment(int(provider.chain_id), deployments_dir)
        key = "DRY-RUN" if dry_run else api_key_from_environment()
        web3 = provider.web3
        for name, record in dep.contracts.items():
            if record.tx_hash is None or record.external:
                continue  # a configured token (Circle's USDC): not ours to publish
            std = standard_input(project, record.contract_type or name)
            compiled = project.contracts[std.contract].deployment_bytecode.to_bytes()
            args = constructor_arguments(
                bytes(web3.eth.get_transaction(record.tx_hash)["input"]), compiled
            )
            payload = verification_payload(std, record.address, args, key)
            if dry_run:
                dry_run.mkdir(parents=True, exist_ok=True)
                body = {k: v for k, v in payload.items() if k != "apikey"}
                (dry_run / f"{name}.json").write_text(json.dumps(body, indent=1))
                click.echo(f"{name}: payload written ({std.fully_qualified_name})")
            else:
                click.echo(f"{name}: submitted, guid {publish(payload, api_url)}")
    except (DeploymentError, SourceVerifyError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
