"""Deployment parameters: one checked-in file per network under deployments/params/.

A params file is JSON with a free-text "comment" (documentation), the network it is
meant for ("network", "chain_id"), the contract parameters (the DeployParams fields),
who gets which role ("roles") and how live transactions are priced ("gas").
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[3]
PARAMS_DIR = REPO_ROOT / "deployments" / "params"

# Keys of a params file that are not contract parameters.
_FILE_KEYS = {"comment", "network", "chain_id", "roles", "gas"}

# Which params file `deploy` picks by default on a chain.
DEFAULT_PARAMS_BY_CHAIN = {31337: "local", 1337: "local", 84532: "base-sepolia"}

DEPLOYER = "deployer"

# JobMarketplace.MIN_DURATION and MAX_DURATION (seconds).
MIN_SESSION_DURATION = 60
MAX_SESSION_DURATION = 30 * 24 * 3600


class ParamsError(ValueError):
    """A params file is malformed or does not fit the chain it is used on."""


@dataclass(frozen=True)
class DeployParams:
    """Everything `deploy` sets, in the smallest unit of each token."""

    fee_bps: int = 1000
    settlement_window: int = 3600
    min_stake: int = 1000 * 10**18
    unbonding_period: int = 7 * 24 * 3600
    # Most of a stake one slash may take (basis points); slashed FAB is burned.
    max_slash_bps: int = 5000
    eth_min_deposit: int = 5 * 10**14
    usdc_min_deposit: int = 1_000_000
    fab_supply: int = 10**9 * 10**18
    # Live networks name real token addresses; None means deploy a local mock.
    usdc_address: str | None = None
    fab_address: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeployParams:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known - _FILE_KEYS
        if unknown:
            raise ParamsError(f"unknown deployment parameters: {sorted(unknown)}")
        for name in known & set(data):
            value = data[name]
            if name.endswith("_address"):
                if value is not None and not _is_address(value):
                    raise ParamsError(f"{name} must be a 0x address or null, got {value!r}")
            elif not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ParamsError(f"{name} must be a non-negative integer, got {value!r}")
        params = cls(**{k: v for k, v in data.items() if k in known})
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
        return asdict(self)


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
