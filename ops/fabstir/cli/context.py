"""Shared state of one `fabstir` invocation: output mode, network, account, errors.

Networks (`--network`, default `local`, or $FABSTIR_NETWORK):

- `local`: $FABSTIR_RPC_URL if set, else the anvil `fabstir chain up` started
  (its record lives in $FABSTIR_HOME/chain, default ./.fabstir/chain);
- `base-sepolia`: $BASE_SEPOLIA_RPC_URL, else the public https://sepolia.base.org;
- an `http(s)://` URL.

The chain id is asked from the RPC; chains 31337 and 1337 count as local, every
other chain as live (confirmation before sending, no test accounts).

Accounts (`--account`, or $FABSTIR_ACCOUNT), never a key on the command line:

- `test:N` (or ape's `TEST::N`): anvil's standard test account N, local chains only;
- an ape account alias: ~/.ape/accounts/<alias>.json (or $APE_DATA_FOLDER),
  decrypted with the passphrase from $APE_ACCOUNTS_<alias>_PASSPHRASE or a prompt;
- none given: the hex key in the file named by $FABSTIR_KEY_FILE.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlsplit

import click
from eth_account import Account
from eth_account.signers.local import LocalAccount

from fabstir.chain.local import LocalChain, test_private_key
from fabstir.cli.output import Output

if TYPE_CHECKING:
    from fabstir.cli.costs import CommandCost
    from fabstir.sdk.sdk import FabstirSDK

F = TypeVar("F", bound=Callable[..., Any])

ENV_HOME: Final = "FABSTIR_HOME"
ENV_NETWORK: Final = "FABSTIR_NETWORK"
ENV_ACCOUNT: Final = "FABSTIR_ACCOUNT"
ENV_KEY_FILE: Final = "FABSTIR_KEY_FILE"
ENV_RPC_URL: Final = "FABSTIR_RPC_URL"
ENV_BASE_SEPOLIA_RPC: Final = "BASE_SEPOLIA_RPC_URL"
ENV_STORAGE_URL: Final = "FABSTIR_STORAGE_URL"

BASE_SEPOLIA_CHAIN_ID: Final = 84532
BASE_SEPOLIA_PUBLIC_RPC: Final = "https://sepolia.base.org"
#: Chain ids of development chains: test accounts allowed, no confirmation asked.
LOCAL_CHAIN_IDS: Final = frozenset({31337, 1337})
NETWORK_NAMES: Final = ("local", "base-sepolia")

_TEST_ACCOUNT = re.compile(r"(?:test:|TEST::)(\d+)", re.IGNORECASE)
_ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_HEX_KEY = re.compile(r"(?:0x)?([0-9a-fA-F]{64})")


class CliError(click.ClickException):
    """A user error: one line on stderr, exit status 1."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def one_line(text: object) -> str:
    """`text` on one line (multi-line reasons are joined with '; ')."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return "; ".join(lines)


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the user (or their chain) got something wrong": they
    end the command with a one-line reason instead of a traceback."""
    from fabstir.chain.client import ChainError, ChainUnavailable, TxPending
    from fabstir.chain.deploy import DeployError
    from fabstir.chain.deployments import DeploymentError
    from fabstir.chain.local import LocalChainError
    from fabstir.chain.logscan import LogScanError
    from fabstir.chain.params import ParamsError
    from fabstir.chain.seed import NotLocalChain
    from fabstir.demo import DemoError
    from fabstir.host.config import ConfigError
    from fabstir.models import ModelError
    from fabstir.sdk.errors import SDKError

    return (
        SDKError,
        ChainError,
        ChainUnavailable,
        TxPending,
        LogScanError,
        DeployError,
        DeploymentError,
        LocalChainError,
        ParamsError,
        NotLocalChain,
        ModelError,
        DemoError,
        ConfigError,
        OSError,
    )


def is_user_error(exc: BaseException) -> bool:
    if isinstance(exc, user_error_types()):
        return True
    # ape's errors (deploy): a failed connection, a rejected transaction, ...
    module = type(exc).__module__
    return module == "ape" or module.startswith(("ape.", "ape_", "requests."))


