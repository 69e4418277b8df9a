"""Encrypted, content-addressed storage of conversations and session metadata.

`StorageManager` is the reference's storage API; `open_store(url)` picks a
backend (`LocalStore` for a directory, `IpfsHttpStore` for an IPFS node's
HTTP API); `StorageKey` derives the per-wallet key.
"""

from fabstir.sdk.storage.backends import (
    MAX_IPFS_BLOB,
    BlobStore,
    IpfsHttpStore,
    LocalStore,
    open_store,
)
from fabstir.sdk.storage.cid import compute_cid, is_cid, verify_cid
from fabstir.sdk.storage.crypto import STORAGE_KEY_MESSAGE, BlobKind, StorageKey
from fabstir.sdk.storage.manager import (
    ChatMessage,
    Conversation,
    IndexEntry,
    StorageManager,
)

__all__ = [
    "MAX_IPFS_BLOB",
    "STORAGE_KEY_MESSAGE",
    "BlobKind",
    "BlobStore",
    "ChatMessage",
    "Conversation",
    "IndexEntry",
    "IpfsHttpStore",
    "LocalStore",
    "StorageKey",
    "StorageManager",
    "compute_cid",
    "is_cid",
    "open_store",
    "verify_cid",
]
