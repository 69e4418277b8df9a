"""`fabstir treasury info|withdraw`: the marketplace fee and collected fees."""

from __future__ import annotations

import click

from fabstir.cli.context import common_options, read_options, state
from fabstir.cli.costs import confirm_priced
from fabstir.cli.output import jsonable, key_values

_TOKEN = click.option(
    "--token",
    default="USDC",
    show_default=True,
    help="A payment token's symbol (as the deployment lists them) or address.",
)


@click.group()
def treasury() -> None:
    """The treasury: fee rate, fees collected, withdrawals by a treasurer.

    \b
    Examples:
      fabstir treasury info
      fabstir treasury withdraw 1.5 --account test:0
      fabstir treasury withdraw --all --to 0x... --account treasurer
    """


@treasury.command()
@_TOKEN
@read_options
def info(token: str) -> None:
    """Fee (basis points), balance held and total collected in --token."""
    st = state()
    t = st.sdk().get_treasury_manager().get_treasury_info(token)
    human = key_values(
        [
            ("treasury", t.address),
            ("fee", f"{t.fee_bps} bps ({t.fee_percentage:g} %)"),
            (f"balance {token}", t.balance),
            (f"total collected {token}", t.total_collected),
        ]
    )
    st.out.result(jsonable(t), human)


@treasury.command()
@click.argument("amount", required=False)
@click.option("--all", "all_", is_flag=True, help="Withdraw everything the treasury holds.")
@click.option("--to", "to", metavar="ADDRESS", help="Recipient (default: your account).")
@_TOKEN
@common_options
def withdraw(amount: str | None, all_: bool, to: str | None, token: str) -> None:
    """Treasurer: pay AMOUNT (or --all) of collected fees to --to."""
    if (amount is None) == (not all_):
        raise click.UsageError("give either AMOUNT or --all")
    st = state()
    sdk = st.sdk(sign=True)
    tm = sdk.get_treasury_manager()
    value = amount if amount is not None else tm.get_treasury_balance(token)
    recipient = to or str(sdk.address)

    def calls() -> list[tuple[str, object]]:
        from fabstir.sdk._base import check_address

        tok = sdk.get_token(token)
        to_address = check_address(recipient, "to")  # never hand web3 an unchecked string
        treasury = sdk._contract("Treasury").functions
        return [("Treasury.withdraw", treasury.withdraw(tok.address, to_address, tok.parse(value)))]

    cost = confirm_priced(
        st, sdk, f"withdraw {value} {token} of treasury fees to {recipient}", calls
    )
    tx = tm.withdraw_treasury_funds(token, value, recipient)
    left = tm.get_treasury_balance(token)
    st.out.result(
        {
            "tx_hash": tx,
            "amount": value,
            "token": token,
            "to": recipient,
            "balance": left,
            "cost": cost.to_dict(),
        },
        f"withdrew {value} {token} to {recipient} (tx {tx}); treasury holds {left}\n"
        f"{cost.describe()}",
    )
