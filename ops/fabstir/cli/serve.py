"""`fabstir host serve`: run the reference host worker (fabstir.host.worker.serve).

Its options are generated from `HostConfig` (fabstir.host.options), the same as
`python -m fabstir.host`'s; the chain and the key come from --network/--account.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click

from fabstir.cli.context import common_options, state
from fabstir.host.config import HostConfig
from fabstir.host.options import config_kwargs, config_options


@click.command("serve")
@config_options
@common_options
def serve(**params: Any) -> None:
    """Serve sessions over WebSocket and get paid: verifies the model against the
    registry, checks every session on chain, streams with receipts, and settles.

    Runs until Ctrl-C / SIGTERM, then stops taking sessions and settles what is open.
    HTTP: /health, /v1/models, /metrics on the same port.

    \b
    Example (local chain, after `fabstir host register --account test:1 --url ws://127.0.0.1:8080`):
      fabstir host serve --account test:1 --port 8080
    """
    from fabstir.host.metrics import configure_logging
    from fabstir.host.worker import HostWorker
    from fabstir.host.worker import serve as run_worker

    st = state()
    # One line per session opened, prompt served, receipt, settlement and error on
    # stderr, as servers run by hand do (stdout stays for --json).
    configure_logging("INFO")
    network = st.network()
    account = st.account()
    config = HostConfig(
        rpc_url=network.rpc_url,
        private_key="0x" + bytes(account.key).hex(),
        chain_id=network.chain_id,
        **config_kwargs(params),
    )

    def ready(worker: HostWorker) -> None:
        info = {"url": worker.url, "address": worker.address, "model_id": worker.model_id}
        if st.json:
            click.echo(json.dumps({"serving": info}))
        else:
            click.echo(f"serving {worker.model_id} as {worker.address} on {worker.url}", err=True)

    asyncio.run(run_worker(config, on_ready=ready))
