"""EIP-712 receipts, session-init proofs and the transcript hash chain.

The client signs `Checkpoint(sessionId, tokensUsed, contentHash)` receipts as
chunks arrive; the host checks them, stores them and settles with the newest.
`ProofSystem.sol` verifies the very same bytes: `tests/vectors/receipts.json`
pins them for both sides.

Hashing is done here directly (type hashes and the domain separator are
computed once) rather than through eth-account's generic typed-data encoder,
because signing happens per chunk batch; the tests check both give the same
digest. Signatures go through eth-keys, which uses coincurve when it is
installed (~50x faster than its pure-Python backend).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Container, Mapping
from dataclasses import dataclass, fields
from typing import Any, Final, Protocol, TypeAlias

from coincurve.utils import GROUP_ORDER_INT
from eth_keys.datatypes import PrivateKey, Signature
from eth_keys.exceptions import BadSignature
from eth_utils.address import to_canonical_address, to_checksum_address
from eth_utils.crypto import keccak
from eth_utils.exceptions import ValidationError

from fabstir.errors import SDKError, SDKErrorCode

DOMAIN_NAME: Final = "Fabstir Marketplace"
DOMAIN_VERSION: Final = "1"

EIP712_DOMAIN_TYPE: Final = (
    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
CHECKPOINT_TYPE: Final = "Checkpoint(uint256 sessionId,uint256 tokensUsed,bytes32 contentHash)"
SESSION_INIT_TYPE: Final = "SessionInit(uint256 sessionId,bytes32 nonce)"

EIP712_DOMAIN_TYPEHASH: Final = keccak(text=EIP712_DOMAIN_TYPE)
CHECKPOINT_TYPEHASH: Final = keccak(text=CHECKPOINT_TYPE)
SESSION_INIT_TYPEHASH: Final = keccak(text=SESSION_INIT_TYPE)

#: The content hash of an empty transcript.
GENESIS_HASH: Final = bytes(32)
#: Domain-separation tags of the hash chain: prompts and response chunks.
PROMPT_TAG: Final = b"\x01"
CHUNK_TAG: Final = b"\x02"

SIGNATURE_LENGTH: Final = 65
#: secp256k1 group order, and the low-s bound (OpenZeppelin ECDSA's constant).
# The secp256k1 group order (coincurve's constant, so no one mistakes a literal for a key).
SECP256K1_N: Final[int] = GROUP_ORDER_INT
SECP256K1_HALF_N: Final = SECP256K1_N // 2

_UINT256_MAX: Final = 2**256 - 1
_ZERO_ADDRESS: Final = "0x0000000000000000000000000000000000000000"
# fullmatch, not bytes.fromhex alone: fromhex skips whitespace ("0x00 11...").
_HEX32_RE: Final = re.compile(r"0[xX][0-9a-fA-F]{64}")
_HEX_RE: Final = re.compile(r"(?:0[xX])?(?:[0-9a-fA-F]{2})*")
_ADDRESS_RE: Final = re.compile(r"0x[0-9a-fA-F]{40}")

_DOMAIN_FIELDS: Final = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
_CHECKPOINT_FIELDS: Final = [
    {"name": "sessionId", "type": "uint256"},
    {"name": "tokensUsed", "type": "uint256"},
    {"name": "contentHash", "type": "bytes32"},
]
_SESSION_INIT_FIELDS: Final = [
    {"name": "sessionId", "type": "uint256"},
    {"name": "nonce", "type": "bytes32"},
]


class InvalidSignatureError(SDKError):
    """A signature that no honest signer produces: wrong length, v not 27/28,
    r or s out of range, high s (malleable), or no recoverable key.

    `reason` is one of "length", "v", "r", "s", "high_s", "unrecoverable".
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(SDKErrorCode.INVALID_PROOF, message, {"reason": reason})
        self.reason = reason


class _HasKey(Protocol):
    @property
    def key(self) -> bytes: ...


