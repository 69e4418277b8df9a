"""`fabstir session start|chat|send|history|pause|resume|close|status|list`.

Every command is its own process: the SDK keeps the session's client state (the
session key, the newest receipt, the conversation) encrypted in the wallet's
storage, so each command resumes the session from there, does its work, hands
the host the newest receipt and disconnects again.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from fabstir import models as catalogue
from fabstir.cli.context import CliError, CliState, common_options, read_options, state
from fabstir.cli.host import model_spec
from fabstir.cli.output import jsonable, key_values, table
from fabstir.sdk.errors import SDKError

if TYPE_CHECKING:
    from fabstir.sdk.sdk import FabstirSDK
    from fabstir.sdk.session import SessionManager

T = TypeVar("T")

SESSION_ID = click.argument("session_id", type=click.IntRange(min=1), metavar="SESSION_ID")


def _run(sdk: FabstirSDK, work: Callable[[SessionManager], Awaitable[T]]) -> T:
    """Run `work` with a SessionManager; every connection is closed at the end."""

    async def main() -> T:
        sm = sdk.get_session_manager()
        try:
            return await work(sm)
        finally:
            await sm.close_all()

    return asyncio.run(main())


def _model_id(model: str | None) -> str:
    spec = model_spec(model)
    return spec if isinstance(spec, str) else catalogue.find(model).model_id


@click.group()
def session() -> None:
    """Client sessions: open (escrow a deposit), chat, close and settle.

    Each command resumes the session from the client state stored (encrypted)
    in your wallet's storage ($FABSTIR_HOME/storage, else ~/.fabstir/storage),
    so use the same --account throughout.

    \b
    Examples:
      fabstir session start --account test:8 --deposit 1.0
      fabstir session send 1 "What is a GGUF file?" --account test:8
      fabstir session chat 1 --account test:8          # type prompts; Ctrl-D ends
      fabstir session history 1 --account test:8
      fabstir session status 1
      fabstir session close 1 --account test:8
    """


@session.command()
@click.option(
    "--model", help="Catalogue key or model id (default: the bundled model).", metavar="MODEL"
)
@click.option(
    "--host", "host_address", help="Host address (default: the cheapest serving the model)."
)
@click.option(
    "--deposit", default="1.0", show_default=True, help="Escrow, in the payment token (human)."
)
@click.option(
    "--price",
    type=click.IntRange(min=1),
    help="Price per token in the token's smallest unit (default: the host's minimum).",
)
@click.option(
    "--duration", type=click.IntRange(min=1), default=3600, show_default=True, help="Seconds."
)
@click.option(
    "--proof-interval",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Most tokens the host streams ahead of the newest receipt.",
)
@click.option("--host-url", help="Connect here instead of the host's registered URL.")
@click.option(
    "--token",
    default="USDC",
    show_default=True,
    help="Payment token: a symbol as the deployment lists them (ETH, USDC, ...) or an address.",
)
@common_options
def start(
    model: str | None,
    host_address: str | None,
    deposit: str,
    price: int | None,
    duration: int,
    proof_interval: int,
    host_url: str | None,
    token: str,
) -> None:
    """Escrow a deposit with a host and open a session; prints its id."""
    st = state()
    sdk = st.sdk(sign=True)
    mid = _model_id(model)
    hm = sdk.get_host_manager()
    tok = sdk.get_token(token)
    if host_address is None:
        hosts = hm.find_hosts_for_model(mid, token)
        if not hosts:
            raise CliError(f"no active host serves model {mid}; see `fabstir host list`")
        host_address = hosts[0].address
    if price is None:
        price = hm.get_host_info(host_address).min_prices.get(tok.address) or 0
        if price <= 0:
            raise CliError(f"host {host_address} does not accept {tok.symbol}")
    config = {
        "depositAmount": deposit,
        "pricePerToken": price,
        "duration": duration,
        "proofInterval": proof_interval,
    }
    st.confirm(f"escrow {deposit} {tok.symbol} for a session with {host_address}")
    jobs = sdk.get_session_job_manager()
    before = jobs.get_session_count()

    async def work(sm: SessionManager) -> Any:
        # Keep a session the host could not take open: the message below offers
        # `session resume` (retry) or `session close`.
        started = await sm.start_session(
            mid, host_address, config, host_url, payment_token=token, close_on_failure=False
        )
        await sm.pause_session(started.session_id)
        return started

    try:
        with st.out.progress(f"opening a session with {host_address}"):
            started = _run(sdk, work)
    except SDKError as exc:
        opened = _opened_since(sdk, before)
        if opened is None:
            raise
        raise CliError(
            f"{exc}; session {opened} is open on chain with the deposit escrowed: retry with "
            f"`fabstir session resume {opened}` or end it with `fabstir session close {opened}`"
        ) from exc
    data = {
        "session_id": started.session_id,
        "tx_hash": started.tx_hash,
        "host": host_address,
        "host_url": started.host_url,
        "model_id": mid,
        "deposit": started.deposit,
        "token": tok.symbol,
        "price_per_token": price,
    }
    human = key_values(
        [
            ("session", started.session_id),
            ("host", f"{host_address} ({started.host_url})"),
            ("model", mid),
            ("deposit", f"{started.deposit} {tok.symbol}"),
            ("price", f"{price} per token ({tok.format(price)} {tok.symbol})"),
            ("tx", started.tx_hash),
        ]
    )
    st.out.result(data, f'{human}\nnext: fabstir session send {started.session_id} "Hello"')


def _opened_since(sdk: FabstirSDK, before: int) -> int | None:
    """The newest session this account opened after session `before`, if any."""
    try:
        jobs = sdk.get_session_job_manager()
        for sid in range(jobs.get_session_count(), before, -1):
            if jobs.get_session(sid).depositor == sdk.address:
                return sid
    except SDKError:
        return None
    return None


async def _ask(
    sm: SessionManager, st: CliState, sid: int, prompt: str, max_tokens: int
) -> dict[str, Any]:
    """Stream one answer to stdout as it arrives; returns the turn."""
    parts: list[str] = []
    tokens = 0
    async for chunk in sm.send_prompt_streaming(sid, prompt, max_tokens=max_tokens):
        parts.append(chunk.text)
        tokens = chunk.tokens
        st.out.stream(chunk.text)
    st.out.stream("\n")
    return {"prompt": prompt, "answer": "".join(parts), "session_tokens": tokens}


@session.command()
@SESSION_ID
@click.argument("prompt")
@click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@common_options
def send(session_id: int, prompt: str, max_tokens: int) -> None:
    """Send one PROMPT (`-` reads it from stdin) and stream the answer to stdout.

    \b
    Examples:
      fabstir session send 1 "Name three colours." --account test:8
      echo "Summarise this" | fabstir session send 1 - --account test:8 --json
    """
    st = state()
    if prompt == "-":
        prompt = click.get_text_stream("stdin").read().rstrip("\n")
    if not prompt.strip():
        raise click.BadParameter("the prompt is empty", param_hint="'PROMPT'")
    sdk = st.sdk(sign=True)

    async def work(sm: SessionManager) -> dict[str, Any]:
        await sm.resume_session(session_id)
        try:
            return await _ask(sm, st, session_id, prompt, max_tokens)
        finally:
            await sm.pause_session(session_id)

    turn = _run(sdk, work)
    if st.json:
        st.out.result({"session_id": session_id, **turn})


@session.command()
@SESSION_ID
@click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@common_options
def chat(session_id: int, max_tokens: int) -> None:
    """Interactive chat: one prompt per line from stdin, answers streamed.

    Ends on end of input (Ctrl-D) or a line `/exit`. The host keeps the
    conversation's context; the session stays open (close it with `session close`).

    \b
    Examples:
      fabstir session chat 1 --account test:8
      printf 'Hi\\nTell me a joke\\n' | fabstir session chat 1 --account test:8
    """
    st = state()
    sdk = st.sdk(sign=True)
    stdin = click.get_text_stream("stdin")
    interactive = stdin.isatty()

    async def read_line() -> str | None:
        if interactive:
            sys.stderr.write("you> ")
            sys.stderr.flush()
        line = await asyncio.to_thread(stdin.readline)
        return None if line == "" else line.rstrip("\n")

    async def work(sm: SessionManager) -> list[dict[str, Any]]:
        turns: list[dict[str, Any]] = []
        await sm.resume_session(session_id)
        if interactive:
            st.out.note(f"session {session_id}: type a prompt, /exit or Ctrl-D to stop")
        try:
            while True:
                line = await read_line()
                if line is None or line.strip() in ("/exit", "/quit"):
                    break
                if not line.strip():
                    continue
                turns.append(await _ask(sm, st, session_id, line, max_tokens))
        finally:
            await sm.pause_session(session_id)
        return turns

    turns = _run(sdk, work)
    if st.json:
        st.out.result({"session_id": session_id, "turns": turns})
    else:
        st.out.note(f"session {session_id} paused; `fabstir session close {session_id}` ends it")


@session.command()
@SESSION_ID
@common_options
def history(session_id: int) -> None:
    """The conversation as this client saw it, and the chain's record of the session."""
    st = state()
    sdk = st.sdk(sign=True)

    async def work(sm: SessionManager) -> Any:
        return await sm.get_session_history(session_id)

    h = _run(sdk, work)
    data = {
        "session_id": session_id,
        "messages": jsonable(h.messages),
        "status": h.info.status.name,
        "tokens_received": h.tokens_received,
        "tokens_used_on_chain": h.info.tokens_used,
        "last_receipt_tokens": h.last_receipt.tokens_used if h.last_receipt else 0,
    }
    lines = [f"{m.role}: {m.content}" for m in h.messages] or ["(no messages yet)"]
    lines.append("")
    lines.append(
        key_values(
            [
                ("status", h.info.status),
                ("tokens received", h.tokens_received),
                ("newest receipt", data["last_receipt_tokens"]),
                ("tokens paid on chain", h.info.tokens_used),
            ]
        )
    )
    st.out.result(data, "\n".join(lines))