def describe(exc: BaseException) -> str:
    """The one-line reason printed for a user error."""
    from fabstir.sdk.errors import SDKError

    if isinstance(exc, SDKError):
        if exc.code.value == "CONTRACT_NOT_CONFIGURED":
            return f"{one_line(exc)} -- deploy with `fabstir deploy`"
        return one_line(exc)
    text = one_line(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__module__.startswith("ape") else text


# ------------------------------------------------------------------- places


def home_dir() -> Path:
    """$FABSTIR_HOME, else ./.fabstir (chain state; client storage when set)."""
    return Path(os.environ.get(ENV_HOME) or ".fabstir").expanduser().absolute()


def chain_dir() -> Path:
    return home_dir() / "chain"


def storage_dir() -> Path | None:
    """Client storage: $FABSTIR_HOME/storage when $FABSTIR_HOME is set, else the
    SDK's default (~/.fabstir/storage), so sessions resume from any directory."""
    home = os.environ.get(ENV_HOME)
    return Path(home).expanduser().absolute() / "storage" if home else None


# ----------------------------------------------------------------- networks


@dataclass(frozen=True)
class Network:
    """A resolved network: where its RPC is and which chain it serves."""

    name: str
    rpc_url: str = field(repr=False)
    chain_id: int

    @property
    def is_local(self) -> bool:
        return self.chain_id in LOCAL_CHAIN_IDS

    @property
    def label(self) -> str:
        return f"{self.name} (chain {self.chain_id})"

    def to_dict(self) -> dict[str, Any]:
        return {"network": self.name, "chain_id": self.chain_id, "local": self.is_local}


def redact_url(url: str) -> str:
    """scheme://host[:port] only: provider URLs carry API keys in paths and queries."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}"


def check_network_spec(value: str) -> str:
    """`local`, `base-sepolia` or an http(s) URL; anything else is a usage error."""
    spec = value.strip()
    lowered = spec.lower()
    if lowered in ("base-sepolia", "base:sepolia", "base:sepolia:node"):
        return "base-sepolia"
    if lowered in ("local", "ethereum:local", "ethereum:local:foundry"):
        return "local"
    if lowered.startswith(("http://", "https://")) and urlsplit(spec).hostname:
        return spec
    raise click.BadParameter(
        f"{value!r} is not a network: use local, base-sepolia or an http(s):// RPC URL",
        param_hint="'--network'",
    )


def rpc_chain_id(url: str, display: str, timeout: float = 10.0) -> int:
    """Ask the RPC for its chain id, with a one-line reason when it cannot.

    A public RPC throttles (429 with Retry-After) or hiccups (5xx, a cut answer):
    those are retried, honouring Retry-After; nothing listening fails at once.
    """
    from web3.types import RPCEndpoint

    from fabstir.chain.rpc import FailoverHTTPProvider, RpcRetry, RpcUnavailable

    provider = FailoverHTTPProvider(
        url, timeout=timeout, retry=RpcRetry(attempts=6, max_delay=2.0, max_retry_after=10.0)
    )
    try:
        answer = provider.make_request(RPCEndpoint("eth_chainId"), [])
    except RpcUnavailable:
        # The provider's own message names the URL (which may hold an API key).
        reason = provider.failures[-1][1] if provider.failures else "no answer"
        if reason.startswith("HTTP "):  # something answered, but not as an RPC
            raise CliError(f"the RPC of {display} did not answer eth_chainId: {reason}") from None
        raise CliError(f"cannot reach the RPC of {display}: {reason}") from None
    try:
        return int(answer["result"], 16)
    except (KeyError, TypeError, ValueError):
        raise CliError(
            f"the RPC of {display} did not answer eth_chainId: {answer.get('error', answer)}"
        ) from None


def resolve_network(spec: str) -> Network:
    """The network `spec` names, with the chain id its RPC reports."""
    spec = check_network_spec(spec)
    if spec == "local":
        url = os.environ.get(ENV_RPC_URL)
        if not url:
            info = LocalChain(chain_dir()).status()
            if info is None:
                raise CliError(
                    f"no local chain is running (state dir {chain_dir()}): start one with "
                    f"`fabstir chain up`, or set {ENV_RPC_URL}, or pass --network URL"
                )
            url = info.rpc_url
        display = f"local ({redact_url(url)})"
        name = "local"
    elif spec == "base-sepolia":
        url = os.environ.get(ENV_BASE_SEPOLIA_RPC) or BASE_SEPOLIA_PUBLIC_RPC
        name = display = "base-sepolia"
    else:
        url = spec
        name = display = redact_url(url)
    chain_id = rpc_chain_id(url, display)
    if spec == "base-sepolia" and chain_id != BASE_SEPOLIA_CHAIN_ID:
        raise CliError(
            f"${ENV_BASE_SEPOLIA_RPC} serves chain {chain_id}, not Base Sepolia "
            f"({BASE_SEPOLIA_CHAIN_ID})"
        )
    return Network(name, url, chain_id)


# ----------------------------------------------------------------- accounts


def check_account_spec(value: str) -> str:
    """`test:N`, `TEST::N` or an ape alias; anything else is a usage error."""
    spec = value.strip()
    match = _TEST_ACCOUNT.fullmatch(spec)
    if match:
        return f"test:{int(match[1])}"
    if _HEX_KEY.fullmatch(spec):
        raise click.BadParameter(
            "that looks like a private key: secrets never go on the command line; put it in "
            f"a file named by ${ENV_KEY_FILE}, or import it with `ape accounts import`",
            param_hint="'--account'",
        )
    if re.fullmatch(r"0x[0-9a-fA-F]{40}", spec):
        raise click.BadParameter(
            "an address cannot sign: use test:N, an ape account alias, or $" + ENV_KEY_FILE,
            param_hint="'--account'",
        )
    if spec.lower().startswith("test:"):
        raise click.BadParameter(
            f"{value!r}: a test account is test:N with N a number (0-9 are funded on anvil)",
            param_hint="'--account'",
        )
    if not _ALIAS.fullmatch(spec):
        raise click.BadParameter(
            f"{value!r} is neither test:N nor an ape account alias (secrets never go on the "
            f"command line: use an ape account or ${ENV_KEY_FILE})",
            param_hint="'--account'",
        )
    return spec


def test_account(index: int) -> LocalAccount:
    """Anvil's (and ape's) standard test account `index`."""
    account: LocalAccount = Account.from_key(test_private_key(index))
    return account


def ape_data_folder() -> Path:
    return Path(os.environ.get("APE_DATA_FOLDER") or Path.home() / ".ape").expanduser()


def ape_account(alias: str) -> LocalAccount:
    """Decrypt ape's keystore for `alias` (passphrase from the environment or a prompt)."""
    path = ape_data_folder() / "accounts" / f"{alias}.json"
    try:
        keystore = json.loads(path.read_text())
    except FileNotFoundError:
        raise CliError(
            f"no ape account {alias!r} ({path} does not exist); see `ape accounts list`, "
            "or use test:N on a local chain"
        ) from None
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read ape account {alias!r} from {path}: {exc}") from None
    passphrase = os.environ.get(f"APE_ACCOUNTS_{alias}_PASSPHRASE")
    if passphrase is None:
        passphrase = click.prompt(
            f"Passphrase for ape account {alias!r}", hide_input=True, err=True
        )
    try:
        key = Account.decrypt(keystore, passphrase)
    except ValueError:
        raise CliError(f"wrong passphrase for ape account {alias!r}") from None
    account: LocalAccount = Account.from_key(key)
    return account


