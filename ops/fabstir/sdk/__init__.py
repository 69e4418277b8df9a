"""The Fabstir Python SDK (client side): the API reference's managers in Python.

    from fabstir.sdk import FabstirSDK, SDKConfig, SDKError, SDKErrorCode

The public names are exported lazily (PEP 562): `import fabstir.sdk` alone
loads only the error types, and the chain client, web3 and storage are
imported the first time a name that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fabstir.errors import SDKError, SDKErrorCode

if TYPE_CHECKING:
    from fabstir.protocol.receipts import ProofVerifier, Receipt
    from fabstir.sdk.config import SDKConfig
    from fabstir.sdk.preflight import SessionPlan
    from fabstir.sdk.sdk import FabstirSDK
    from fabstir.sdk.session import CompletionResult, StartedSession, StreamChunk
    from fabstir.sdk.types import SessionConfig, SessionInfo, SessionStatus

#: Public name -> the module that defines it (imported on first use).
_LAZY: dict[str, str] = {
    "CompletionResult": "fabstir.sdk.session",
    "FabstirSDK": "fabstir.sdk.sdk",
    "ProofVerifier": "fabstir.protocol.receipts",
    "Receipt": "fabstir.protocol.receipts",
    "SDKConfig": "fabstir.sdk.config",
    "SessionConfig": "fabstir.sdk.types",
    "SessionInfo": "fabstir.sdk.types",
    "SessionPlan": "fabstir.sdk.preflight",
    "SessionStatus": "fabstir.sdk.types",
    "StartedSession": "fabstir.sdk.session",
    "StreamChunk": "fabstir.sdk.session",
}

__all__ = [
    "CompletionResult",
    "FabstirSDK",
    "ProofVerifier",
    "Receipt",
    "SDKConfig",
    "SDKError",
    "SDKErrorCode",
    "SessionConfig",
    "SessionInfo",
    "SessionPlan",
    "SessionStatus",
    "StartedSession",
    "StreamChunk",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
