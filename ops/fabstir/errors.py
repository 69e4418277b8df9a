"""The project's one error type and the one table of error codes (core).

Every error code the project uses lives in `SDKErrorCode`: the SDK raises them,
the host worker puts them in `error` frames, the wire protocol parser raises
them; every failure is an `SDKError` (or a subclass) carrying one. The
first block is the API reference's enum, value for value; the blocks after
it are this project's additions, each documented where it is declared, so
that `docs/protocol.md` and `docs/sdk.md` can point here.

This module is part of the core (DESIGN.md, layering): it imports nothing of
the project, and the SDK, the host, the protocol and the chain layer all
import it. The names keep the API reference's `SDKErrorCode`/`SDKError`;
`fabstir.sdk.errors` re-exports them for the SDK's public API.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Any


class SDKErrorCode(StrEnum):
    """Stable string codes for every failure the SDK or a host can report."""

    # --- The API reference's codes (unchanged values) ---------------------
    # Authentication
    AUTH_FAILED = "AUTH_FAILED"
    AUTH_REQUIRED = "AUTH_REQUIRED"
    INVALID_SIGNER = "INVALID_SIGNER"
    # Managers
    MANAGER_NOT_INITIALIZED = "MANAGER_NOT_INITIALIZED"
    MANAGER_NOT_AUTHENTICATED = "MANAGER_NOT_AUTHENTICATED"
    # Transactions
    INSUFFICIENT_BALANCE = "INSUFFICIENT_BALANCE"
    TRANSACTION_FAILED = "TRANSACTION_FAILED"
    APPROVAL_FAILED = "APPROVAL_FAILED"
    # Sessions
    SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
    SESSION_EXPIRED = "SESSION_EXPIRED"
    INVALID_SESSION_STATE = "INVALID_SESSION_STATE"
    # Models
    MODEL_NOT_APPROVED = "MODEL_NOT_APPROVED"
    MODEL_VALIDATION_FAILED = "MODEL_VALIDATION_FAILED"
    INVALID_MODEL_HASH = "INVALID_MODEL_HASH"
    # Storage
    STORAGE_ERROR = "STORAGE_ERROR"
    S5_CONNECTION_FAILED = "S5_CONNECTION_FAILED"
    # WebSocket
    WEBSOCKET_CONNECTION_FAILED = "WEBSOCKET_CONNECTION_FAILED"
    WEBSOCKET_MESSAGE_FAILED = "WEBSOCKET_MESSAGE_FAILED"
    # Proofs
    INVALID_PROOF = "INVALID_PROOF"
    PROOF_VERIFICATION_FAILED = "PROOF_VERIFICATION_FAILED"

    # --- Additions: input validation (raised before any transaction) ------
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    INVALID_ADDRESS = "INVALID_ADDRESS"
    INVALID_AMOUNT = "INVALID_AMOUNT"
    DEPOSIT_TOO_LOW = "DEPOSIT_TOO_LOW"
    PRICE_TOO_LOW = "PRICE_TOO_LOW"
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
    HOST_NOT_FOUND = "HOST_NOT_FOUND"
    # A host-only action called by a client, or an admin action by a non-admin.
    NOT_AUTHORIZED = "NOT_AUTHORIZED"
    # No deployment / contract address known for the chain.
    CONTRACT_NOT_CONFIGURED = "CONTRACT_NOT_CONFIGURED"
    # The RPC endpoint is unreachable or answered garbage.
    NETWORK_ERROR = "NETWORK_ERROR"
    # Nothing is stored under that CID or session id.
    STORAGE_NOT_FOUND = "STORAGE_NOT_FOUND"

    # --- Additions: wire protocol (docs/protocol.md) ----------------------
    MALFORMED_MESSAGE = "MALFORMED_MESSAGE"
    UNKNOWN_MESSAGE_TYPE = "UNKNOWN_MESSAGE_TYPE"
    UNSUPPORTED_VERSION = "UNSUPPORTED_VERSION"
    MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE"
    PROMPT_TOO_LARGE = "PROMPT_TOO_LARGE"
    RATE_LIMITED = "RATE_LIMITED"
    TOO_MANY_CONNECTIONS = "TOO_MANY_CONNECTIONS"
    # A frame other than session_init/ping arrived before session_init succeeded.
    NOT_INITIALIZED = "NOT_INITIALIZED"
    # The session is on chain but its host is not this worker.
    WRONG_HOST = "WRONG_HOST"
    # The session's model is not the model this worker has loaded.
    MODEL_MISMATCH = "MODEL_MISMATCH"
    # deposit / pricePerToken tokens have all been used.
    SESSION_BUDGET_EXHAUSTED = "SESSION_BUDGET_EXHAUSTED"
    # The host will not generate more until it gets a receipt.
    RECEIPT_REQUIRED = "RECEIPT_REQUIRED"
    # A receipt whose tokens are not above the newest accepted one.
    STALE_RECEIPT = "STALE_RECEIPT"
    # A receipt or session_init signed by someone other than the session key.
    WRONG_SIGNER = "WRONG_SIGNER"
    # The host is shutting down or cannot serve right now; retry elsewhere/later.
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    INTERNAL_ERROR = "INTERNAL_ERROR"


#: One line per code: what it means for the caller and what to do about it.
#: docs/protocol.md and docs/sdk.md render this table.
ERROR_CODE_DESCRIPTIONS: Mapping[SDKErrorCode, str] = MappingProxyType(
    {
        SDKErrorCode.AUTH_FAILED: "the private key or signer was rejected",
        SDKErrorCode.AUTH_REQUIRED: "call authenticate() before using this method",
        SDKErrorCode.INVALID_SIGNER: "the signer cannot sign (no key, wrong type)",
        SDKErrorCode.MANAGER_NOT_INITIALIZED: "the SDK/manager has not been set up yet",
        SDKErrorCode.MANAGER_NOT_AUTHENTICATED: "the manager needs an authenticated SDK",
        SDKErrorCode.INSUFFICIENT_BALANCE: "the wallet or in-contract balance is too small",
        SDKErrorCode.TRANSACTION_FAILED: "a transaction reverted or was not mined",
        SDKErrorCode.APPROVAL_FAILED: "the ERC-20 approval transaction failed",
        SDKErrorCode.SESSION_NOT_FOUND: "no such session on chain (or not known to the host)",
        SDKErrorCode.SESSION_EXPIRED: "the session's duration has passed",
        SDKErrorCode.INVALID_SESSION_STATE: "the session is not in a state that allows this",
        SDKErrorCode.MODEL_NOT_APPROVED: "the model is not approved in the ModelRegistry",
        SDKErrorCode.MODEL_VALIDATION_FAILED: "the model failed validation",
        SDKErrorCode.INVALID_MODEL_HASH: "the model file's sha256 does not match the registry",
        SDKErrorCode.STORAGE_ERROR: "storage failed, or a blob is corrupt/not yours",
        SDKErrorCode.S5_CONNECTION_FAILED: "the networked storage backend is unreachable",
        SDKErrorCode.WEBSOCKET_CONNECTION_FAILED: "could not connect to the host's WebSocket",
        SDKErrorCode.WEBSOCKET_MESSAGE_FAILED: "a WebSocket frame could not be sent",
        SDKErrorCode.INVALID_PROOF: "a receipt signature is malformed (length, v, high s)",
        SDKErrorCode.PROOF_VERIFICATION_FAILED: "a receipt does not verify for that session",
        SDKErrorCode.INVALID_ARGUMENT: "an argument has the wrong type or range",
        SDKErrorCode.INVALID_ADDRESS: "not a 0x-prefixed 20-byte address (or bad checksum)",
        SDKErrorCode.INVALID_AMOUNT: "not a non-negative decimal string the token can hold",
        SDKErrorCode.DEPOSIT_TOO_LOW: "the deposit is below the token's minimum",
        SDKErrorCode.PRICE_TOO_LOW: "the price per token is below the host's minimum",
        SDKErrorCode.MODEL_NOT_FOUND: "no model with that id is registered",
        SDKErrorCode.HOST_NOT_FOUND: "no active host with that address",
        SDKErrorCode.NOT_AUTHORIZED: "the caller lacks the role this action needs",
        SDKErrorCode.CONTRACT_NOT_CONFIGURED: "no contract address known for this chain",
        SDKErrorCode.NETWORK_ERROR: "the RPC endpoint is unreachable or misbehaving",
        SDKErrorCode.STORAGE_NOT_FOUND: "nothing stored under that CID or session id",
        SDKErrorCode.MALFORMED_MESSAGE: "a frame is not valid JSON or breaks the schema",
        SDKErrorCode.UNKNOWN_MESSAGE_TYPE: "a frame's type is not part of the protocol",
        SDKErrorCode.UNSUPPORTED_VERSION: "the peer speaks another protocol version",
        SDKErrorCode.MESSAGE_TOO_LARGE: "a frame exceeds the size limit",
        SDKErrorCode.PROMPT_TOO_LARGE: "the prompt exceeds the host's limit",
        SDKErrorCode.RATE_LIMITED: "too many prompts; wait and retry",
        SDKErrorCode.TOO_MANY_CONNECTIONS: "too many connections from this client",
        SDKErrorCode.NOT_INITIALIZED: "send session_init (and wait for session_ready) first",
        SDKErrorCode.WRONG_HOST: "the session belongs to another host",
        SDKErrorCode.MODEL_MISMATCH: "the session's model is not the one this host serves",
        SDKErrorCode.SESSION_BUDGET_EXHAUSTED: "the session's deposit is used up",
        SDKErrorCode.RECEIPT_REQUIRED: "sign a receipt for the tokens received to continue",
        SDKErrorCode.STALE_RECEIPT: "the receipt is not newer than the last accepted one",
        SDKErrorCode.WRONG_SIGNER: "signed by a key other than the session key",
        SDKErrorCode.SERVICE_UNAVAILABLE: "the host cannot serve now (shutting down)",
        SDKErrorCode.INTERNAL_ERROR: "an unexpected failure on the other side",
    }
)


class SDKError(Exception):
    """An error with a stable `code` (an `SDKErrorCode`) and a human message.

    `details` carries machine-readable context (the offending value, the
    limit) for callers that want more than the message.
    """

    def __init__(
        self,
        code: SDKErrorCode,
        message: str,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details: Mapping[str, Any] = dict(details) if details else {}

    def __str__(self) -> str:
        return f"[{self.code.value}] {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.value!r}, {self.message!r})"
