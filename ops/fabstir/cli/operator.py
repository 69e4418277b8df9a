"""Operator commands the runbooks used to script with the SDK by hand:
`fabstir session finalize`, `fabstir host settle`, and `fabstir admin
pause|unpause|token` for the accounts holding PAUSER_ROLE / TOKEN_ADMIN_ROLE.

Each asks before sending on a live network (unless --yes), showing what the
transaction costs at most (L2 gas plus Base's L1 data fee), checks the role first
so a missing one is a one-line reason rather than a revert, and has --json (the
same cost under "cost").
"""

from __future__ import annotations

from typing import Any

import click

from fabstir.cli.context import CliError, CliState, common_options, read_options, state
from fabstir.cli.costs import CommandCost, confirm_priced
from fabstir.cli.output import key_values, table
from fabstir.sdk.sdk import FabstirSDK
from fabstir.sdk.types import SessionStatus

_SESSION_ID = click.argument("session_id", type=click.IntRange(min=1), metavar="SESSION_ID")


def _send(sdk: FabstirSDK, fn: Any, what: str) -> str:
    """One transaction from the CLI's account, errors as the SDK's one-line SDKErrors."""
    from fabstir.sdk._base import translate_errors

    sender = sdk._require_sender(what)
    with translate_errors(what):
        return sender.send(fn, what=what).tx_hash


def _confirm_priced(st: CliState, sdk: FabstirSDK, action: str, fn: Any) -> CommandCost:
    """Price `fn` as it would be sent now, then ask (live networks) with that price."""
    return confirm_priced(st, sdk, action, [(action, fn)])


def _require_role(sdk: FabstirSDK, role: str) -> None:
    from fabstir.chain.system import role_id

    market = sdk._contract("JobMarketplace")
    me = str(sdk.address)
    if not sdk.chain.call(market.functions.hasRole(role_id(role), me), "hasRole"):
        raise CliError(
            f"{me} does not hold {role} on the JobMarketplace; use the account that does"
        )


# --------------------------------------------------------------------- sessions


@click.command()
@_SESSION_ID
@common_options
def finalize(session_id: int) -> None:
    """Anyone: settle SESSION_ID with its last recorded receipt once the host's
    settlement window (after a close request or expiry) has passed."""
    st = state()
    sdk = st.sdk(sign=True)
    jobs = sdk.get_session_job_manager()
    market = sdk._contract("JobMarketplace")
    cost = _confirm_priced(
        st, sdk, f"finalize session {session_id}", market.functions.finalize(session_id)
    )
    tx = jobs.finalize(session_id)
    info = jobs.get_session(session_id)
    st.out.result(
        {
            "session_id": session_id,
            "tx_hash": tx,
            "status": info.status.name,
            "tokens_used": info.tokens_used,
            "cost": cost.to_dict(),
        },
        f"session {session_id} finalized (tx {tx}): {info.tokens_used} tokens paid, "
        f"the rest refunded to the client's in-contract balance\n{cost.describe()}",
    )


@click.command()
@click.argument("session_ids", nargs=-1, type=click.IntRange(min=1), metavar="[SESSION_ID]...")
@click.option(
    "--due",
    is_flag=True,
    help="Every open session of this host whose close was requested or whose time is up.",
)
@common_options
def settle(session_ids: tuple[int, ...], due: bool) -> None:
    """Host: settle SESSION_ID(s), or --due ones, with the receipts recorded on chain
    (one settleBatch transaction; a session that cannot be settled is skipped)."""
    if bool(session_ids) == due:
        raise click.UsageError("give SESSION_ID(s) or --due")
    st = state()
    sdk = st.sdk(sign=True)
    jobs = sdk.get_session_job_manager()
    ids = list(session_ids)
    if due:
        now = sdk.chain.block_timestamp()
        ids = [
            s.session_id
            for s in jobs.get_sessions_of_host()
            if s.status == SessionStatus.CLOSING
            or (s.status == SessionStatus.ACTIVE and s.ends_at <= now)
        ]
        if not ids:
            st.out.result({"sessions": [], "tx_hash": None}, "no session is due")
            return
    from fabstir.chain.marketplace import SettleItem

    batch = [SettleItem(i).as_tuple() for i in ids]
    fn = sdk._contract("JobMarketplace").functions.settleBatch(batch)
    cost = _confirm_priced(st, sdk, f"settle session(s) {', '.join(map(str, ids))}", fn)
    result = jobs.settle_batch(ids)
    outcomes = [o.name for o in result.outcomes]
    rows = list(zip(ids, outcomes, strict=False))
    st.out.result(
        {
            "tx_hash": result.tx_hash,
            "sessions": [{"session_id": i, "outcome": o} for i, o in rows],
            "cost": cost.to_dict(),
        },
        table(["session", "outcome"], rows) + f"\ntx {result.tx_hash}\n{cost.describe()}",
    )


