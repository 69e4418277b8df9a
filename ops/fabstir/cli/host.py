"""`fabstir host register|update|status|list|withdraw|unregister` (and the lead's `serve`)."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fabstir import models as catalogue
from fabstir.cli.context import CliError, common_options, read_options, state
from fabstir.cli.costs import confirm_priced
from fabstir.cli.output import jsonable, key_values, table

if TYPE_CHECKING:
    from fabstir.sdk._base import Token
    from fabstir.sdk.sdk import FabstirSDK

_MODEL_ID = re.compile(r"0x[0-9a-fA-F]{64}")


def model_spec(model: str | None) -> dict[str, str] | str:
    """A catalogue model as the SDK's spec (repo, file, sha256), or a raw 0x model id."""
    if model is not None and _MODEL_ID.fullmatch(model):
        try:
            entry = catalogue.find(model)
        except catalogue.ModelError:
            return model.lower()
    else:
        entry = catalogue.find(model)
    return {"huggingfaceRepo": entry.repo, "fileName": entry.file, "modelHash": entry.sha256}


def _metadata(value: str | None) -> dict[str, Any]:
    """--metadata: a JSON object, or @path to a file holding one."""
    if value is None:
        return {}
    text = value
    if value.startswith("@"):
        path = Path(value[1:]).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise CliError(f"cannot read --metadata file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CliError(f"--metadata is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CliError("--metadata must be a JSON object")
    return data


# A host's default minimum price, in the default payment token's smallest unit.
DEFAULT_PRICE = 200


def _default_token(sdk: FabstirSDK) -> Token:
    """The first ERC-20 of the deployment's token table (the chain's coin if none)."""
    tokens = sdk.payment_tokens()
    return next((t for t in tokens if not t.is_eth), tokens[0])


def _prices(
    sdk: FabstirSDK, specs: tuple[str, ...], eth_price: int | None
) -> dict[str, int] | None:
    """--price SYMBOL=N (any payment token of the deployment) or a bare N (the default
    token), plus --eth-price WEI (the chain's coin) -> symbol -> price."""
    prices: dict[str, int] = {}
    for spec in specs:
        symbol, sep, amount = spec.rpartition("=")
        if not amount.isdigit():
            raise click.BadParameter(
                f"{spec!r}: expected N or SYMBOL=N with N a whole number", param_hint="--price"
            )
        token = sdk.get_token(symbol) if sep else _default_token(sdk)
        prices[token.symbol] = int(amount)
    if eth_price is not None:
        prices[sdk.payment_tokens()[0].symbol] = eth_price
    return prices or None


_MODELS = click.option(
    "--model",
    "model_names",
    multiple=True,
    metavar="MODEL",
    help="Catalogue key, model id or file; repeat for several (default: the bundled model).",
)
_PRICE = click.option(
    "--price",
    "price_specs",
    multiple=True,
    metavar="[SYMBOL=]N",
    help="Minimum price per generated token in a payment token's smallest unit, e.g."
    " USDC=200 (0.0002 USDC); a bare N is for the deployment's first ERC-20 token."
    " Repeat for several tokens.",
)
_ETH_PRICE = click.option(
    "--eth-price",
    type=click.IntRange(min=0),
    help="Minimum price per token in the chain's coin, in wei (same as --price ETH=WEI).",
)
_METADATA = click.option(
    "--metadata",
    metavar="JSON|@FILE",
    help='Host metadata, e.g. \'{"hardware":{"gpu":"H100","vram":80,"ram":128},'
    '"location":"eu","maxConcurrent":8}\'',
)


@click.group()
def host() -> None:
    """Run a host: register (stake FAB), update, check status and earnings, leave.

    \b
    Examples:
      fabstir host register --account test:5 --url ws://127.0.0.1:8080 --price USDC=200
      fabstir host status --account test:5
      fabstir host update --account test:5 --url ws://10.0.0.7:8080
      fabstir host list
      fabstir host withdraw --account test:5
      fabstir host unregister --account test:5
      fabstir host withdraw --stake --account test:5     # after the unbonding period
    """


@host.command()
@click.option("--url", required=True, help="The worker's WebSocket URL clients connect to.")
@_MODELS
@click.option("--stake", metavar="FAB", help="FAB to stake (default: the registry's minimum).")
@_PRICE
@_ETH_PRICE
@_METADATA
@common_options
def register(
    url: str,
    model_names: tuple[str, ...],
    stake: str | None,
    price_specs: tuple[str, ...],
    eth_price: int | None,
    metadata: str | None,
) -> None:
    """Stake FAB and register as a host serving models at --url.

    The FAB approval, when needed, is sent first. Without --price the minimum is
    200 units of the deployment's first ERC-20 token per generated token (0.0002
    USDC on the local and Base Sepolia deployments).
    """
    st = state()
    sdk = st.sdk(sign=True)
    models = [model_spec(m) for m in model_names or (None,)]
    prices = _prices(sdk, price_specs, eth_price)
    if not price_specs:
        prices = {**(prices or {}), _default_token(sdk).symbol: DEFAULT_PRICE}
    request: dict[str, Any] = {
        "metadata": _metadata(metadata),
        "supportedModels": models,
        "apiUrl": url,
        "minPrices": prices,
    }
    if stake is not None:
        request["stake"] = stake
    st.confirm(f"register {sdk.address} as a host (stake {stake or 'the minimum'} FAB)")
    with st.out.progress("registering"):
        tx = sdk.get_host_manager().register_host_with_models(request)
    status = sdk.get_host_manager().get_host_status()
    st.out.result(
        {"tx_hash": tx, "host": sdk.address, "status": jsonable(status)},
        f"registered {sdk.address} at {url} (tx {tx})",
    )


@host.command()
@click.option("--url", help="New WebSocket URL.")
@_MODELS
@_PRICE
@_ETH_PRICE
@_METADATA
@common_options
def update(
    url: str | None,
    model_names: tuple[str, ...],
    price_specs: tuple[str, ...],
    eth_price: int | None,
    metadata: str | None,
) -> None:
    """Change the URL, the models served (the list is replaced), prices or metadata."""
    st = state()
    if not (url or model_names or price_specs or eth_price is not None or metadata is not None):
        raise click.UsageError("nothing to update: give --url, --model, --price or --metadata")
    sdk = st.sdk(sign=True)
    prices = _prices(sdk, price_specs, eth_price)
    hm = sdk.get_host_manager()
    st.confirm(f"update host {sdk.address}")
    txs: dict[str, str] = {}
    if url is not None:
        txs["api_url"] = hm.update_api_url(url)
    if model_names:
        txs["models"] = hm.update_host_models([model_spec(m) for m in model_names])
    if prices is not None:
        txs["min_prices"] = hm.set_min_prices(prices)
    if metadata is not None:
        txs["metadata"] = hm.update_metadata(_metadata(metadata))
    st.out.result(
        {"host": sdk.address, "transactions": txs},
        "\n".join(f"updated {k} (tx {v})" for k, v in txs.items()),
    )


@host.command()
@click.argument("address", required=False)
@common_options
def status(address: str | None) -> None:
    """Registration, models, prices, stake, earnings and reputation of a host
    (ADDRESS, default: your account)."""
    st = state()
    sdk = st.sdk()
    who = st.address(address)
    hm = sdk.get_host_manager()
    info = hm.get_host_status(who)
    data: dict[str, Any] = jsonable(info)
    prices: list[str] = []
    if info.is_registered:
        full = hm.get_host_info(who)
        data["min_prices"] = dict(full.min_prices)
        data["stake_fab"] = full.stake_fab
        for token, value in full.min_prices.items():
            if value:
                prices.append(f"{sdk.get_token(token).symbol} {value}")
    # Every payment token the host holds earnings in (withdrawable now).
    earnings = [
        f"{amount} {sdk.get_token(token).symbol}"
        for token, amount in info.earnings_by_token.items()
        if Decimal(amount)
    ]
    human = key_values(
        [
            ("host", info.address),
            ("registered", info.is_registered),
            ("active", info.is_active),
            ("status", info.status),
            ("url", info.api_url or None),
            ("models", list(info.supported_models)),
            ("stake", f"{data.get('stake_fab', '0')} FAB"),
            ("min prices", prices or None),
            ("earnings (withdrawable)", earnings or None),
            (
                "reputation",
                f"{info.reputation.sessions_settled} sessions, "
                f"{info.reputation.tokens_served} tokens, {info.reputation.slashes} slashes",
            ),
            ("unbonding ends", info.unbonding_ends_at or None),
        ]
    )
    st.out.result(data, human)


@host.command("list")
@click.option(
    "--model", help="Only hosts serving this model (catalogue key or id), cheapest first."
)
@read_options
def list_(model: str | None) -> None:
    """Active hosts, with their models, prices (one column per payment token) and URLs."""
    st = state()
    sdk = st.sdk()
    hm = sdk.get_host_manager()
    if model is not None:
        spec = model_spec(model)
        mid = spec if isinstance(spec, str) else catalogue.find(model).model_id
        hosts = hm.find_hosts_for_model(mid)
    else:
        hosts = hm.discover_all_active_hosts_with_models()
    tokens = sdk.payment_tokens()
    rows = [
        (
            h.address,
            h.api_url,
            *(h.min_prices.get(t.address) for t in tokens),
            len(h.supported_models),
            h.stake_fab,
        )
        for h in hosts
    ]
    headers = ["host", "url", *(f"{t.symbol} price" for t in tokens), "models", "stake FAB"]
    st.out.result(jsonable(hosts), table(headers, rows) if rows else "no active hosts")


@host.command()
@click.option(
    "--token",
    default="USDC",
    show_default=True,
    help="A payment token's symbol (as the deployment lists them) or address.",
)
@click.option(
    "--stake",
    "stake",
    is_flag=True,
    help="Withdraw the stake instead (after unregister + unbonding).",
)
@click.option(
    "--to",
    "to",
    metavar="ADDRESS",
    help="Pay the earnings to ADDRESS instead of the host's own (withdrawTo).",
)
@common_options
def withdraw(token: str, stake: bool, to: str | None) -> None:
    """Withdraw the host's earnings (everything owed in --token, to itself or
    --to ADDRESS), or --stake."""
    if stake and to is not None:
        raise click.UsageError("--to is for earnings; the stake goes back to the host")
    st = state()
    sdk = st.sdk(sign=True)
    hm = sdk.get_host_manager()
    if to is not None:
        from fabstir.sdk._base import check_address

        to = check_address(to, "--to")
    if stake:
        fn = sdk._contract("NodeRegistry").functions.withdrawStake()
        cost = confirm_priced(st, sdk, "withdraw the host's stake", [("withdrawStake", fn)])
        tx = hm.withdraw_stake()
        st.out.result(
            {"tx_hash": tx, "what": "stake", "cost": cost.to_dict()},
            f"stake withdrawn (tx {tx})\n{cost.describe()}",
        )
        return
    owed = hm.get_host_earnings(token=token)
    recipient = to if to is not None else str(sdk.address)

    def calls() -> list[tuple[str, object]]:
        tok = sdk.get_token(token)
        ledger = sdk._contract("HostEarnings").functions
        if to is None:
            return [("HostEarnings.withdraw", ledger.withdraw(tok.address))]
        return [("HostEarnings.withdrawTo", ledger.withdrawTo(tok.address, to, tok.parse(owed)))]

    cost = confirm_priced(
        st, sdk, f"withdraw {owed} {token} of host earnings to {recipient}", calls
    )
    tx = hm.withdraw_earnings(token, to=to)
    st.out.result(
        {
            "tx_hash": tx,
            "what": "earnings",
            "token": token,
            "amount": owed,
            "to": recipient,
            "cost": cost.to_dict(),
        },
        f"withdrew {owed} {token} to {recipient} (tx {tx})\n{cost.describe()}",
    )


@host.command()
@common_options
def unregister() -> None:
    """Stop taking new sessions; the stake unbonds (then `host withdraw --stake`)."""
    st = state()
    sdk = st.sdk(sign=True)
    hm = sdk.get_host_manager()
    fn = sdk._contract("NodeRegistry").functions.unregister()
    cost = confirm_priced(st, sdk, f"unregister host {sdk.address}", [("unregister", fn)])
    tx = hm.unregister_host()
    status = hm.get_host_status()
    st.out.result(
        {"tx_hash": tx, "unbonding_ends_at": status.unbonding_ends_at, "cost": cost.to_dict()},
        f"unregistered (tx {tx}); stake withdrawable after {status.unbonding_ends_at} "
        f"(unix time): `fabstir host withdraw --stake`\n{cost.describe()}",
    )
