"""The API reference's types and interfaces, as frozen dataclasses.

Names are the reference's in Python style (`SessionConfig`, `ModelInfo`,
`HostInfo`, ...). Amounts that a person reads are human decimal strings
("0.97"); raw on-chain integers (smallest units) sit beside them where a
program needs them (`*_raw` fields, or fields documented as "smallest units").

Every type that callers build (SessionConfig, ModelSpec, HostMetadata,
HostRegistration) has a `from_value` that also accepts a plain mapping with
the reference's camelCase keys or Python snake_case keys, so a config copied
from the TypeScript docs works as is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Final, Self

# The marketplace's enums and settleBatch item are defined once in the core;
# the SDK's public names for them are these re-exports.
from fabstir.chain.marketplace import ModelStatus as ModelStatus
from fabstir.chain.marketplace import Outcome, Status
from fabstir.chain.marketplace import SettleItem as SettleItem
from fabstir.sdk.constants import (
    DEFAULT_PRICE_PER_TOKEN,
    DEFAULT_PROOF_INTERVAL,
    DEFAULT_SESSION_DURATION,
    MIN_USDC_DEPOSIT,
)
from fabstir.sdk.errors import SDKError, SDKErrorCode

_CAMEL_RE: Final = re.compile(r"(?<!^)(?=[A-Z])")


def _snake(key: str) -> str:
    return _CAMEL_RE.sub("_", key).lower()


def _fields_of(
    value: Mapping[str, Any], allowed: Sequence[str], what: str, aliases: Mapping[str, str] = {}
) -> dict[str, Any]:
    """Normalise camelCase/snake_case keys; refuse unknown ones (typos cost money)."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise _bad(f"{what}: keys must be strings, got {key!r}")
        name = aliases.get(key, _snake(key))
        if name not in allowed:
            raise _bad(f"{what}: unknown field {key!r}; known: {', '.join(allowed)}")
        out[name] = item
    return out


def _bad(message: str) -> SDKError:
    return SDKError(SDKErrorCode.INVALID_ARGUMENT, message)


def _positive_int(
    value: Any, name: str, *, code: SDKErrorCode = SDKErrorCode.INVALID_ARGUMENT
) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SDKError(code, f"{name} must be a positive integer, got {value!r}")
    return int(value)


# --- sessions -----------------------------------------------------------------------


@dataclass(frozen=True)
class SessionConfig:
    """Terms of a session (the reference's SessionConfig).

    deposit_amount: most the session may cost, a human string in the payment
        token ("1.0" = 1 USDC); only whole tokens' worth is escrowed.
    price_per_token: smallest units of the payment token per generated token
        (200 = 0.0002 USDC); at least the host's minimum.
    duration: seconds until the session expires.
    proof_interval: tokens, the most the host streams beyond the newest
        receipt (DESIGN.md: tokens everywhere, never seconds).
    """

    deposit_amount: str = MIN_USDC_DEPOSIT
    price_per_token: int = DEFAULT_PRICE_PER_TOKEN
    duration: int = DEFAULT_SESSION_DURATION
    proof_interval: int = DEFAULT_PROOF_INTERVAL

    def __post_init__(self) -> None:
        if not isinstance(self.deposit_amount, str):
            raise SDKError(
                SDKErrorCode.INVALID_AMOUNT,
                f'deposit_amount must be a decimal string such as "1.0", got {self.deposit_amount!r}',
            )
        _positive_int(self.price_per_token, "price_per_token", code=SDKErrorCode.INVALID_AMOUNT)
        _positive_int(self.duration, "duration")
        _positive_int(self.proof_interval, "proof_interval")

    @classmethod
    def from_value(cls, value: SessionConfig | Mapping[str, Any], **overrides: Any) -> Self:
        """A SessionConfig from itself or a mapping (camelCase or snake_case keys)."""
        if isinstance(value, cls):
            base: dict[str, Any] = {
                "deposit_amount": value.deposit_amount,
                "price_per_token": value.price_per_token,
                "duration": value.duration,
                "proof_interval": value.proof_interval,
            }
        elif isinstance(value, Mapping):
            base = _fields_of(
                value,
                ("deposit_amount", "price_per_token", "duration", "proof_interval"),
                "session config",
            )
        else:
            raise _bad(f"session config must be a SessionConfig or a mapping, got {value!r}")
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