#: A private key as 0x-hex, 32 raw bytes, an eth-keys key, or an eth-account
#: LocalAccount (anything with a `.key`).
PrivateKeyLike: TypeAlias = str | bytes | PrivateKey | _HasKey


# --- small validated conversions ---------------------------------------------


def _uint256(value: int, name: str) -> int:
    # bool is an int subclass; True as a session id is always a bug. Other int
    # subclasses (web3/ape return values) are fine and normalised to int.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _UINT256_MAX:
        raise SDKError(
            SDKErrorCode.INVALID_ARGUMENT, f"{name} must be an int in 0..2**256-1, got {value!r}"
        )
    return int(value)


def is_valid_address(value: object) -> bool:
    """0x + 40 hex digits; mixed case must be a correct EIP-55 checksum.

    (eth_utils 5's `is_address` accepts any mixed case, so a mistyped
    checksummed address would slip through it.)
    """
    if not isinstance(value, str) or not _ADDRESS_RE.fullmatch(value):
        return False
    body = value[2:]
    if body == body.lower() or body == body.upper():
        return True
    return to_checksum_address(value) == value


def to_bytes32(value: bytes | str, name: str = "value") -> bytes:
    """Accept 32 raw bytes or a 0x-prefixed 64-digit hex string."""
    if isinstance(value, bytes | bytearray):
        if len(value) == 32:
            return bytes(value)
    elif isinstance(value, str) and _HEX32_RE.fullmatch(value):
        return bytes.fromhex(value[2:])
    raise SDKError(
        SDKErrorCode.INVALID_ARGUMENT,
        f"{name} must be 32 bytes or 0x + 64 hex digits, got {value!r}",
    )


def _signature_bytes(signature: bytes | str) -> bytes:
    if isinstance(signature, str):
        if not _HEX_RE.fullmatch(signature):
            raise InvalidSignatureError("length", "signature is not hex")
        raw = bytes.fromhex(signature[2:] if signature[:2] in ("0x", "0X") else signature)
    elif isinstance(signature, bytes | bytearray):
        raw = bytes(signature)
    else:
        raise InvalidSignatureError("length", f"signature must be hex or bytes, got {signature!r}")
    if len(raw) != SIGNATURE_LENGTH:
        raise InvalidSignatureError(
            "length", f"signature must be {SIGNATURE_LENGTH} bytes (r||s||v), got {len(raw)}"
        )
    return raw


def to_private_key(private_key: PrivateKeyLike) -> PrivateKey:
    """Normalise any accepted private-key form to an eth-keys PrivateKey."""
    if isinstance(private_key, PrivateKey):
        return private_key
    raw: bytes | None = None
    if isinstance(private_key, str):
        if _HEX_RE.fullmatch(private_key):
            raw = bytes.fromhex(private_key[2:] if private_key[:2] in ("0x", "0X") else private_key)
    elif isinstance(private_key, bytes | bytearray):
        raw = bytes(private_key)
    else:
        raw = bytes(private_key.key)
    try:
        if raw is None or len(raw) != 32:
            raise ValidationError("need 32 bytes")
        return PrivateKey(raw)
    except ValidationError:
        # Never echo the key back: it may be a real one with a typo.
        raise SDKError(
            SDKErrorCode.INVALID_SIGNER, "private key must be 32 bytes (0x + 64 hex digits)"
        ) from None


# --- the domain -----------------------------------------------------------------