def key_file_account(path_text: str) -> LocalAccount:
    """The account whose hex key is in the file named by $FABSTIR_KEY_FILE."""
    path = Path(path_text).expanduser()
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise CliError(f"cannot read ${ENV_KEY_FILE} ({path}): {exc.strerror}") from None
    match = _HEX_KEY.fullmatch(text)
    if not match:
        raise CliError(f"${ENV_KEY_FILE} ({path}) must hold one 32-byte hex private key")
    account: LocalAccount = Account.from_key("0x" + match[1])
    return account


def load_account(spec: str | None, network: Network | None) -> LocalAccount | None:
    """The signer `spec` names (None: $FABSTIR_KEY_FILE, else None). Test accounts
    are refused on chains that are not local."""
    if spec is None:
        path = os.environ.get(ENV_KEY_FILE)
        return key_file_account(path) if path else None
    spec = check_account_spec(spec)
    match = _TEST_ACCOUNT.fullmatch(spec)
    if match:
        if network is not None and not network.is_local:
            raise CliError(
                f"--account {spec}: test accounts are for local chains only, and "
                f"{network.label} is not local; use an ape account alias or ${ENV_KEY_FILE}"
            )
        return test_account(int(match[1]))
    return ape_account(spec)


# -------------------------------------------------------------------- state