#: JobMarketplace.Status under the SDK's name.
SessionStatus = Status
#: JobMarketplace.Outcome under the SDK's name.
ReceiptOutcome = Outcome


@dataclass(frozen=True)
class SessionJobResult:
    """What opening a session returns (the reference's SessionResult).

    `session_id` and `job_id` are the same number (the reference has both).
    """

    session_id: int
    tx_hash: str
    deposit: str
    deposit_raw: int
    token: str
    model_id: str
    host: str
    receipt: Any = field(default=None, repr=False, compare=False)
    approval_tx_hash: str | None = None

    @property
    def job_id(self) -> int:
        """Same as `session_id`."""
        return self.session_id


@dataclass(frozen=True)
class SettlementFinality:
    """Where a session's settlement is on chain and whether it counts as final:
    `confirmations` blocks (the settling one included) against the `required` depth
    of the network. A reorg shallower than that cannot undo it."""

    session_id: int
    tx_hash: str
    block: int
    confirmations: int
    required: int

    @property
    def final(self) -> bool:
        return self.confirmations >= self.required


@dataclass(frozen=True)
class SessionInfo:
    """A session as the chain knows it (JobMarketplace.getSession, decoded).

    Raw integers are in the token's smallest units; `deposit` and `price` are
    also given as human strings. `client` is the depositor, `provider` the
    host (the reference's SessionJob names).
    """

    session_id: int
    depositor: str
    host: str
    session_key: str
    token: str
    model_id: str
    price_per_token: int
    deposit_raw: int
    deposit: str
    max_tokens: int
    tokens_used: int
    ends_at: int
    finalize_after: int
    proof_interval: int
    status: SessionStatus

    @property
    def job_id(self) -> int:
        """Same as `session_id`."""
        return self.session_id

    @property
    def client(self) -> str:
        """The reference's name for the depositor."""
        return self.depositor

    @property
    def provider(self) -> str:
        """The reference's name for the host."""
        return self.host

    @property
    def is_open(self) -> bool:
        """Active or closing (not yet settled)."""
        return self.status in (SessionStatus.ACTIVE, SessionStatus.CLOSING)

    @property
    def tokens_remaining(self) -> int:
        """Tokens the escrow can still pay for."""
        return 0 if self.status == SessionStatus.SETTLED else self.max_tokens - self.tokens_used


@dataclass(frozen=True)
class BatchSettleResult:
    """settleBatch's transaction and one outcome per item (OK where settled)."""

    tx_hash: str
    outcomes: tuple[ReceiptOutcome, ...]

    @property
    def settled(self) -> int:
        """How many sessions were settled."""
        return sum(1 for o in self.outcomes if o == ReceiptOutcome.OK)


# --- balances -------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenBalances:
    """One token's balances for one address: in the wallet, free in the
    marketplace (the in-contract balance, the design's "sub-account"), and
    locked in open sessions. Human strings; `*_raw` are smallest units."""

    token: str
    symbol: str
    decimals: int
    wallet: str
    deposited: str
    escrowed: str
    wallet_raw: int
    deposited_raw: int
    escrowed_raw: int


# --- models ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """A model by Hugging Face repo and file, with the sha256 of the file
    (`model_hash`, 0x-prefixed or bare hex; optional: empty skips the check)."""

    huggingface_repo: str
    file_name: str
    model_hash: str = ""

    @classmethod
    def from_value(cls, value: ModelSpec | Mapping[str, Any]) -> Self:
        """A ModelSpec from itself or a mapping (camelCase or snake_case keys)."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise _bad(f"model spec must be a ModelSpec or a mapping, got {value!r}")
        data = _fields_of(value, ("huggingface_repo", "file_name", "model_hash"), "model spec")
        for key in ("huggingface_repo", "file_name", "model_hash"):
            if key in data and not isinstance(data[key], str):
                raise _bad(f"model spec {key} must be a string")
        return cls(**data)


