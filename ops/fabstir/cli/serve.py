"""`fabstir host serve`: run the reference host worker (fabstir.host.worker.serve)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click

from fabstir.cli.context import common_options, state
from fabstir.host.config import HostConfig, Limits


@click.command("serve")
@click.option("--model", default=None, help="Catalogue key, model id or file (default: bundled).")
@click.option(
    "--model-path", type=click.Path(dir_okay=False, path_type=Path), help="GGUF to serve."
)
@click.option("--bind", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--public-url", default=None, help="URL clients use (the one you registered).")
@click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("fabstir-host.db"),
    show_default=True,
    help="SQLite file of receipts and settlement state (keep it: it is what you get paid from).",
)
@click.option("--n-gpu-layers", type=int, default=None, help="Default: all when built with CUDA.")
@click.option("--max-sequences", type=int, default=8, show_default=True)
@click.option(
    "--n-threads", type=int, default=None, help="CPU threads (default: all usable cores)."
)
@click.option("--n-ctx", type=int, default=2048, show_default=True)
@click.option("--settlement-interval", type=float, default=30.0, show_default=True)
@click.option("--max-tokens-per-request", type=int, default=Limits().max_tokens_per_request)
@click.option("--system-prompt", default="You are a helpful assistant.", show_default=True)
@common_options
def serve(
    model: str | None,
    model_path: Path | None,
    bind: str,
    port: int,
    public_url: str | None,
    db: Path,
    n_gpu_layers: int | None,
    max_sequences: int,
    n_threads: int | None,
    n_ctx: int,
    settlement_interval: float,
    max_tokens_per_request: int,
    system_prompt: str,
) -> None:
    """Serve sessions over WebSocket and get paid: verifies the model file against the
    registry, checks every session on chain, streams with receipts, and settles.

    Runs until Ctrl-C / SIGTERM, then stops taking sessions and settles what is open.
    HTTP: /health, /v1/models, /metrics on the same port.

    \b
    Example (local chain, after `fabstir host register --account test:1 --url ws://127.0.0.1:8080`):
      fabstir host serve --account test:1 --port 8080
    """
    from fabstir.host.worker import HostWorker
    from fabstir.host.worker import serve as run_worker

    st = state()
    network = st.network()
    account = st.account()
    config = HostConfig(
        rpc_url=network.rpc_url,
        private_key="0x" + bytes(account.key).hex(),
        chain_id=network.chain_id,
        model=model,
        model_path=model_path,
        bind_host=bind,
        port=port,
        public_url=public_url,
        db_path=db,
        settlement_interval=settlement_interval,
        limits=Limits(max_tokens_per_request=max_tokens_per_request),
        system_prompt=system_prompt,
        n_ctx=n_ctx,
        max_sequences=max_sequences,
        n_threads=n_threads,
        n_gpu_layers=n_gpu_layers,
    )

    def ready(worker: HostWorker) -> None:
        info = {"url": worker.url, "address": worker.address, "model_id": worker.model_id}
        if st.json:
            click.echo(json.dumps({"serving": info}))
        else:
            click.echo(f"serving {worker.model_id} as {worker.address} on {worker.url}", err=True)

    asyncio.run(run_worker(config, on_ready=ready))
