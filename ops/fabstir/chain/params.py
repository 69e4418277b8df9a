"""Deployment parameters: one checked-in file per network under deployments/params/.

A params file is JSON with a free-text "comment" (documentation), the network it is
meant for ("network", "chain_id"), the contract parameters (the DeployParams fields),
the payment tokens ("tokens", see TokenSpec), who gets which role ("roles") and how
live transactions are priced ("gas").

The token table is the only place a payment token is named: deploy, verification,
the deployment record, the SDK and the CLI all read it, so a new token is one more
row in the params file.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[3]
PARAMS_DIR = REPO_ROOT / "deployments" / "params"

# Keys of a params file that are not contract parameters.
_FILE_KEYS = {"comment", "network", "chain_id", "roles", "gas"}
# Keys that the token table replaced; named in the error so an old file is easy to fix.
_MOVED_TO_TOKENS = {"eth_min_deposit", "usdc_min_deposit", "usdc_address"}

# Which params file `deploy` picks by default on a chain.
DEFAULT_PARAMS_BY_CHAIN = {31337: "local", 1337: "local", 84532: "base-sepolia"}

DEPLOYER = "deployer"

# JobMarketplace.MIN_DURATION and MAX_DURATION (seconds).
MIN_SESSION_DURATION = 60
MAX_SESSION_DURATION = 30 * 24 * 3600


class ParamsError(ValueError):
    """A params file is malformed or does not fit the chain it is used on."""


# TokenSpec.address values that are not addresses.
NATIVE = "native"
MOCK = "mock"
# A symbol is also a deployment-record key and a CLI argument: keep it plain.
_SYMBOL = re.compile(r"[A-Za-z][A-Za-z0-9]{0,10}")
# Names the SDK and CLI already give a meaning (the staking token, the contracts).
_RESERVED_SYMBOLS = {
    "fab",
    "fabtoken",
    "jobmarketplace",
    "noderegistry",
    "modelregistry",
    "proofsystem",
    "hostearnings",
    "treasury",
}
# JobMarketplace.TokenConfig.minDeposit is a uint96; amounts parse up to 77 decimals.
_MAX_MIN_DEPOSIT = 2**96 - 1
_MAX_DECIMALS = 77


@dataclass(frozen=True)
class TokenSpec:
    """One payment token of the params file's "tokens" table.

    address: "native" for the chain's own coin (the marketplace's address(0); exactly
    one row, 18 decimals), "mock" to deploy a mintable MockERC20 with this symbol and
    decimals (local chains only), or the 0x address of an existing ERC-20.
    min_deposit: least escrow per session, in the token's smallest unit.
    """

    symbol: str
    decimals: int
    min_deposit: int
    address: str

    @property
    def native(self) -> bool:
        return self.address == NATIVE

    @property
    def mock(self) -> bool:
        return self.address == MOCK

    @property
    def external(self) -> bool:
        """An existing ERC-20 named by address (never deployed here)."""
        return not (self.native or self.mock)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> TokenSpec:
        if not isinstance(data, dict):
            raise ParamsError(f"{where} must be an object, got {data!r}")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known - {"comment"}
        missing = known - set(data)
        if unknown or missing:
            raise ParamsError(
                f"{where}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)};"
                f" a token has {', '.join(sorted(known))}"
            )
        symbol, decimals, minimum, address = (
            data["symbol"],
            data["decimals"],
            data["min_deposit"],
            data["address"],
        )
        if not isinstance(symbol, str) or not _SYMBOL.fullmatch(symbol):
            raise ParamsError(
                f"{where}.symbol must be a letter then up to 10 letters or digits, got {symbol!r}"
            )
        if symbol.lower() in _RESERVED_SYMBOLS:
            raise ParamsError(f"{where}.symbol {symbol!r} is reserved (a contract's name)")
        if not _is_uint(decimals) or decimals > _MAX_DECIMALS:
            raise ParamsError(f"{where}.decimals must be an integer 0..{_MAX_DECIMALS}")
        if not _is_uint(minimum) or minimum > _MAX_MIN_DEPOSIT:
            raise ParamsError(f"{where}.min_deposit must be an integer 0..2**96-1")
        if address not in (NATIVE, MOCK) and not _is_address(address):
            raise ParamsError(
                f"{where}.address must be {NATIVE!r}, {MOCK!r} or a 0x address, got {address!r}"
            )
        if address == NATIVE and decimals != 18:
            raise ParamsError(f"{where}: the native coin has 18 decimals, not {decimals}")
        return cls(symbol, decimals, minimum, address)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# What a params file without a "tokens" table gets (and what tests deploy by default):
# ETH and a mock 6-decimal stablecoin, as deployments/params/local.json lists them.
DEFAULT_TOKENS = (
    TokenSpec("ETH", 18, 5 * 10**14, NATIVE),
    TokenSpec("USDC", 6, 1_000_000, MOCK),
)


def parse_tokens(data: Any) -> tuple[TokenSpec, ...]:
    """The "tokens" table of a params file: exactly one native row, unique symbols."""
    if not isinstance(data, list) or not data:
        raise ParamsError('"tokens" must be a non-empty list of token objects')
    tokens = tuple(TokenSpec.from_dict(t, f"tokens[{i}]") for i, t in enumerate(data))
    natives = [t.symbol for t in tokens if t.native]
    if len(natives) != 1:
        raise ParamsError(
            f'"tokens" needs exactly one row with address "{NATIVE}" (the chain\'s coin),'
            f" found {len(natives)}"
        )
    seen: set[str] = set()
    for t in tokens:
        if t.symbol.lower() in seen:
            raise ParamsError(f'"tokens" lists {t.symbol!r} twice')
        seen.add(t.symbol.lower())
    addresses = [t.address.lower() for t in tokens if t.external]
    if len(set(addresses)) != len(addresses):
        raise ParamsError('"tokens" lists one address under two symbols')
    return tokens


@dataclass(frozen=True)
class DeployParams:
    """Everything `deploy` sets, in the smallest unit of each token."""

    fee_bps: int = 1000
    settlement_window: int = 3600
    min_stake: int = 1000 * 10**18
    unbonding_period: int = 7 * 24 * 3600
    # Most of a stake one slash may take (basis points); slashed FAB is burned.
    max_slash_bps: int = 5000
    fab_supply: int = 10**9 * 10**18
    # A live FAB address; None means deploy a new FABToken.
    fab_address: str | None = None
    # The payment tokens (see TokenSpec), in the order the marketplace lists them.
    tokens: tuple[TokenSpec, ...] = DEFAULT_TOKENS

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeployParams:
        known = {f.name for f in fields(cls)}
        moved = set(data) & _MOVED_TO_TOKENS
        if moved:
            raise ParamsError(
                f'{sorted(moved)} moved into the "tokens" table (symbol, decimals,'
                ' address or "native"/"mock", min_deposit); see deployments/params/local.json'
            )
        unknown = set(data) - known - _FILE_KEYS
        if unknown:
            raise ParamsError(f"unknown deployment parameters: {sorted(unknown)}")
        values: dict[str, Any] = {}
        for name in known & set(data):
            value = data[name]
            if name == "tokens":
                values[name] = parse_tokens(value)
                continue
            if name.endswith("_address"):
                if value is not None and not _is_address(value):
                    raise ParamsError(f"{name} must be a 0x address or null, got {value!r}")
            elif not _is_uint(value):
                raise ParamsError(f"{name} must be a non-negative integer, got {value!r}")
            values[name] = value
        params = cls(**values)
        params.validate()
        return params

    def validate(self) -> None:
        """The constructors' own checks, so a bad file fails before anything is sent."""
        # JobMarketplace opens sessions of at most unbonding_period - settlement_window
        # (a leaving host's stake must outlive every session it can settle); at least
        # one MIN_DURATION session must fit.
        if self.unbonding_period < self.settlement_window + MIN_SESSION_DURATION:
            raise ParamsError(
                f"unbonding_period ({self.unbonding_period} s) must be at least "
                f"settlement_window + {MIN_SESSION_DURATION} s "
                f"({self.settlement_window + MIN_SESSION_DURATION} s): sessions may last "
                "unbonding_period - settlement_window at most"
            )
        if not 1 <= self.max_slash_bps <= 10_000:
            raise ParamsError(f"max_slash_bps must be 1..10000, got {self.max_slash_bps}")

    @property
    def max_session_duration(self) -> int:
        """The longest session the marketplace deployed with these params opens."""
        return min(MAX_SESSION_DURATION, self.unbonding_period - self.settlement_window)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tokens"] = [t.to_dict() for t in self.tokens]
        return data

    @property
    def native_token(self) -> TokenSpec:
        """The chain's coin (the marketplace's address(0); its constructor takes its minimum)."""
        return next(t for t in self.tokens if t.native)

    @property
    def erc20_tokens(self) -> tuple[TokenSpec, ...]:
        """The ERC-20 rows, in table order (the order the marketplace lists them)."""
        return tuple(t for t in self.tokens if not t.native)