@dataclass(frozen=True)
class Eip712Domain:
    """The EIP-712 domain receipts are bound to: one chain, one marketplace.

    `verifying_contract` is the JobMarketplace address; it is stored
    checksummed. Binding both stops a receipt being replayed on another
    chain or another deployment.
    """

    chain_id: int
    verifying_contract: str
    name: str = DOMAIN_NAME
    version: str = DOMAIN_VERSION

    def __post_init__(self) -> None:
        chain_id = self.chain_id
        if (
            isinstance(chain_id, bool)
            or not isinstance(chain_id, int)
            or not 0 < chain_id <= _UINT256_MAX
        ):
            raise SDKError(
                SDKErrorCode.INVALID_ARGUMENT,
                f"chain_id must be a positive int, got {self.chain_id!r}",
            )
        object.__setattr__(self, "chain_id", int(chain_id))
        if not is_valid_address(self.verifying_contract):
            raise SDKError(
                SDKErrorCode.INVALID_ADDRESS,
                f"verifying_contract must be a 0x address (checksum if mixed case), "
                f"got {self.verifying_contract!r}",
            )
        object.__setattr__(self, "verifying_contract", to_checksum_address(self.verifying_contract))

    @functools.cached_property
    def separator(self) -> bytes:
        """The EIP-712 domain separator (computed once per domain)."""
        return keccak(
            EIP712_DOMAIN_TYPEHASH
            + keccak(text=self.name)
            + keccak(text=self.version)
            + self.chain_id.to_bytes(32, "big")
            + bytes(12)
            + to_canonical_address(self.verifying_contract)
        )

    def as_dict(self) -> dict[str, Any]:
        """The domain in eth-account / EIP-712 JSON form."""
        return {
            "name": self.name,
            "version": self.version,
            "chainId": self.chain_id,
            "verifyingContract": self.verifying_contract,
        }


# --- typed data (eth-account full-message form) ----------------------------------


def checkpoint_typed_data(
    domain: Eip712Domain, session_id: int, tokens_used: int, content_hash: bytes | str
) -> dict[str, Any]:
    """The Checkpoint receipt as EIP-712 typed data, for `encode_typed_data(full_message=...)`
    and for wallets (`eth_signTypedData_v4`)."""
    return {
        "types": {"EIP712Domain": _DOMAIN_FIELDS, "Checkpoint": _CHECKPOINT_FIELDS},
        "primaryType": "Checkpoint",
        "domain": domain.as_dict(),
        "message": {
            "sessionId": _uint256(session_id, "session_id"),
            "tokensUsed": _uint256(tokens_used, "tokens_used"),
            "contentHash": "0x" + to_bytes32(content_hash, "content_hash").hex(),
        },
    }


def session_init_typed_data(
    domain: Eip712Domain, session_id: int, nonce: bytes | str
) -> dict[str, Any]:
    """The SessionInit proof as EIP-712 typed data (full-message form)."""
    return {
        "types": {"EIP712Domain": _DOMAIN_FIELDS, "SessionInit": _SESSION_INIT_FIELDS},
        "primaryType": "SessionInit",
        "domain": domain.as_dict(),
        "message": {
            "sessionId": _uint256(session_id, "session_id"),
            "nonce": "0x" + to_bytes32(nonce, "nonce").hex(),
        },
    }


# --- hashes ---------------------------------------------------------------------------


def checkpoint_struct_hash(session_id: int, tokens_used: int, content_hash: bytes | str) -> bytes:
    """hashStruct(Checkpoint)."""
    return keccak(
        CHECKPOINT_TYPEHASH
        + _uint256(session_id, "session_id").to_bytes(32, "big")
        + _uint256(tokens_used, "tokens_used").to_bytes(32, "big")
        + to_bytes32(content_hash, "content_hash")
    )


def session_init_struct_hash(session_id: int, nonce: bytes | str) -> bytes:
    """hashStruct(SessionInit)."""
    return keccak(
        SESSION_INIT_TYPEHASH
        + _uint256(session_id, "session_id").to_bytes(32, "big")
        + to_bytes32(nonce, "nonce")
    )


def _typed_digest(domain: Eip712Domain, struct_hash: bytes) -> bytes:
    return keccak(b"\x19\x01" + domain.separator + struct_hash)


def receipt_digest(
    domain: Eip712Domain, session_id: int, tokens_used: int, content_hash: bytes | str
) -> bytes:
    """The EIP-712 digest a Checkpoint receipt signs (what ecrecover sees)."""
    return _typed_digest(domain, checkpoint_struct_hash(session_id, tokens_used, content_hash))