@dataclass
class CliState:
    """Options of this invocation (the main group's, overridden per command)."""

    json: bool = False
    debug: bool = False
    network_spec: str = "local"
    account_spec: str | None = None
    yes: bool = False
    _network: Network | None = None
    _account: LocalAccount | None = None
    _account_loaded: bool = False

    @property
    def out(self) -> Output:
        return Output(self.json)

    def network(self) -> Network:
        if self._network is None:
            self._network = resolve_network(self.network_spec)
        return self._network

    def account(self, *, required: bool = True, default_test: int | None = None) -> LocalAccount:
        """The signer. `default_test`: the test account used on local chains when
        none is configured (deploy uses 0, as `ape run deploy` does)."""
        if not self._account_loaded:
            network = self.network()
            account = load_account(self.account_spec, network)
            if account is None and default_test is not None and network.is_local:
                account = test_account(default_test)
            self._account, self._account_loaded = account, True
        if self._account is None:
            if required:
                raise CliError(
                    f"this command signs: pass --account test:N (local chains), --account "
                    f"ALIAS (an ape account), or set ${ENV_KEY_FILE}"
                )
            raise CliError("no account given")
        return self._account

    def maybe_account(self) -> LocalAccount | None:
        if self.account_spec is None and not os.environ.get(ENV_KEY_FILE):
            return None
        return self.account()

    def address(self, given: str | None) -> str:
        """`given`, else the configured account's address."""
        if given:
            return given
        account = self.maybe_account()
        if account is None:
            raise CliError(
                "say whose: pass an address, or --account / $FABSTIR_KEY_FILE for your own"
            )
        return str(account.address)

    def sdk(self, *, sign: bool = False) -> FabstirSDK:
        """An SDK on the network (authenticated when `sign`)."""
        from fabstir.sdk.config import SDKConfig
        from fabstir.sdk.sdk import FabstirSDK

        network = self.network()
        config = SDKConfig(
            rpc_url=network.rpc_url,
            chain_id=network.chain_id,
            storage_url=os.environ.get(ENV_STORAGE_URL) or None,
            storage_dir=storage_dir(),
            debug=self.debug,
            rpc_retries=3,
        )
        sdk = FabstirSDK(config)
        if sign or self.account_spec is not None or os.environ.get(ENV_KEY_FILE):
            sdk.authenticate(self.account())
        return sdk

    def confirm(self, action: str, cost: CommandCost | None = None) -> None:
        """Ask before a transaction on a live network (unless --yes); with `cost`, the
        question shows what it costs at most (L2 gas and Base's L1 data fee)."""
        network = self.network()
        if network.is_local or self.yes:
            return
        priced = f" ({cost.describe()})" if cost is not None else ""
        if not click.confirm(f"{action} on {network.label}{priced}?", default=False, err=True):
            raise CliError("not confirmed; nothing was sent (pass --yes to skip the question)")


def state() -> CliState:
    """The current invocation's state."""
    ctx = click.get_current_context()
    obj = ctx.find_object(CliState)
    if obj is None:
        obj = ctx.ensure_object(CliState)
    return obj


# ---------------------------------------------------------- shared options


def _set(attr: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is None or value is False:
            return
        obj = ctx.find_object(CliState) or ctx.ensure_object(CliState)
        if attr == "network_spec":
            value = check_network_spec(value)
        elif attr == "account_spec":
            value = check_account_spec(value)
        setattr(obj, attr, value)

    return callback


# Each shared option is declared once; the decorators below pick what a command takes.
_NETWORK = click.option(
    "--network",
    metavar="NETWORK",
    expose_value=False,
    callback=_set("network_spec"),
    help="local (default), base-sepolia, or an http(s):// RPC URL.",
)
_ACCOUNT = click.option(
    "--account",
    metavar="ACCOUNT",
    expose_value=False,
    callback=_set("account_spec"),
    help=f"test:N (local chains), an ape account alias, or none for ${ENV_KEY_FILE}.",
)
_JSON = click.option(
    "--json",
    "json_flag",
    is_flag=True,
    expose_value=False,
    callback=_set("json"),
    help="One JSON document on stdout.",
)
_YES = click.option(
    "--yes",
    "-y",
    is_flag=True,
    expose_value=False,
    callback=_set("yes"),
    help="Do not ask before sending on a live network.",
)


def _apply(func: F, *decorators: Callable[[F], F]) -> F:
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def common_options(func: F) -> F:
    """--network/--account/--json/--yes on a command (they override the main
    group's, so `fabstir --json balance` and `fabstir balance --json` both work)."""
    return _apply(func, _NETWORK, _ACCOUNT, _JSON, _YES)


def read_options(func: F) -> F:
    """--network/--json only (commands that neither sign nor send)."""
    return _apply(func, _NETWORK, _JSON)


def json_option(func: F) -> F:
    """--json only (offline commands)."""
    return _apply(func, _JSON)
