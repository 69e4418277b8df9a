"""The marketplace's on-chain data model, defined once for the SDK, the host and the CLI.

The enums mirror the contracts' enums value for value, the constants are the
contracts' compile-time constants (tests/sdk/test_chain_model.py reads them
back from a deployed JobMarketplace), `OnChainSession` is `getSession`
decoded, and `SettleItem` is one `settleBatch` item.

Part of the core (DESIGN.md, layering): imports the protocol and the error
module, never the SDK, the host or the CLI.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

from eth_utils.address import to_checksum_address

from fabstir.errors import SDKError, SDKErrorCode
from fabstir.protocol.receipts import Receipt, expected_receipt_signer

ZERO_ADDRESS: Final = "0x0000000000000000000000000000000000000000"
#: bytes32(0) as 0x-hex: the content hash of an empty transcript, and "no receipt".
ZERO_HASH: Final = "0x" + "00" * 32

# --- JobMarketplace's compile-time constants ------------------------------------------
#: Shortest and longest session duration, in seconds.
MIN_DURATION: Final = 60
MAX_DURATION: Final = 30 * 24 * 3600
#: Most items one settleBatch transaction takes.
MAX_BATCH: Final = 100
# Storage widths of the session struct: a value above them cannot be stored.
#: pricePerToken is a uint64.
MAX_PRICE_PER_TOKEN: Final = 2**64 - 1
#: proofInterval is a uint24.
MAX_PROOF_INTERVAL: Final = 2**24 - 1
#: maxTokens (deposit // price) is a uint40.
MAX_SESSION_TOKENS: Final = 2**40 - 1


class Status(IntEnum):
    """JobMarketplace.Status. The reference's 'active' is ACTIVE; 'completed' is
    SETTLED; CLOSING is a close request waiting out the settlement window."""

    NONE = 0
    ACTIVE = 1
    CLOSING = 2
    SETTLED = 3


class Outcome(IntEnum):
    """JobMarketplace.Outcome: whether a receipt (or settleBatch item) is accepted;
    also the `reason` of BatchItemSkipped."""

    OK = 0
    UNKNOWN_SESSION = 1
    NOT_OPEN = 2
    NOT_HOST = 3
    STALE_RECEIPT = 4
    EXCEEDS_DEPOSIT = 5
    BAD_SIGNATURE = 6


class ModelStatus(IntEnum):
    """ModelRegistry.Status."""

    NONE = 0
    PENDING = 1
    APPROVED = 2
    DEACTIVATED = 3


def to_hex(value: bytes | str) -> str:
    """bytes or hex (any case, 0x optional) as 0x-prefixed lowercase hex."""
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    return value.lower() if value.startswith("0x") else "0x" + value.lower()


@dataclass(frozen=True)
class OnChainSession:
    """JobMarketplace.getSession, decoded. Amounts are the token's smallest units."""

    session_id: int
    depositor: str
    host: str
    session_key: str
    token: str
    model_id: str
    price: int
    deposit: int
    max_tokens: int
    tokens_used: int
    ends_at: int
    finalize_after: int
    proof_interval: int
    status: Status

    @classmethod
    def from_tuple(cls, info: Sequence[Any]) -> OnChainSession:
        """Decode getSession's return tuple (field order of the Session struct)."""
        return cls(
            session_id=int(info[0]),
            depositor=to_checksum_address(info[1]),
            host=to_checksum_address(info[2]),
            session_key=to_checksum_address(info[3]),
            token=to_checksum_address(info[4]),
            model_id=to_hex(info[5]),
            price=int(info[6]),
            deposit=int(info[7]),
            max_tokens=int(info[8]),
            tokens_used=int(info[9]),
            ends_at=int(info[10]),
            finalize_after=int(info[11]),
            proof_interval=int(info[12]),
            status=Status(int(info[13])),
        )

    @property
    def signer(self) -> str:
        """Who signs this session's receipts and session_init proofs."""
        return expected_receipt_signer(self.session_key, self.depositor)

    @property
    def is_open(self) -> bool:
        """Active or closing (not yet settled)."""
        return self.status in (Status.ACTIVE, Status.CLOSING)


@dataclass(frozen=True)
class SettleItem:
    """One settleBatch item: a session, and the newer receipt to record first
    (None settles with what the chain has recorded)."""

    session_id: int
    receipt: Receipt | None = None

    def __post_init__(self) -> None:
        if self.receipt is not None and self.receipt.session_id != self.session_id:
            raise SDKError(
                SDKErrorCode.INVALID_ARGUMENT,
                f"the receipt is for session {self.receipt.session_id}, "
                f"the item for {self.session_id}",
            )

    @classmethod
    def of(cls, receipt: Receipt) -> SettleItem:
        """Settle `receipt`'s session, recording `receipt` first."""
        return cls(receipt.session_id, receipt)

    @property
    def tokens_used(self) -> int:
        """The receipt's count, 0 without one."""
        return 0 if self.receipt is None else self.receipt.tokens_used

    def as_tuple(self) -> tuple[int, int, bytes, bytes]:
        """The item as the contract's SettleItem struct (a receipt's call_args)."""
        if self.receipt is None:
            return Receipt.no_receipt_args(self.session_id)
        return self.receipt.call_args()