def session_init_digest(domain: Eip712Domain, session_id: int, nonce: bytes | str) -> bytes:
    """The EIP-712 digest a SessionInit proof signs."""
    return _typed_digest(domain, session_init_struct_hash(session_id, nonce))


# --- signing and recovery ---------------------------------------------------------------


def sign_digest(private_key: PrivateKeyLike, digest: bytes) -> bytes:
    """Sign a 32-byte digest: 65 bytes r||s||v, v in {27, 28}, low s (RFC 6979)."""
    sig = to_private_key(private_key).sign_msg_hash(digest)
    r: int = sig.r
    s: int = sig.s
    v: int = sig.v
    # eth-keys already normalises to low s (both backends); keep the check so a
    # backend change can never emit a signature the contract would refuse.
    if s > SECP256K1_HALF_N:  # pragma: no cover - defensive
        raise InvalidSignatureError("high_s", "signer produced a high-s signature")
    return r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([v + 27])


def recover_signer(digest: bytes, signature: bytes | str) -> str:
    """Recover the checksummed address that signed `digest`, with the contract's rules.

    Rejects what OpenZeppelin's ECDSA.recover rejects: length != 65, v not in
    {27, 28}, r or s zero or >= n, s > n/2 (the malleable twin of a valid
    signature), and signatures that recover no key.

    Raises InvalidSignatureError (code INVALID_PROOF).
    """
    raw = _signature_bytes(signature)
    r = int.from_bytes(raw[:32], "big")
    s = int.from_bytes(raw[32:64], "big")
    v = raw[64]
    if v not in (27, 28):
        raise InvalidSignatureError("v", f"signature v must be 27 or 28, got {v}")
    if not 0 < r < SECP256K1_N:
        raise InvalidSignatureError("r", "signature r is out of range")
    if s == 0:
        raise InvalidSignatureError("s", "signature s is zero")
    if s > SECP256K1_HALF_N:
        raise InvalidSignatureError("high_s", "signature s is in the upper half (malleable)")
    try:
        public_key = Signature(vrs=(v - 27, r, s)).recover_public_key_from_msg_hash(digest)
    except (BadSignature, ValidationError):
        raise InvalidSignatureError("unrecoverable", "signature recovers no public key") from None
    return public_key.to_checksum_address()


@dataclass(frozen=True)
class Receipt:
    """A signed Checkpoint receipt: the client's word that it received
    `tokens_used` tokens (cumulative) of a transcript hashing to `content_hash`.

    `content_hash` and `signature` are 0x-prefixed lowercase hex. The
    signature is the contract's `proofData`.
    """

    session_id: int
    tokens_used: int
    content_hash: str
    signature: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "session_id", _uint256(self.session_id, "session_id"))
        object.__setattr__(self, "tokens_used", _uint256(self.tokens_used, "tokens_used"))
        object.__setattr__(
            self, "content_hash", "0x" + to_bytes32(self.content_hash, "content_hash").hex()
        )
        object.__setattr__(self, "signature", "0x" + _signature_bytes(self.signature).hex())

    @classmethod
    def from_mapping(cls, value: Mapping[str, Any]) -> Receipt:
        """A receipt from a mapping with snake_case or camelCase keys (also the
        reference's `proofData` for the signature). Raises SDKError
        (INVALID_ARGUMENT) when a field is missing."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            camel = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), f.name)
            names = (f.name, camel, *(("proofData",) if f.name == "signature" else ()))
            given = [n for n in names if n in value]
            if not given:
                raise SDKError(SDKErrorCode.INVALID_ARGUMENT, f"receipt is missing {f.name!r}")
            values[f.name] = value[given[0]]
        return cls(**values)

    @property
    def signature_bytes(self) -> bytes:
        """The 65 raw signature bytes."""
        return bytes.fromhex(self.signature[2:])

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (the field names of the v2 wire frame)."""
        return {
            "session_id": self.session_id,
            "tokens_used": self.tokens_used,
            "content_hash": self.content_hash,
            "signature": self.signature,
        }

    @property
    def digest(self) -> bytes:
        """hashStruct(Checkpoint) of the signed fields (domain not included)."""
        return checkpoint_struct_hash(self.session_id, self.tokens_used, self.content_hash)

    def call_args(self) -> tuple[int, int, bytes, bytes]:
        """The receipt as the marketplace takes it: the arguments of submitCheckpoint,
        settleWithReceipt and requestCloseWithReceipt, and a settleBatch item."""
        return (
            self.session_id,
            self.tokens_used,
            bytes.fromhex(self.content_hash[2:]),
            self.signature_bytes,
        )

    @staticmethod
    def no_receipt_args(session_id: int) -> tuple[int, int, bytes, bytes]:
        """`call_args` of no receipt (a settleBatch item that settles as recorded): zero
        tokens, zero hash, empty signature. Kept beside `call_args` so the struct's
        layout is written in one place."""
        return (session_id, 0, bytes(32), b"")


