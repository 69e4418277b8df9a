"""`python -m fabstir.host`: run the reference host worker.

    FABSTIR_HOST_KEY_FILE=~/.fabstir/host.key \\
    python -m fabstir.host --rpc-url http://127.0.0.1:8545 --chain-id 31337

The key is read from the file named by $FABSTIR_HOST_KEY_FILE (or --key-file),
never from the command line. Contract addresses come from
deployments/<chainId>.json (--chain-id, --deployments-dir) or from a JSON file
of name -> address (--addresses). Every other option is generated from
`HostConfig` (fabstir.host.options), the same as `fabstir host serve`'s. Exit
status: 0 after a clean shutdown, 2 for a configuration error, 3 when the model
does not match the registry, 1 for anything else.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from fabstir.host.config import ENV_KEY_FILE, ConfigError, HostConfig, read_key_file
from fabstir.host.engines.base import ModelVerificationError
from fabstir.host.metrics import configure_logging, kv
from fabstir.host.options import config_kwargs, config_options
from fabstir.host.worker import serve

log = logging.getLogger("fabstir.host")

EXIT_CONFIG = 2
EXIT_MODEL = 3


@click.command(
    "python -m fabstir.host",
    help="Reference host worker: serve LLM sessions over WebSocket and settle them.",
)
@click.option("--rpc-url", envvar="FABSTIR_RPC_URL", help="JSON-RPC URL ($FABSTIR_RPC_URL).")
@click.option("--chain-id", type=int, help="Load addresses from deployments/<id>.json.")
@click.option("--deployments-dir", type=click.Path(path_type=Path), help="Where <id>.json is.")
@click.option(
    "--addresses", type=click.Path(path_type=Path), help="JSON file: contract name -> address."
)
@click.option(
    "--key-file",
    type=click.Path(path_type=Path),
    help=f"File holding the host's private key (default ${ENV_KEY_FILE}).",
)
@config_options
@click.option("--log-level", default="INFO", show_default=True)
@click.option("--log-json", is_flag=True, help="JSON lines instead of key=value lines.")
def command(**params: Any) -> int:
    configure_logging(params.pop("log_level").upper(), json_lines=params.pop("log_json"))
    try:
        config = config_from_params(params)
    except ConfigError as exc:
        log.error(kv("config_error", error=str(exc)))
        return EXIT_CONFIG
    return run(config)


def config_from_params(params: dict[str, Any]) -> HostConfig:
    """The HostConfig of this command's parameters (reads the key file)."""
    kwargs = config_kwargs(params)
    if not params["rpc_url"]:
        raise ConfigError("--rpc-url (or $FABSTIR_RPC_URL) is required")
    if params["key_file"] is not None:
        key = read_key_file(params["key_file"])
    else:
        path = os.environ.get(ENV_KEY_FILE)
        if not path:
            raise ConfigError(f"set {ENV_KEY_FILE} (or --key-file) to the host key's file")
        key = read_key_file(path)
    addresses = None
    if params["addresses"] is not None:
        try:
            addresses = json.loads(params["addresses"].read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {params['addresses']}: {exc}") from None
        if not isinstance(addresses, dict):
            raise ConfigError(f"{params['addresses']} must hold a JSON object name -> address")
    return HostConfig(
        rpc_url=params["rpc_url"],
        private_key=key,
        addresses=addresses,
        chain_id=params["chain_id"],
        deployments_dir=params["deployments_dir"],
        **kwargs,
    )


def run(config: HostConfig) -> int:
    """Serve until SIGINT/SIGTERM; the exit status (the click command calls this too)."""
    try:
        asyncio.run(serve(config))
    except ConfigError as exc:
        log.error(kv("config_error", error=str(exc)))
        return EXIT_CONFIG
    except ModelVerificationError as exc:
        log.error(kv("model_refused", code=exc.code.value, error=exc.message))
        return EXIT_MODEL
    except KeyboardInterrupt:
        return 0
    except Exception as exc:
        log.exception(kv("worker_failed", error=repr(exc)))
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        status = command.main(
            args=list(argv) if argv is not None else None,
            prog_name="python -m fabstir.host",
            standalone_mode=False,
        )
    except click.exceptions.Exit as exc:  # --help
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return EXIT_CONFIG
    return int(status) if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