@dataclass(frozen=True)
class ModelInfo:
    """A registered model (ModelRegistry.getModel, decoded).

    `model_hash` is the file's sha256 (0x-hex); `metadata` the parsed JSON
    (the raw string when it is not JSON).
    """

    id: str
    huggingface_repo: str
    file_name: str
    model_hash: str
    size: int
    approved: bool
    status: ModelStatus
    metadata: dict[str, Any] | str | None = None


@dataclass(frozen=True)
class ModelValidation:
    """Result of ModelManager.validate_model (the reference's ModelValidation)."""

    is_valid: bool
    is_approved: bool
    hash_matches: bool | None
    errors: tuple[str, ...]
    model_id: str = ""


# --- hosts ----------------------------------------------------------------------------


@dataclass(frozen=True)
class HostHardware:
    """GPU name, VRAM and RAM in GB."""

    gpu: str = ""
    vram: int = 0
    ram: int = 0


_METADATA_FIELDS: Final = (
    "hardware",
    "capabilities",
    "location",
    "max_concurrent",
    "cost_per_token",
)


@dataclass(frozen=True)
class HostMetadata:
    """The host metadata the reference describes, stored on chain as JSON.

    `extra` keeps any other keys of the JSON (and the raw value of fields that
    did not have the expected shape), so nothing a host published is lost.
    """

    hardware: HostHardware = field(default_factory=HostHardware)
    capabilities: tuple[str, ...] = ()
    location: str = ""
    max_concurrent: int = 1
    cost_per_token: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """Compact JSON with the reference's camelCase keys."""
        data: dict[str, Any] = dict(self.extra)
        data.update(
            {
                "hardware": {
                    "gpu": self.hardware.gpu,
                    "vram": self.hardware.vram,
                    "ram": self.hardware.ram,
                },
                "capabilities": list(self.capabilities),
                "location": self.location,
                "maxConcurrent": self.max_concurrent,
                "costPerToken": self.cost_per_token,
            }
        )
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_value(cls, value: HostMetadata | Mapping[str, Any] | str) -> Self:
        """From itself, a mapping (camelCase or snake_case keys) or a JSON string.

        Strict on types for mappings a caller builds; see `parse` for the
        tolerant reading of what is already on chain.
        """
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                loaded = json.loads(value) if value else {}
            except ValueError:
                raise _bad("host metadata must be a JSON object") from None
            value = loaded
        if not isinstance(value, Mapping):
            raise _bad(f"host metadata must be a mapping or JSON object, got {value!r}")
        data: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, item in value.items():
            name = _snake(str(key))
            if name in _METADATA_FIELDS:
                data[name] = item
            else:
                extra[str(key)] = item
        hardware = data.get("hardware", {})
        if isinstance(hardware, HostHardware):
            hw = hardware
        elif isinstance(hardware, Mapping):
            hw = HostHardware(
                gpu=str(hardware.get("gpu", "")),
                vram=_nonneg(hardware.get("vram", 0), "hardware.vram"),
                ram=_nonneg(hardware.get("ram", 0), "hardware.ram"),
            )
        else:
            raise _bad("host metadata hardware must be {gpu, vram, ram}")
        caps = data.get("capabilities", ())
        if isinstance(caps, str) or not all(isinstance(c, str) for c in caps):
            raise _bad("host metadata capabilities must be a list of strings")
        location = data.get("location", "")
        if not isinstance(location, str):
            raise _bad("host metadata location must be a string")
        return cls(
            hardware=hw,
            capabilities=tuple(caps),
            location=location,
            max_concurrent=_nonneg(data.get("max_concurrent", 1), "max_concurrent"),
            cost_per_token=_nonneg(data.get("cost_per_token", 0), "cost_per_token"),
            extra=extra,
        )

    @classmethod
    def parse(cls, text: str) -> Self:
        """Tolerant reading of a host's on-chain metadata: never raises; what
        does not fit the reference's shape is kept in `extra`."""
        try:
            return cls.from_value(text)
        except SDKError:
            pass
        try:
            loaded = json.loads(text)
        except ValueError:
            return cls(extra={"raw": text})
        if not isinstance(loaded, dict):
            return cls(extra={"raw": text})
        location = loaded.get("location")
        return cls(location=location if isinstance(location, str) else "", extra=loaded)