@session.command()
@SESSION_ID
@common_options
def pause(session_id: int) -> None:
    """Make sure the host holds the newest receipt, then disconnect.

    (Every session command already disconnects when it ends; pausing also works
    after a crash.) The escrow stays; `session resume` or `send` go on.
    """
    st = state()
    sdk = st.sdk(sign=True)

    async def work(sm: SessionManager) -> Any:
        await sm.resume_session(session_id)
        await sm.pause_session(session_id)
        return await sm.get_session_history(session_id)

    h = _run(sdk, work)
    st.out.result(
        {"session_id": session_id, "paused": True, "tokens_received": h.tokens_received},
        f"session {session_id} paused ({h.tokens_received} tokens received)",
    )


@session.command()
@SESSION_ID
@common_options
def resume(session_id: int) -> None:
    """Reconnect to the host and check it still serves the session (context restored)."""
    st = state()
    sdk = st.sdk(sign=True)

    async def work(sm: SessionManager) -> Any:
        await sm.resume_session(session_id)
        h = await sm.get_session_history(session_id)
        await sm.pause_session(session_id)
        return h

    h = _run(sdk, work)
    st.out.result(
        {
            "session_id": session_id,
            "resumed": True,
            "status": h.info.status.name,
            "tokens_received": h.tokens_received,
            "messages": len(h.messages),
        },
        f"session {session_id} is live with host {h.info.host}: {len(h.messages)} messages, "
        f"{h.tokens_received} tokens so far",
    )


