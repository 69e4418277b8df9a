"""SDKConfig: where the chain is, which contracts, where storage lives, how loud to log.

The reference's `FabstirSDKCoreConfig` in Python form. Everything has a
default, so `FabstirSDK()` works against a chain whose deployment file
(`deployments/<chainId>.json`) is present:

- rpc_url: the argument, else $FABSTIR_RPC_URL, else a public endpoint for
  known chains (Base Sepolia: https://sepolia.base.org, local: 127.0.0.1:8545).
  Several URLs, comma-separated, fail over in order (fabstir.chain.rpc).
- chain_id: 84532 (Base Sepolia) unless given or $FABSTIR_CHAIN_ID is set.
- contract_addresses: merged over the deployment file for `chain_id`; the
  reference's camelCase keys (jobMarketplace, usdcToken, ...) and the
  deployment's names (JobMarketplace, USDC, ...) are both accepted. Contracts
  missing from both are discovered on chain from the JobMarketplace (it names
  its registries and ledgers), so the reference's example that gives only
  jobMarketplace and usdcToken works.
- storage_url / storage_dir: an IPFS HTTP API URL or a directory for the
  encrypted store (the reference's s5Config.portalUrl maps to storage_url).
- debug / log_level: `debug=True`, or $FABSTIR_SDK_DEBUG set to 1/true/yes,
  sets the `fabstir` loggers to DEBUG. log_level takes logging names and the
  reference's 'verbose' (= DEBUG).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from fabstir.protocol.receipts import is_valid_address
from fabstir.sdk.constants import BASE_SEPOLIA_CHAIN_ID, DEFAULT_CHAIN_ID, LOCAL_CHAIN_ID
from fabstir.sdk.errors import SDKError, SDKErrorCode

ENV_RPC_URL: Final = "FABSTIR_RPC_URL"
ENV_CHAIN_ID: Final = "FABSTIR_CHAIN_ID"
ENV_STORAGE_URL: Final = "FABSTIR_STORAGE_URL"
ENV_DEBUG: Final = "FABSTIR_SDK_DEBUG"

#: Public RPC endpoints used when none is configured.
DEFAULT_RPC_URLS: Final[Mapping[int, str]] = {
    BASE_SEPOLIA_CHAIN_ID: "https://sepolia.base.org",
    LOCAL_CHAIN_ID: "http://127.0.0.1:8545",
}

#: The reference's contractAddresses keys (and a few spellings) -> deployment names.
CONTRACT_ALIASES: Final[Mapping[str, str]] = {
    "jobmarketplace": "JobMarketplace",
    "marketplace": "JobMarketplace",
    "noderegistry": "NodeRegistry",
    "modelregistry": "ModelRegistry",
    "proofsystem": "ProofSystem",
    "hostearnings": "HostEarnings",
    "treasury": "Treasury",
    "treasurymanager": "Treasury",
    "fabtoken": "FABToken",
    "fab": "FABToken",
    "usdctoken": "USDC",
    "usdc": "USDC",
    "mockusdc": "USDC",
}

#: Every contract the SDK can address.
CONTRACT_NAMES: Final = (
    "JobMarketplace",
    "NodeRegistry",
    "ModelRegistry",
    "ProofSystem",
    "HostEarnings",
    "Treasury",
    "FABToken",
    "USDC",
)

_TRUE: Final = frozenset({"1", "true", "yes", "on", "verbose", "debug"})
_LEVELS: Final[Mapping[str, int]] = {
    "verbose": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "silent": logging.CRITICAL + 10,
}


def canonical_contract_name(name: str) -> str:
    """`jobMarketplace`, `job_marketplace`, `JobMarketplace` -> `JobMarketplace`."""
    if not isinstance(name, str):
        raise SDKError(SDKErrorCode.INVALID_ARGUMENT, f"contract name must be a string: {name!r}")
    key = name.replace("_", "").replace("-", "").lower()
    if key in CONTRACT_ALIASES:
        return CONTRACT_ALIASES[key]
    for known in CONTRACT_NAMES:
        if known.lower() == key:
            return known
    raise SDKError(
        SDKErrorCode.INVALID_ARGUMENT,
        f"unknown contract {name!r}; known: {', '.join(CONTRACT_NAMES)} "
        "(or the reference's camelCase names, e.g. jobMarketplace, usdcToken)",
    )


def _env_debug() -> bool:
    return os.environ.get(ENV_DEBUG, "").strip().lower() in _TRUE


@dataclass(frozen=True)
class SDKConfig:
    """Configuration of a FabstirSDK (see the module docstring for defaults).

    `contract_addresses` holds only what the caller gave (normalised names,
    checksummed); the SDK fills the rest from the deployment file and the
    chain. `start_block` is where event scans (sessions of a user/host)
    begin; None means the deployment's first block, else 0.
    """

    rpc_url: str | None = None
    chain_id: int = DEFAULT_CHAIN_ID
    contract_addresses: Mapping[str, str] = field(default_factory=dict)
    storage_url: str | None = None
    storage_dir: str | Path | None = None
    debug: bool = False
    log_level: str | int | None = None
    deployments_dir: str | Path | None = None
    use_deployment_file: bool = True
    start_block: int | None = None
    rpc_timeout: float = 30.0
    rpc_retries: int = 6
    receipt_timeout: float = 120.0
    #: Most blocks one eth_getLogs call asks for (public RPCs cap the range).
    log_block_range: int = 10_000

    def __post_init__(self) -> None:
        chain_id = self.chain_id
        if isinstance(chain_id, bool) or not isinstance(chain_id, int) or chain_id <= 0:
            raise SDKError(
                SDKErrorCode.INVALID_ARGUMENT, f"chain_id must be a positive int, got {chain_id!r}"
            )
        if self.rpc_url is not None and (
            not isinstance(self.rpc_url, str)
            or not self.rpc_url.startswith(("http://", "https://"))
        ):
            raise SDKError(
                SDKErrorCode.INVALID_ARGUMENT,
                f"rpc_url must be an http(s):// URL, got {self.rpc_url!r}",
            )
        if not isinstance(self.contract_addresses, Mapping):
            raise SDKError(
                SDKErrorCode.INVALID_ARGUMENT,
                "contract_addresses must be a mapping name -> address",
            )
        addresses: dict[str, str] = {}
        for key, value in self.contract_addresses.items():
            if value is None:
                continue
            name = canonical_contract_name(key)
            if not is_valid_address(value):
                raise SDKError(
                    SDKErrorCode.INVALID_ADDRESS,
                    f"contract_addresses[{key!r}] is not a 0x address (or has a bad "
                    f"checksum): {value!r}",
                )
            from eth_utils.address import to_checksum_address

            addresses[name] = to_checksum_address(value)
        object.__setattr__(self, "contract_addresses", addresses)
        if self.start_block is not None and (
            isinstance(self.start_block, bool)
            or not isinstance(self.start_block, int)
            or self.start_block < 0
        ):
            raise SDKError(SDKErrorCode.INVALID_ARGUMENT, "start_block must be an int >= 0")
        if isinstance(self.rpc_retries, bool) or not isinstance(self.rpc_retries, int):
            raise SDKError(SDKErrorCode.INVALID_ARGUMENT, "rpc_retries must be an int >= 1")
        if self.rpc_retries < 1 or self.log_block_range < 1:
            raise SDKError(
                SDKErrorCode.INVALID_ARGUMENT, "rpc_retries and log_block_range must be >= 1"
            )
        self.logging_level()  # validates log_level

    @classmethod
    def from_value(
        cls, value: SDKConfig | Mapping[str, Any] | None = None, **overrides: Any
    ) -> SDKConfig:
        """A config from an SDKConfig, a mapping with the reference's camelCase
        keys (rpcUrl, chainId, contractAddresses, s5Config.portalUrl, debug,
        logLevel) or snake_case keys, or None (environment and defaults)."""
        if value is None:
            base = cls.from_env()
        elif isinstance(value, SDKConfig):
            base = value
        elif isinstance(value, Mapping):
            base = cls._from_mapping(value)
        else:
            raise SDKError(
                SDKErrorCode.INVALID_ARGUMENT,
                f"config must be an SDKConfig or a mapping: {value!r}",
            )
        return replace(base, **overrides) if overrides else base

    @classmethod
    def _from_mapping(cls, value: Mapping[str, Any]) -> SDKConfig:
        from fabstir.sdk.types import _fields_of

        known = (
            "rpc_url",
            "chain_id",
            "contract_addresses",
            "storage_url",
            "storage_dir",
            "debug",
            "log_level",
            "deployments_dir",
            "use_deployment_file",
            "start_block",
            "rpc_timeout",
            "rpc_retries",
            "receipt_timeout",
            "log_block_range",
            "s5_config",
        )
        data = _fields_of(value, known, "SDK config", aliases={"s5Config": "s5_config"})
        s5 = data.pop("s5_config", None)
        if s5 is not None:
            if not isinstance(s5, Mapping):
                raise SDKError(SDKErrorCode.INVALID_ARGUMENT, "s5Config must be a mapping")
            portal = s5.get("portalUrl", s5.get("portal_url"))
            if portal and "storage_url" not in data:
                data["storage_url"] = portal
        env = cls.from_env()
        data.setdefault("rpc_url", env.rpc_url)
        data.setdefault("chain_id", env.chain_id)
        data.setdefault("storage_url", env.storage_url)
        data.setdefault("debug", env.debug)
        return cls(**data)

    @classmethod
    def from_env(cls) -> SDKConfig:
        """Defaults, with $FABSTIR_RPC_URL, $FABSTIR_CHAIN_ID, $FABSTIR_STORAGE_URL
        and $FABSTIR_SDK_DEBUG applied."""
        chain_text = os.environ.get(ENV_CHAIN_ID, "").strip()
        try:
            chain_id = int(chain_text) if chain_text else DEFAULT_CHAIN_ID
        except ValueError:
            raise SDKError(
                SDKErrorCode.INVALID_ARGUMENT, f"${ENV_CHAIN_ID} must be an integer: {chain_text!r}"
            ) from None
        return cls(
            rpc_url=os.environ.get(ENV_RPC_URL) or None,
            chain_id=chain_id,
            storage_url=os.environ.get(ENV_STORAGE_URL) or None,
            debug=_env_debug(),
        )

    def resolved_rpc_url(self) -> str:
        """rpc_url, else $FABSTIR_RPC_URL, else the chain's public default."""
        url = self.rpc_url or os.environ.get(ENV_RPC_URL) or DEFAULT_RPC_URLS.get(self.chain_id)
        if not url:
            raise SDKError(
                SDKErrorCode.NETWORK_ERROR,
                f"no RPC URL for chain {self.chain_id}; pass rpc_url or set ${ENV_RPC_URL}",
            )
        return url

    def storage_location(self) -> str | Path | None:
        """What `open_store` gets: storage_url, else storage_dir, else None (default dir)."""
        if self.storage_url:
            return self.storage_url
        if self.storage_dir is not None:
            return Path(self.storage_dir).expanduser()
        return None

    def logging_level(self) -> int | None:
        """The level for the `fabstir` loggers, or None to leave them alone."""
        level = self.log_level
        if isinstance(level, bool):
            raise SDKError(
                SDKErrorCode.INVALID_ARGUMENT, f"log_level must be a name or int: {level!r}"
            )
        if isinstance(level, int):
            return level
        if isinstance(level, str):
            if level.lower() not in _LEVELS:
                raise SDKError(
                    SDKErrorCode.INVALID_ARGUMENT,
                    f"log_level {level!r} unknown; use one of {', '.join(_LEVELS)}",
                )
            return _LEVELS[level.lower()]
        if level is not None:
            raise SDKError(
                SDKErrorCode.INVALID_ARGUMENT, f"log_level must be a name or int: {level!r}"
            )
        if self.debug or _env_debug():
            return logging.DEBUG
        return None