class ReceiptSigner:
    """Signs receipts for one key on one domain; the fast path for streaming.

    Parsing the key and deriving its address happen once here instead of per
    receipt (with the pure-Python backend that alone is ~1 ms per call).
    """

    def __init__(self, private_key: PrivateKeyLike, domain: Eip712Domain) -> None:
        self._key = to_private_key(private_key)
        self.domain = domain
        self.address: str = self._key.public_key.to_checksum_address()

    def sign(self, session_id: int, tokens_used: int, content_hash: bytes | str) -> Receipt:
        """Sign `Checkpoint(session_id, tokens_used, content_hash)`."""
        content = to_bytes32(content_hash, "content_hash")
        digest = receipt_digest(self.domain, session_id, tokens_used, content)
        return Receipt(
            session_id=session_id,
            tokens_used=tokens_used,
            content_hash="0x" + content.hex(),
            signature="0x" + sign_digest(self._key, digest).hex(),
        )

    def sign_session_init(self, session_id: int, nonce: bytes | str) -> str:
        """Answer a host's greeting nonce; returns the 0x-hex signature."""
        digest = session_init_digest(self.domain, session_id, nonce)
        return "0x" + sign_digest(self._key, digest).hex()


def sign_receipt(
    private_key: PrivateKeyLike,
    domain: Eip712Domain,
    session_id: int,
    tokens_used: int,
    content_hash: bytes | str,
) -> Receipt:
    """Sign one Checkpoint receipt. For many receipts use `ReceiptSigner`."""
    return ReceiptSigner(private_key, domain).sign(session_id, tokens_used, content_hash)


def recover_receipt_signer(domain: Eip712Domain, receipt: Receipt) -> str:
    """The checksummed address that signed `receipt` on `domain`.

    Raises InvalidSignatureError for malformed/malleable signatures. A
    tampered field does not raise: it recovers a different address, so
    always compare the result with the expected signer.
    """
    return recover_signer(_typed_digest(domain, receipt.digest), receipt.signature)


