"""`fabstir balance|deposit|withdraw`: a client's wallet and in-contract balance.

Sessions draw their escrow from the in-contract balance (then the wallet), and
unused escrow is refunded to it; `withdraw` takes it back to the wallet.
"""

from __future__ import annotations

import click

from fabstir.cli.context import common_options, state
from fabstir.cli.costs import confirm_priced
from fabstir.cli.output import key_values

_TOKEN = click.option(
    "--token",
    default="USDC",
    show_default=True,
    help="A payment token's symbol (as the deployment lists them), FAB, or a token address.",
)


@click.command()
@click.argument("address", required=False)
@_TOKEN
@common_options
def balance(address: str | None, token: str) -> None:
    """Wallet, deposited (in-contract) and escrowed balances, plus ETH for gas.

    ADDRESS defaults to your account.

    \b
    Examples:
      fabstir balance --account test:8
      fabstir balance 0x976EA74026E726554dB657fA54763abd0C3a0aa9 --json
    """
    st = state()
    sdk = st.sdk()
    who = st.address(address)
    pm = sdk.get_payment_manager()
    b = pm.get_balances(who, token)
    eth = pm.get_eth_balance(who)
    data = {
        "address": who,
        "token": b.token,
        "symbol": b.symbol,
        "wallet": b.wallet,
        "deposited": b.deposited,
        "escrowed": b.escrowed,
        "eth": eth,
    }
    human = key_values(
        [
            ("address", who),
            (f"wallet {b.symbol}", b.wallet),
            (f"deposited {b.symbol}", f"{b.deposited} (in the marketplace, usable by sessions)"),
            (f"escrowed {b.symbol}", f"{b.escrowed} (locked in open sessions)"),
            ("wallet ETH", eth),
        ]
    )
    st.out.result(data, human)


@click.command()
@click.argument("amount")
@_TOKEN
@common_options
def deposit(amount: str, token: str) -> None:
    """Deposit AMOUNT (such as 5 or 1.5) into your in-contract balance.

    The token approval, when needed, is sent first.

    \b
    Example:
      fabstir deposit 5 --account test:8
    """
    st = state()
    sdk = st.sdk(sign=True)
    st.confirm(f"deposit {amount} {token} from {sdk.address}")
    tx = sdk.get_payment_manager().deposit(amount, token)
    b = sdk.get_payment_manager().get_balances(None, token)
    st.out.result(
        {"tx_hash": tx, "amount": amount, "token": b.symbol, "deposited": b.deposited},
        f"deposited {amount} {b.symbol} (tx {tx}); in-contract balance {b.deposited}",
    )


@click.command()
@click.argument("amount", required=False)
@_TOKEN
@click.option(
    "--to",
    "to",
    metavar="ADDRESS",
    help="Pay to ADDRESS instead of your wallet (withdrawTo), e.g. when a token blocks it.",
)
@common_options
def withdraw(amount: str | None, token: str, to: str | None) -> None:
    """Withdraw AMOUNT (default: all that is free) from the in-contract balance.

    \b
    Examples:
      fabstir withdraw --account test:8
      fabstir withdraw 0.5 --account test:8
      fabstir withdraw --to 0x90F79bf6EB2c4f870365E785982E1f101E93b906 --account test:8
    """
    st = state()
    sdk = st.sdk(sign=True)
    pm = sdk.get_payment_manager()
    if to is not None:
        from fabstir.sdk._base import check_address

        to = check_address(to, "--to")
    recipient = to if to is not None else str(sdk.address)
    shown = amount if amount is not None else pm.get_balances(None, token).deposited

    def calls() -> list[tuple[str, object]]:
        tok = sdk.get_token(token)
        market = sdk._contract("JobMarketplace").functions
        if to is None:
            return [("JobMarketplace.withdraw", market.withdraw(tok.address, tok.parse(shown)))]
        fn = market.withdrawTo(tok.address, to, tok.parse(shown))
        return [("JobMarketplace.withdrawTo", fn)]

    cost = confirm_priced(st, sdk, f"withdraw {shown} {token} to {recipient}", calls)
    tx = pm.withdraw(amount, token, to=to)
    b = pm.get_balances(None, token)
    st.out.result(
        {
            "tx_hash": tx,
            "amount": shown,
            "token": b.symbol,
            "to": recipient,
            "deposited": b.deposited,
            "cost": cost.to_dict(),
        },
        f"withdrew {shown} {b.symbol} to {recipient} (tx {tx}); in-contract balance "
        f"{b.deposited}\n"
        f"{cost.describe()}",
    )