ROLE_NAMES = (
    "admin",
    "curator",
    "slasher",
    "treasurer",
    "pauser",
    "token_admin",
)


@dataclass(frozen=True)
class RoleConfig:
    """Who holds each role: a 0x address, or "deployer" for the deploying account.

    admin: DEFAULT_ADMIN_ROLE on ModelRegistry, NodeRegistry, Treasury, JobMarketplace.
    The deploy always starts with the deployer as admin (it has to grant the rest);
    an admin other than the deployer is reached with the role rotation runbook.
    """

    admin: str = DEPLOYER
    curator: str = DEPLOYER
    slasher: str = DEPLOYER
    treasurer: str = DEPLOYER
    pauser: str = DEPLOYER
    token_admin: str = DEPLOYER

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoleConfig:
        unknown = set(data) - set(ROLE_NAMES) - {"comment"}
        if unknown:
            raise ParamsError(f"unknown roles: {sorted(unknown)}; known: {', '.join(ROLE_NAMES)}")
        for name in ROLE_NAMES:
            value = data.get(name, DEPLOYER)
            if value != DEPLOYER and not _is_address(value):
                raise ParamsError(f"role {name} must be a 0x address or 'deployer', got {value!r}")
        return cls(**{k: v for k, v in data.items() if k in ROLE_NAMES})

    def resolve(self, deployer: str) -> dict[str, str]:
        """Role name -> checksummed address, with "deployer" replaced by `deployer`."""
        from eth_utils.address import to_checksum_address

        return {
            name: to_checksum_address(deployer if value == DEPLOYER else value)
            for name, value in ((n, getattr(self, n)) for n in ROLE_NAMES)
        }


