"""Encryption of stored blobs, keyed by the user's wallet.

The key comes from the user's signature over a fixed EIP-191 message, run
through HKDF-SHA256. ECDSA signing is deterministic (RFC 6979), so the same
wallet derives the same key on any machine, and a wallet that only signs
(a hardware wallet, a browser) can supply the signature instead of the key.

Blob format (version 1):

    magic "FBST" | version 0x01 | kind (1 byte) | nonce (12 bytes) | AES-256-GCM ciphertext+tag

The additional authenticated data is the 18-byte header followed by the
owner's 20-byte address, so changing any byte, relabelling a blob's kind, or
presenting one user's blob as another's fails authentication.
"""

from __future__ import annotations

import os
from enum import IntEnum
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from eth_utils.address import to_canonical_address
from eth_utils.crypto import keccak

from fabstir.protocol.receipts import (
    SECP256K1_HALF_N,
    SECP256K1_N,
    InvalidSignatureError,
    PrivateKeyLike,
    is_valid_address,
    recover_signer,
    same_address,
    sign_digest,
    to_private_key,
)
from fabstir.sdk.errors import SDKError, SDKErrorCode

#: What the wallet signs to unlock storage. Changing it changes every key:
#: a new message needs a new format version.
STORAGE_KEY_MESSAGE: Final = "Fabstir storage key v1"
MAGIC: Final = b"FBST"
FORMAT_VERSION: Final = 1
NONCE_SIZE: Final = 12
HEADER_SIZE: Final = len(MAGIC) + 2 + NONCE_SIZE
_HKDF_SALT: Final = b"fabstir-storage-v1"


class BlobKind(IntEnum):
    """What a blob holds; part of the header and of the authenticated data."""

    CONVERSATION = 1
    SESSION_METADATA = 2
    INDEX = 3


def storage_message_digest(message: str = STORAGE_KEY_MESSAGE) -> bytes:
    """The EIP-191 (personal_sign) digest of the storage message."""
    data = message.encode("utf-8")
    return keccak(b"\x19Ethereum Signed Message:\n" + str(len(data)).encode() + data)


def _canonical_signature(signature: bytes) -> bytes:
    # Wallets may return v as 0/1 or a high-s twin; fold them to one form so
    # every equivalent signature derives the same key.
    if len(signature) != 65:
        raise InvalidSignatureError("length", "storage signature must be 65 bytes")
    r, s, v = signature[:32], int.from_bytes(signature[32:64], "big"), signature[64]
    if v in (0, 1):
        v += 27
    if s > SECP256K1_HALF_N and v in (27, 28):
        s, v = SECP256K1_N - s, 55 - v
    return r + s.to_bytes(32, "big") + bytes([v])


def _hkdf(ikm: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=_HKDF_SALT, info=info).derive(ikm)


class StorageKey:
    """The per-wallet encryption key and index locator. Never printed."""

    def __init__(self, owner: str, signature: bytes | str) -> None:
        """Build from the owner's signature over STORAGE_KEY_MESSAGE (EIP-191).

        The signature is checked to recover `owner`, so a wrong signature
        fails here rather than producing unreadable data later.
        """
        if not is_valid_address(owner):
            raise SDKError(SDKErrorCode.INVALID_ADDRESS, f"owner is not an address: {owner!r}")
        try:
            if isinstance(signature, str):
                raw = bytes.fromhex(signature.removeprefix("0x"))
            else:
                raw = bytes(signature)
            canonical = _canonical_signature(raw)
            signer = recover_signer(storage_message_digest(), canonical)
        except (InvalidSignatureError, ValueError):
            raise SDKError(SDKErrorCode.AUTH_FAILED, "storage signature is malformed") from None
        if not same_address(signer, owner):
            raise SDKError(
                SDKErrorCode.AUTH_FAILED,
                f"storage signature was made by {signer}, not {owner}; sign "
                f"{STORAGE_KEY_MESSAGE!r} with the owner's wallet",
            )
        self.owner: str = signer
        self._owner_bytes = to_canonical_address(signer)
        self._aead = AESGCM(_hkdf(canonical, b"aes-256-gcm|" + self._owner_bytes, 32))
        self.index_name: str = _hkdf(canonical, b"index-locator|" + self._owner_bytes, 16).hex()

    @classmethod
    def from_private_key(cls, private_key: PrivateKeyLike) -> StorageKey:
        """Sign the storage message with `private_key` and derive the key."""
        key = to_private_key(private_key)
        signature = sign_digest(key, storage_message_digest())
        return cls(key.public_key.to_checksum_address(), signature)

    def __repr__(self) -> str:
        return f"StorageKey(owner={self.owner})"

    def _aad(self, header: bytes) -> bytes:
        return header + self._owner_bytes

    def encrypt(self, kind: BlobKind, plaintext: bytes) -> bytes:
        """Seal `plaintext` into a versioned, authenticated blob (fresh random nonce)."""
        header = MAGIC + bytes([FORMAT_VERSION, kind]) + os.urandom(NONCE_SIZE)
        return header + self._aead.encrypt(header[-NONCE_SIZE:], plaintext, self._aad(header))

    def decrypt(self, kind: BlobKind, blob: bytes) -> bytes:
        """Open a blob of the expected kind; SDKError(STORAGE_ERROR) if it is not
        a Fabstir blob, not of that kind, not this wallet's, or altered."""
        if len(blob) < HEADER_SIZE + 16 or blob[: len(MAGIC)] != MAGIC:
            raise SDKError(SDKErrorCode.STORAGE_ERROR, "not a Fabstir storage blob")
        version, found = blob[len(MAGIC)], blob[len(MAGIC) + 1]
        if version != FORMAT_VERSION:
            raise SDKError(
                SDKErrorCode.STORAGE_ERROR,
                f"blob format version {version} is not supported by this SDK "
                f"(supports {FORMAT_VERSION}); upgrade the SDK",
            )
        if found != kind:
            label = (
                BlobKind(found).name.lower() if found in {k.value for k in BlobKind} else str(found)
            )
            raise SDKError(
                SDKErrorCode.STORAGE_ERROR,
                f"blob holds {label}, not {kind.name.lower()}",
            )
        header = blob[:HEADER_SIZE]
        try:
            return self._aead.decrypt(header[-NONCE_SIZE:], blob[HEADER_SIZE:], self._aad(header))
        except InvalidTag:
            raise SDKError(
                SDKErrorCode.STORAGE_ERROR,
                "cannot decrypt blob: it belongs to another wallet or was altered",
            ) from None