# ------------------------------------------------------------------------ admin


@click.group()
def admin() -> None:
    """Marketplace administration for role holders: pause, unpause, payment tokens.

    \b
    Examples:
      fabstir admin status
      fabstir admin pause --account test:0
      fabstir admin token USDC --min-deposit 2.0 --account test:0
    """


@admin.command()
@read_options
def status() -> None:
    """Anyone: whether the marketplace is paused (new sessions refused)."""
    st = state()
    sdk = st.sdk()
    market = sdk._contract("JobMarketplace")
    paused = bool(sdk.chain.call(market.functions.paused(), "paused"))
    chain_id = st.network().chain_id
    st.out.result(
        {"marketplace": market.address, "chain_id": chain_id, "paused": paused},
        f"JobMarketplace {market.address} on chain {chain_id}: paused={paused}",
    )


@admin.command()
@common_options
def pause() -> None:
    """PAUSER_ROLE: stop new sessions (open sessions still settle and close)."""
    st = state()
    sdk = st.sdk(sign=True)
    _require_role(sdk, "PAUSER_ROLE")
    fn = sdk._contract("JobMarketplace").functions.pause()
    cost = _confirm_priced(st, sdk, "pause the marketplace (no new sessions)", fn)
    tx = _send(sdk, fn, "pause")
    st.out.result(
        {"paused": True, "tx_hash": tx, "cost": cost.to_dict()},
        f"marketplace paused (tx {tx})\n{cost.describe()}",
    )


@admin.command()
@common_options
def unpause() -> None:
    """PAUSER_ROLE: accept new sessions again."""
    st = state()
    sdk = st.sdk(sign=True)
    _require_role(sdk, "PAUSER_ROLE")
    fn = sdk._contract("JobMarketplace").functions.unpause()
    cost = _confirm_priced(st, sdk, "unpause the marketplace", fn)
    tx = _send(sdk, fn, "unpause")
    st.out.result(
        {"paused": False, "tx_hash": tx, "cost": cost.to_dict()},
        f"marketplace unpaused (tx {tx})\n{cost.describe()}",
    )


@admin.command()
@click.argument("token")
@click.option("--min-deposit", help="Least escrow per session, in the token's units (e.g. 1.0).")
@click.option(
    "--accept/--refuse",
    "accepted",
    default=True,
    show_default=True,
    help="Whether new sessions may pay in TOKEN.",
)
@common_options
def token(token: str, min_deposit: str | None, accepted: bool) -> None:
    """TOKEN_ADMIN_ROLE: accept or refuse TOKEN (USDC, ETH or an address) for new
    sessions and set its minimum deposit (default: keep the current one)."""
    st = state()
    sdk = st.sdk(sign=True)
    _require_role(sdk, "TOKEN_ADMIN_ROLE")
    tok = sdk.get_token(token)
    market = sdk._contract("JobMarketplace")
    current = sdk.chain.call(market.functions.tokenConfig(tok.address), "tokenConfig")
    minimum = tok.parse(min_deposit, "min_deposit") if min_deposit is not None else int(current[2])
    if accepted and minimum == 0:
        raise CliError(f"an accepted token needs --min-deposit (above 0 {tok.symbol})")
    fn = market.functions.configureToken(tok.address, accepted, minimum)
    action = (
        f"{'accept' if accepted else 'refuse'} {tok.symbol} with minimum deposit "
        f"{tok.format(minimum)}"
    )
    cost = _confirm_priced(st, sdk, action, fn)
    tx = _send(sdk, fn, f"configureToken({tok.symbol})")
    data = {
        "token": tok.address,
        "symbol": tok.symbol,
        "accepted": accepted,
        "min_deposit": tok.format(minimum),
        "min_deposit_raw": minimum,
        "tx_hash": tx,
    }
    st.out.result(
        {**data, "cost": cost.to_dict()},
        f"{key_values(list(data.items()))}\n{cost.describe()}",
    )