@dataclass(frozen=True)
class GasConfig:
    """How live transactions are priced (EIP-1559). Ignored on local chains.

    max_fee = latest base fee * base_fee_multiplier + max_priority_fee_wei, so a
    transaction still lands if the base fee rises that much before it is mined.
    """

    max_priority_fee_wei: int = 1_000_000  # 0.001 gwei: plenty on Base
    base_fee_multiplier: int = 2
    confirmations: int = 1
    # Refuse if a transaction would be priced above this (a runaway base fee).
    max_fee_cap_wei: int = 10 * 10**9

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GasConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known - {"comment"}
        if unknown:
            raise ParamsError(f"unknown gas settings: {sorted(unknown)}")
        for name in known & set(data):
            if not isinstance(data[name], int) or data[name] < 0:
                raise ParamsError(f"gas.{name} must be a non-negative integer")
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class ParamsFile:
    """One deployments/params/<name>.json."""

    name: str
    chain_id: int
    network: str
    params: DeployParams
    roles: RoleConfig = field(default_factory=RoleConfig)
    gas: GasConfig = field(default_factory=GasConfig)
    comment: str = ""

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> ParamsFile:
        chain_id = data.get("chain_id")
        if not isinstance(chain_id, int):
            raise ParamsError(f"params {name}: chain_id (an integer) is required")
        comment = data.get("comment", "")
        if isinstance(comment, list):
            comment = " ".join(str(c) for c in comment)
        return cls(
            name=name,
            chain_id=chain_id,
            network=str(data.get("network", "")),
            params=DeployParams.from_dict(data),
            roles=RoleConfig.from_dict(data.get("roles", {})),
            gas=GasConfig.from_dict(data.get("gas", {})),
            comment=str(comment),
        )


def _is_uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_address(value: Any) -> bool:
    if not isinstance(value, str) or not value.startswith("0x") or len(value) != 42:
        return False
    try:
        int(value[2:], 16)
    except ValueError:
        return False
    return True


def params_path(name_or_path: str | Path) -> Path:
    """A params file by stem (`local`, `base-sepolia`) or by path."""
    path = Path(name_or_path)
    if path.suffix == ".json" or path.parent != Path("."):
        return path
    return PARAMS_DIR / f"{name_or_path}.json"


def load_params_file(name_or_path: str | Path) -> ParamsFile:
    path = params_path(name_or_path)
    if not path.is_file():
        raise ParamsError(f"no params file {path}")
    return ParamsFile.from_dict(path.stem, json.loads(path.read_text()))


def load_params(name: str) -> DeployParams:
    """Parameters of a network by file stem (e.g. `local`, `base-sepolia`)."""
    return load_params_file(name).params


def default_params_name(chain_id: int) -> str:
    try:
        return DEFAULT_PARAMS_BY_CHAIN[chain_id]
    except KeyError:
        raise ParamsError(
            f"no default params file for chain id {chain_id}; pass --params NAME_OR_PATH"
        ) from None