def check_receipt(
    receipt: Receipt,
    domain: Eip712Domain,
    *,
    session_id: int,
    signer: str,
    recorded: int = 0,
    max_tokens: int | None = None,
    sent: Container[tuple[int, str]] | None = None,
) -> None:
    """The one receipt check (the SDK before it submits, the host before it stores,
    ProofVerifier): raise SDKError unless `receipt` is a valid new receipt.

    The rules, in order, each with the code the caller reports:

    - for another session than `session_id`: PROOF_VERIFICATION_FAILED;
    - `tokens_used` not above `recorded` (what the host acknowledged, or the
      chain recorded): STALE_RECEIPT;
    - above `max_tokens` (what the deposit pays for), when given:
      SESSION_BUDGET_EXHAUSTED;
    - `(tokens_used, content_hash)` not among the states `sent` (the host's
      own record of what it streamed), when given: PROOF_VERIFICATION_FAILED;
    - a malformed or malleable signature: INVALID_PROOF;
    - signed by anyone but `signer` (or by nobody): WRONG_SIGNER when the
      fields are known to be a state that was sent, otherwise
      PROOF_VERIFICATION_FAILED, since an altered field also recovers
      another address.
    """
    if receipt.session_id != session_id:
        raise SDKError(
            SDKErrorCode.PROOF_VERIFICATION_FAILED,
            f"receipt is for session {receipt.session_id}, this is session {session_id}",
            {"session_id": receipt.session_id},
        )
    if receipt.tokens_used <= recorded:
        raise SDKError(
            SDKErrorCode.STALE_RECEIPT,
            f"receipt for {receipt.tokens_used} tokens is not above the {recorded} already "
            f"accepted for session {session_id}; sign a newer one",
            {"recorded": recorded},
        )
    if max_tokens is not None and receipt.tokens_used > max_tokens:
        raise SDKError(
            SDKErrorCode.SESSION_BUDGET_EXHAUSTED,
            f"receipt claims {receipt.tokens_used} tokens but session {session_id}'s deposit "
            f"pays for {max_tokens}",
            {"max_tokens": max_tokens},
        )
    if sent is not None and (receipt.tokens_used, receipt.content_hash) not in sent:
        raise SDKError(
            SDKErrorCode.PROOF_VERIFICATION_FAILED,
            f"no state with {receipt.tokens_used} tokens and hash {receipt.content_hash} was sent",
        )
    try:
        got = recover_receipt_signer(domain, receipt)
    except InvalidSignatureError as exc:
        raise SDKError(
            SDKErrorCode.INVALID_PROOF,
            f"proof is not a valid 65-byte receipt signature: {exc.message}",
            exc.details,
        ) from None
    if not same_address(got, signer) or same_address(got, _ZERO_ADDRESS):
        raise SDKError(
            SDKErrorCode.WRONG_SIGNER
            if sent is not None
            else SDKErrorCode.PROOF_VERIFICATION_FAILED,
            f"receipt was signed by {got}, not session {session_id}'s key {signer}"
            + ("" if sent is not None else " (or the fields were altered)"),
            {"signer": got, "session_key": signer},
        )


def sign_session_init(
    private_key: PrivateKeyLike, domain: Eip712Domain, session_id: int, nonce: bytes | str
) -> str:
    """Sign `SessionInit(session_id, nonce)`; returns the 0x-hex signature."""
    return ReceiptSigner(private_key, domain).sign_session_init(session_id, nonce)


def recover_session_init_signer(
    domain: Eip712Domain, session_id: int, nonce: bytes | str, signature: bytes | str
) -> str:
    """The checksummed address that signed `SessionInit(session_id, nonce)`."""
    return recover_signer(session_init_digest(domain, session_id, nonce), signature)


def expected_receipt_signer(session_key: str, depositor: str) -> str:
    """Who must sign a session's receipts: its session key, or the depositor
    when the session key is the zero address (the contract's rule)."""
    for name, value in (("session_key", session_key), ("depositor", depositor)):
        if not is_valid_address(value):
            raise SDKError(SDKErrorCode.INVALID_ADDRESS, f"{name} is not an address: {value!r}")
    chosen = depositor if int(session_key, 16) == 0 else session_key
    return to_checksum_address(chosen)


def same_address(a: str, b: str) -> bool:
    """Case-insensitive address equality (checksums aside)."""
    return a.lower() == b.lower()


# --- the transcript hash chain ------------------------------------------------------------


def chain_prompt(previous: bytes, text: str) -> bytes:
    """h' = keccak256(h || 0x01 || keccak256(utf8(prompt)))."""
    return keccak(previous + PROMPT_TAG + keccak(text.encode("utf-8")))


def chain_chunk(previous: bytes, text: str) -> bytes:
    """h' = keccak256(h || 0x02 || keccak256(utf8(chunk)))."""
    return keccak(previous + CHUNK_TAG + keccak(text.encode("utf-8")))


