"""`fabstir gateway`: OpenAI's API on 127.0.0.1, paid per token on the marketplace.

`fabstir gateway --account ... --budget 5` serves until Ctrl-C / SIGTERM and then
closes every session so hosts settle. `fabstir gateway spend` prints what the
gateway's sessions and requests cost, from its local record.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import click

from fabstir.cli.context import CliError, CliState, common_options, home_dir, state
from fabstir.cli.output import table

ENV_API_KEY = "FABSTIR_GATEWAY_API_KEY"


def _store(path: Path | None) -> Path:
    return path or home_dir() / "gateway.db"


def _api_key(path: Path | None) -> str | None:
    """The clients' bearer token: from a file (first line) or $FABSTIR_GATEWAY_API_KEY,
    never from the command line (it would show in `ps`)."""
    if path is not None:
        try:
            key = path.read_text().strip().splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise CliError(f"cannot read an API key from {path}: {exc}") from exc
        if not key:
            raise CliError(f"{path} holds no API key")
        return key
    return os.environ.get(ENV_API_KEY) or None


def _ledger(st: CliState, store: Path | None) -> Any:
    from fabstir.gateway.ledger import Ledger

    sdk = st.sdk(sign=True)
    domain = sdk.receipt_domain()
    return sdk, Ledger(
        _store(store),
        chain_id=domain.chain_id,
        marketplace=domain.verifying_contract,
        wallet=str(sdk.address),
    )


@click.group(invoke_without_command=True)
@click.option("--listen", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--api-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"Bearer token clients must send (or ${ENV_API_KEY}); required off loopback.",
)
@click.option("--budget", metavar="AMOUNT", help="Hard limit on what the gateway escrows.")
@click.option("--token", default="USDC", show_default=True, help="Payment token.")
@click.option(
    "--deposit", default="1.0", show_default=True, help="Escrow per session (human amount)."
)
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="Cap on one request's answer (and its default).",
)
@click.option("--sessions-per-host", type=click.IntRange(min=1), default=4, show_default=True)
@click.option(
    "--strategy",
    type=click.Choice(["cheapest", "latency"]),
    default="cheapest",
    show_default=True,
    help="How to pick a host (--host fixes one).",
)
@click.option("--host", "fixed_host", help="Serve every request from this host address.")
@click.option("--idle-timeout", type=float, default=300.0, show_default=True, help="Seconds.")
@click.option("--duration", type=click.IntRange(min=60), default=3600, show_default=True)
@click.option("--proof-interval", type=click.IntRange(min=1), default=64, show_default=True)
@click.option(
    "--store",
    type=click.Path(dir_okay=False, path_type=Path),
    help="SQLite record of sessions and spending (default: $FABSTIR_HOME/gateway.db).",
)
@common_options
@click.pass_context
def gateway(
    ctx: click.Context,
    listen: str,
    port: int,
    api_key_file: Path | None,
    budget: str | None,
    token: str,
    deposit: str,
    max_tokens: int,
    sessions_per_host: int,
    strategy: str,
    fixed_host: str | None,
    idle_timeout: float,
    duration: int,
    proof_interval: int,
    store: Path | None,
) -> None:
    """Run an OpenAI-compatible server that pays marketplace hosts per token.

    \b
    Example (local chain, a host serving, test:8 with a marketplace balance):
      fabstir gateway --account test:8 --budget 5
      # then: OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    """
    if ctx.invoked_subcommand is not None:
        return
    from fabstir.gateway.pool import PoolConfig, SessionPool
    from fabstir.gateway.server import Gateway, ServerSettings

    if budget is None:
        raise click.UsageError("--budget is required: the most the gateway may escrow")
    st = state()
    sdk, ledger = _ledger(st, store)
    tok = sdk.get_token(token)
    config = PoolConfig(
        budget=tok.parse(budget, "budget"),
        payment_token=tok.symbol,
        deposit=tok.parse(deposit, "deposit"),
        max_tokens=max_tokens,
        sessions_per_host=sessions_per_host,
        strategy="fixed" if fixed_host else "latency" if strategy == "latency" else "cheapest",
        fixed_host=fixed_host,
        idle_timeout=idle_timeout,
        duration=duration,
        proof_interval=proof_interval,
    )
    settings = ServerSettings(listen=listen, port=port, api_key=_api_key(api_key_file))
    if not st.debug:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    st.confirm(f"escrow up to {budget} {tok.symbol} through the gateway")
    try:
        server = Gateway(SessionPool(sdk, ledger, config), ledger, settings)
    except ValueError as exc:
        raise CliError(str(exc)) from exc

    async def main() -> None:
        await server.serve()

    try:
        asyncio.run(main())
    finally:
        ledger.close()


@gateway.command()
@click.option("--store", type=click.Path(dir_okay=False, path_type=Path), help="The record.")
@common_options
def spend(store: Path | None) -> None:
    """What the gateway's sessions and requests cost (its local record)."""
    st = state()
    sdk, ledger = _ledger(st, store)
    try:
        sessions = ledger.sessions()
        requests = ledger.requests()
    finally:
        ledger.close()
    by_token: dict[str, int] = {}
    rows = []
    for s in sessions:
        tok = sdk.get_token(s.token)
        by_token[s.token] = by_token.get(s.token, 0) + s.cost
        n = sum(1 for r in requests if r.session_id == s.session_id)
        rows.append(
            [s.session_id, s.host, s.state, n, s.tokens, f"{tok.format(s.cost)} {tok.symbol}"]
        )
    data = {
        "sessions": [
            {**s.__dict__, "cost": str(s.cost), "price": str(s.price), "deposit": str(s.deposit)}
            for s in sessions
        ],
        "requests": [{**r.__dict__, "cost": str(r.cost)} for r in requests],
        "total_cost": {k: str(v) for k, v in by_token.items()},
    }
    totals = ", ".join(f"{sdk.get_token(k).format(v)} {k}" for k, v in by_token.items())
    human = table(["session", "host", "state", "requests", "tokens", "cost"], rows)
    st.out.result(data, f"{human}\n\ntotal: {totals or 'nothing spent'}")