@session.command()
@SESSION_ID
@click.option(
    "--settle-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the host's settlement before closing on chain yourself.",
)
@common_options
def close(session_id: int, settle_timeout: float) -> None:
    """End the session: the host settles with your newest receipt, the rest of the
    deposit is refunded to your in-contract balance, the conversation is stored."""
    st = state()
    sdk = st.sdk(sign=True)
    st.confirm(f"close session {session_id}")

    async def work(sm: SessionManager) -> Any:
        try:
            await sm.resume_session(session_id)
        except SDKError as exc:
            st.out.note(f"host not reachable ({exc}); closing on chain with the newest receipt")
        return await sm.complete_session(session_id, settle_timeout=settle_timeout)

    with st.out.progress(f"closing session {session_id}"):
        r = _run(sdk, work)
    data = jsonable(r)
    human = key_values(
        [
            ("session", r.session_id),
            ("status", r.status),
            ("tokens used", r.tokens_used),
            ("cost", r.cost),
            ("refund", f"{r.refund} (to your in-contract balance)"),
            ("settled by host", r.settled_by_host),
            ("close tx", r.close_tx_hash),
            ("conversation", r.conversation_cid),
        ]
    )
    if not r.settled_by_host and r.status.name == "CLOSING":
        human += f"\nthe host has until {r.finalize_after} (unix time) to post a newer receipt"
    st.out.result(data, human)


@session.command()
@SESSION_ID
@read_options
def status(session_id: int) -> None:
    """The chain's view of a session (anyone can look: no account needed)."""
    st = state()
    sdk = st.sdk()
    jobs = sdk.get_session_job_manager()
    info = jobs.get_session(session_id)
    tokens_left, amount_left = jobs.get_remaining_budget(session_id)
    symbol = sdk.get_token(info.token).symbol
    data = {**jsonable(info), "remaining_tokens": tokens_left, "remaining_amount": amount_left}
    # Settled is money moved; final is when no shallow reorg can take it back.
    finality = jobs.get_settlement_finality(session_id) if info.status.name == "SETTLED" else None
    data["settlement"] = (
        None if finality is None else {**jsonable(finality), "final": finality.final}
    )
    human = key_values(
        [
            ("session", info.session_id),
            ("status", info.status),
            ("client", info.depositor),
            ("host", info.host),
            ("model", info.model_id),
            ("deposit", f"{info.deposit} {symbol}"),
            ("price", f"{info.price_per_token} per token"),
            ("tokens paid", f"{info.tokens_used} of {info.max_tokens}"),
            ("remaining", f"{tokens_left} tokens ({amount_left} {symbol})"),
            ("ends at", info.ends_at),
        ]
        + (
            []
            if finality is None
            else [
                (
                    "settlement",
                    f"block {finality.block}, {finality.confirmations} of {finality.required} "
                    f"confirmations: {'final' if finality.final else 'not final yet'}",
                )
            ]
        )
    )
    st.out.result(data, human)


@session.command("list")
@click.option("--as-host", is_flag=True, help="Sessions served by the account (a host).")
@click.argument("address", required=False)
@common_options
def list_(as_host: bool, address: str | None) -> None:
    """Sessions opened by ADDRESS (default: your account), or served by it with --as-host."""
    st = state()
    sdk = st.sdk()
    who = st.address(address)
    jobs = sdk.get_session_job_manager()
    sessions = jobs.get_sessions_of_host(who) if as_host else jobs.get_sessions_of_user(who)
    rows = [
        (s.session_id, s.status, s.host if not as_host else s.depositor, s.tokens_used, s.deposit)
        for s in sessions
    ]
    st.out.result(
        jsonable(sessions),
        table(["id", "status", "client" if as_host else "host", "tokens", "deposit"], rows)
        if rows
        else "no sessions",
    )