def _nonneg(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _bad(f"host metadata {name} must be a non-negative integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Reputation:
    """NodeRegistry's counters: facts the chain knows (DESIGN.md section 6)."""

    sessions_settled: int = 0
    tokens_served: int = 0
    slashes: int = 0

    @property
    def score(self) -> int:
        """One number for display and ranking: sessions settled, less 10 per slash."""
        return self.sessions_settled - 10 * self.slashes


class HostRegistryStatus(IntEnum):
    """NodeRegistry.Status."""

    NONE = 0
    ACTIVE = 1
    UNBONDING = 2


@dataclass(frozen=True)
class HostInfo:
    """A host as the registry knows it (the reference's HostInfo).

    `min_prices` maps payment-token address (the zero address is ETH) to the
    minimum price per token in that token's smallest units; `stake` is FAB in
    wei (`stake_fab` the human form).
    """

    address: str
    metadata: HostMetadata
    supported_models: tuple[str, ...]
    is_active: bool
    stake: int
    stake_fab: str
    reputation: Reputation
    api_url: str
    min_prices: Mapping[str, int]
    status: HostRegistryStatus
    metadata_json: str = ""
    unbonding_ends_at: int = 0


@dataclass(frozen=True)
class HostStatus:
    """HostManager.get_host_status: registration, models, earnings, reputation.

    `earnings` is what the host can withdraw now in the default payment token
    (USDC), human; `earnings_by_token` covers every configured token
    (address -> human string).
    """

    address: str
    is_active: bool
    is_registered: bool
    supported_models: tuple[str, ...]
    metadata: HostMetadata
    earnings: str
    earnings_by_token: Mapping[str, str]
    reputation: Reputation
    stake: int
    api_url: str
    status: HostRegistryStatus
    unbonding_ends_at: int


@dataclass(frozen=True)
class HostRegistration:
    """The reference's HostRegistrationWithModels.

    supported_models: ModelSpecs or model ids (0x + 64 hex).
    stake: FAB to stake, human ("1000"); None stakes the registry's minimum.
    api_url: the host worker's ws:// or http(s):// endpoint (required on chain).
    min_prices: payment token ("USDC", "ETH" or an address) -> minimum price
        per generated token in that token's smallest units. None: USDC at
        `metadata.cost_per_token` (or the default price when that is 0).
    """

    metadata: HostMetadata | Mapping[str, Any] | str
    supported_models: Sequence[ModelSpec | Mapping[str, Any] | str]
    api_url: str = ""
    stake: str | None = None
    min_prices: Mapping[str, int] | None = None

    @classmethod
    def from_value(cls, value: HostRegistration | Mapping[str, Any]) -> Self:
        """From itself or a mapping (camelCase or snake_case keys)."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise _bad(f"host registration must be a HostRegistration or mapping, got {value!r}")
        data = _fields_of(
            value,
            ("metadata", "supported_models", "api_url", "stake", "min_prices"),
            "host registration",
        )
        if "metadata" not in data or "supported_models" not in data:
            raise _bad("host registration needs metadata and supported_models")
        return cls(**data)


# --- treasury -------------------------------------------------------------------------


@dataclass(frozen=True)
class TreasuryInfo:
    """The reference's TreasuryInfo, for one payment token, plus every token's figures.

    balance / total_collected: human strings in `token`; fee_percentage: the
    marketplace fee (10.0 = 10 %); balances / totals: token address -> human.
    """

    address: str
    token: str
    balance: str
    total_collected: str
    fee_percentage: float
    fee_bps: int
    balances: Mapping[str, str]
    totals: Mapping[str, str]
