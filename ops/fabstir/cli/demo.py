"""`fabstir demo`: the whole paid lifecycle on an embedded local chain (fabstir.demo)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Iterator

import click
from rich.console import Console
from rich.table import Table

from fabstir.cli.output import short_hash
from fabstir.demo import DEFAULT_PROMPTS, DemoOptions, DemoReport, run_demo
from fabstir.sdk.amounts import format_amount

USDC_DECIMALS = 6


class ConsoleUI:
    """Progress on stderr (a spinner per phase on a terminal), the chat on stdout."""

    def __init__(self, *, stream_chat: bool) -> None:
        self.err = Console(stderr=True, highlight=False)
        self.out = Console(highlight=False)
        self.stream_chat = stream_chat

    @contextlib.contextmanager
    def phase(self, name: str, description: str) -> Iterator[None]:
        if name == "chat" and self.stream_chat:
            self.err.print(f"[bold]•[/bold] {description}")
            yield
            return
        with self.err.status(f"{description}...", spinner="dots"):
            yield
        self.err.print(f"[green]✓[/green] {description}")

    def info(self, text: str) -> None:
        self.err.print(text)

    def user(self, text: str) -> None:
        if self.stream_chat:
            self.out.print(f"\n[bold cyan]you>[/bold cyan] {text}")
            self.out.print("[bold magenta]host>[/bold magenta] ", end="")

    def token(self, text: str) -> None:
        if self.stream_chat:
            sys.stdout.write(text)
            sys.stdout.flush()

    def answer_done(self) -> None:
        if self.stream_chat:
            self.out.print()


def _usdc(amount: int) -> str:
    return f"{format_amount(amount, USDC_DECIMALS)} USDC"


def print_report(report: DemoReport, console: Console) -> None:
    console.print()
    money = Table(title=f"Session {report.session_id} settled on chain {report.chain_id}")
    money.add_column("")
    money.add_column("amount", justify="right")
    money.add_row("tokens used", str(report.tokens_used))
    money.add_row("cost (tokens x 0.0002 USDC)", _usdc(report.cost))
    money.add_row("host (90%)", _usdc(report.host_amount))
    money.add_row("treasury (10%)", _usdc(report.fee))
    money.add_row("refund to the client's balance", _usdc(report.refund))
    money.add_row("client tokens/s (streamed)", f"{report.tokens_per_second:.1f}")
    if report.conversation_cid:
        money.add_row("conversation (encrypted)", report.conversation_cid)
    console.print(money)

    txs = Table(title="Transactions")
    txs.add_column("step")
    txs.add_column("tx hash", no_wrap=True)
    txs.add_column("gas", justify="right")
    for tx in report.transactions:
        txs.add_row(tx.step, short_hash(tx.tx_hash), f"{tx.gas_used:,}")
    txs.add_row("total", "", f"{sum(t.gas_used for t in report.transactions):,}")
    console.print(txs)

    books = Table(title="Books (to the unit)")
    books.add_column("check")
    books.add_column("ok", justify="center")
    for name, ok in report.books["checks"].items():
        books.add_row(name, "[green]yes[/green]" if ok else "[red]NO[/red]")
    console.print(books)
    if report.books.get("surplus"):
        console.print(
            f"vault surplus (donations, owed to nobody): {report.books['surplus']:,} units"
        )
    phases = ", ".join(f"{k} {v:.1f}s" for k, v in report.phases.items())
    console.print(f"phases: {phases} (total {sum(report.phases.values()):.1f}s)")


@click.command("demo")
@click.option(
    "--prompt",
    "prompts",
    multiple=True,
    help="A chat turn (repeat for several). Default: two short questions.",
)
@click.option("--model", default=None, help="Catalogue key or model id (default: bundled).")
@click.option(
    "--max-tokens", default=96, show_default=True, type=click.IntRange(1, 1024), help="Per answer."
)
@click.option(
    "--keep-running",
    is_flag=True,
    help="Leave the chain and the host up afterwards and print how to connect (Ctrl-C stops).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON report on stdout, no chat echo.")
def demo(
    prompts: tuple[str, ...], model: str | None, max_tokens: int, keep_running: bool, as_json: bool
) -> None:
    """Run one complete paid session, end to end, on an embedded local chain.

    Starts anvil, deploys and wires the contracts, registers a host serving the
    bundled model, opens a session paid with 1.0 USDC, streams a short chat while
    the client signs receipts, closes and settles on chain, lets the host and the
    treasury withdraw, and checks that the books balance to the unit. Everything
    it started is stopped at the end, also on Ctrl-C or failure.

    \b
    Example:
      fabstir demo --prompt "Write a haiku about GPUs."
    """
    # The demo's host SDK and host worker sign with one key from two nonce sequences;
    # the resync that follows is expected here and not worth a warning.
    logging.getLogger("fabstir.chain.client").setLevel(logging.ERROR)
    ui = ConsoleUI(stream_chat=not as_json)
    options = DemoOptions(
        prompts=prompts or DEFAULT_PROMPTS,
        model=model,
        keep_running=keep_running,
        max_tokens=max_tokens,
    )
    report = asyncio.run(run_demo(options, ui))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        print_report(report, ui.out)
