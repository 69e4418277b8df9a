"""`fabstir chain up|down|status`: a local anvil with a known state directory."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click

from fabstir.chain.local import LOCAL_CHAIN_ID, ChainInfo, LocalChain
from fabstir.cli.context import chain_dir, json_option, state


def _chain(state_dir: Path | None) -> LocalChain:
    return LocalChain(state_dir or chain_dir())


def _info(info: ChainInfo, state_dir: Path) -> dict[str, object]:
    return {"running": True, **asdict(info), "rpc_url": info.rpc_url, "state_dir": str(state_dir)}


_STATE_DIR = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where chain.json and anvil's state live (default: $FABSTIR_HOME/chain, "
    "else ./.fabstir/chain).",
)


@click.group()
def chain() -> None:
    """A local anvil chain for development and the demo.

    \b
    Its state (contracts, balances) is kept in the state directory, so
    `fabstir chain down` then `fabstir chain up` comes back where it was.
    Commands find it with --network local (the default).

    \b
    Examples:
      fabstir chain up --port 8545
      fabstir chain status
      fabstir chain down
    """


@chain.command()
@click.option("--port", type=click.IntRange(1, 65535), help="RPC port (default: a free one).")
@click.option(
    "--chain-id",
    type=click.IntRange(min=1),
    default=LOCAL_CHAIN_ID,
    show_default=True,
    help="Chain id (84532 rehearses Base Sepolia: then it counts as a live chain).",
)
@click.option(
    "--fresh", is_flag=True, help="Start from an empty chain (drop the saved anvil state)."
)
@_STATE_DIR
@json_option
def up(port: int | None, chain_id: int, fresh: bool, state_dir: Path | None) -> None:
    """Start anvil in the background (or report the one already running).

    Prints the RPC URL. Accounts are anvil's standard test accounts (test:0 .. test:9).
    """
    st = state()
    lc = _chain(state_dir)
    running = lc.status()
    if running is None and fresh:
        (lc.state_dir / "anvil-state.json").unlink(missing_ok=True)
    info = running or lc.up(port=port, chain_id=chain_id)
    if running is not None and port is not None and running.port != port:
        st.out.note(f"already running on port {running.port} (not {port}); `chain down` first")
    data = {**_info(info, lc.state_dir), "already_running": running is not None}
    st.out.result(
        data,
        f"{'already running' if running else 'started'}: {info.rpc_url} "
        f"(chain {info.chain_id}, pid {info.pid}, state {lc.state_dir})",
    )


@chain.command()
@_STATE_DIR
@json_option
def down(state_dir: Path | None) -> None:
    """Stop the chain (anvil saves its state for the next `chain up`)."""
    st = state()
    lc = _chain(state_dir)
    stopped = lc.down()
    st.out.result(
        {"stopped": stopped, "state_dir": str(lc.state_dir)},
        "stopped" if stopped else f"no chain running (state dir {lc.state_dir})",
    )


@chain.command()
@_STATE_DIR
@json_option
def status(state_dir: Path | None) -> None:
    """Whether the chain runs, its RPC URL, chain id, pid and block number.

    Exits 0 either way; with --json, `running` says which.
    """
    st = state()
    lc = _chain(state_dir)
    info = lc.status()
    if info is None:
        st.out.result(
            {"running": False, "state_dir": str(lc.state_dir)},
            f"not running (state dir {lc.state_dir}); start it with `fabstir chain up`",
        )
        return
    data = _info(info, lc.state_dir)
    data["block"] = _block_number(info.rpc_url)
    st.out.result(
        data,
        f"running: {info.rpc_url} (chain {info.chain_id}, pid {info.pid}, "
        f"block {data['block']}, state {lc.state_dir})",
    )


def _block_number(url: str) -> int | None:
    import json
    import urllib.request

    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []})
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(json.loads(response.read())["result"], 16)
    except (OSError, ValueError, KeyError, TypeError):
        return None