class ContentHasher:
    """The running content hash of a session's transcript.

    Client and host feed it the same prompts and the same chunk texts, in
    order, and get the same `digest`; the client signs receipts over it.
    Chunk boundaries matter: the host hashes each chunk exactly as it sends
    it. Text with lone surrogates cannot be UTF-8 encoded and raises
    UnicodeEncodeError (the protocol parser never lets such text through).
    """

    def __init__(self, start: bytes | str = GENESIS_HASH) -> None:
        self._digest = to_bytes32(start, "start")

    def update_prompt(self, text: str) -> bytes:
        """Fold in a prompt; returns the new digest."""
        self._digest = chain_prompt(self._digest, text)
        return self._digest

    def update_chunk(self, text: str) -> bytes:
        """Fold in one streamed response chunk; returns the new digest."""
        self._digest = chain_chunk(self._digest, text)
        return self._digest

    @property
    def digest(self) -> bytes:
        """The current 32-byte hash (GENESIS_HASH before anything was added)."""
        return self._digest

    @property
    def hexdigest(self) -> str:
        """The current hash as 0x-prefixed lowercase hex (the wire form)."""
        return "0x" + self._digest.hex()

    def copy(self) -> ContentHasher:
        """An independent hasher at the same point of the chain."""
        return ContentHasher(self._digest)


# --- the reference's ProofVerifier ------------------------------------------------------


class ProofVerifier:
    """Generates and verifies checkpoint proofs, as the reference's ProofVerifier.

    Departure (DESIGN.md section 6): a proof is the client's 65-byte EIP-712
    receipt signature over (session id, cumulative tokens, content hash); the
    reference's `checkpointNumber` and `timestamp` are not part of it.
    Verification is byte-for-byte what ProofSystem.sol does.
    """

    def __init__(self, domain: Eip712Domain) -> None:
        self.domain = domain

    def generate_proof(
        self,
        private_key: PrivateKeyLike,
        *,
        session_id: int,
        tokens_used: int,
        content_hash: bytes | str,
    ) -> Receipt:
        """Sign a receipt; `receipt.signature` is the proof data the contract takes."""
        return sign_receipt(private_key, self.domain, session_id, tokens_used, content_hash)

    def recover_checkpoint_signer(
        self,
        proof: str | bytes,
        *,
        session_id: int,
        tokens_used: int,
        content_hash: bytes | str,
    ) -> str:
        """Who signed this proof. Raises InvalidSignatureError for malformed proofs."""
        digest = receipt_digest(self.domain, session_id, tokens_used, content_hash)
        return recover_signer(digest, proof)

    def verify_checkpoint_proof(
        self,
        proof: str | bytes | Receipt,
        *,
        session_id: int,
        tokens_used: int,
        content_hash: bytes | str,
        expected_signer: str,
    ) -> bool:
        """True iff `proof` is a valid receipt for exactly these values by `expected_signer`.

        Never raises for a bad proof (malformed, malleable, wrong signer, a
        Receipt whose fields differ from the expected ones): it returns False.
        """
        content = "0x" + to_bytes32(content_hash, "content_hash").hex()
        if isinstance(proof, Receipt):
            if (proof.session_id, proof.tokens_used) != (session_id, tokens_used):
                return False
            if proof.content_hash != content:
                return False
            receipt = proof
        else:
            try:
                receipt = Receipt(
                    session_id, tokens_used, content, "0x" + _signature_bytes(proof).hex()
                )
            except InvalidSignatureError:
                return False
        try:
            check_receipt(
                receipt,
                self.domain,
                session_id=session_id,
                signer=expected_signer,
                recorded=tokens_used - 1,
            )
        except SDKError:
            return False
        return True

    def verify_session_init(
        self,
        signature: str | bytes,
        *,
        session_id: int,
        nonce: bytes | str,
        expected_signer: str,
    ) -> bool:
        """True iff `signature` proves `expected_signer` answered `nonce` for the session."""
        try:
            signer = recover_session_init_signer(self.domain, session_id, nonce, signature)
        except InvalidSignatureError:
            return False
        return same_address(signer, expected_signer)
