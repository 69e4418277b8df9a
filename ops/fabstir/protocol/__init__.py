"""What the SDK and the host worker share: the wire protocol and receipt signing.

`receipts` holds the EIP-712 Checkpoint/SessionInit signing and recovery and
the transcript hash chain; `messages` holds the versioned JSON frames.
Both sides import these modules so they cannot drift apart.
"""

from fabstir.protocol.messages import (
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    Message,
    ProtocolError,
    parse_message,
)
from fabstir.protocol.receipts import (
    ContentHasher,
    Eip712Domain,
    InvalidSignatureError,
    ProofVerifier,
    Receipt,
    ReceiptSigner,
    recover_receipt_signer,
    recover_session_init_signer,
    sign_receipt,
    sign_session_init,
)

__all__ = [
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "ContentHasher",
    "Eip712Domain",
    "InvalidSignatureError",
    "Message",
    "ProofVerifier",
    "ProtocolError",
    "Receipt",
    "ReceiptSigner",
    "parse_message",
    "recover_receipt_signer",
    "recover_session_init_signer",
    "sign_receipt",
    "sign_session_init",
]
