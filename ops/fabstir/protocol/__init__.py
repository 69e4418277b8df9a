"""What the SDK and the host worker share: the wire protocol and the receipt.

`receipts` holds the one `Receipt` type, its EIP-712 Checkpoint signing and
recovery, the one receipt checker (`check_receipt`), the SessionInit proof and
the transcript hash chain; `messages` holds the versioned JSON frames. Both
sides import these modules so they cannot drift apart. Part of the core
(DESIGN.md, layering): nothing here imports the SDK, the host or the CLI.
"""

from fabstir.protocol.messages import (
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Message,
    ProtocolError,
    negotiate_version,
    parse_message,
)
from fabstir.protocol.receipts import (
    ContentHasher,
    Eip712Domain,
    InvalidSignatureError,
    ProofVerifier,
    Receipt,
    ReceiptSigner,
    check_receipt,
    recover_receipt_signer,
    recover_session_init_signer,
    sign_receipt,
    sign_session_init,
)

__all__ = [
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "ContentHasher",
    "Eip712Domain",
    "InvalidSignatureError",
    "Message",
    "ProofVerifier",
    "ProtocolError",
    "Receipt",
    "ReceiptSigner",
    "check_receipt",
    "negotiate_version",
    "parse_message",
    "recover_receipt_signer",
    "recover_session_init_signer",
    "sign_receipt",
    "sign_session_init",
]
