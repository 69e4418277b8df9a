"""Content addresses: CIDv1, raw codec, sha2-256, base32 ("bafkrei...").

The CID names the stored (encrypted) bytes exactly, so a blob that does not
hash to its CID is refused on read whatever backend returned it. It is the
CID `ipfs add --cid-version=1 --raw-leaves` gives a single-block file.
"""

from __future__ import annotations

from multiformats import CID, multihash

from fabstir.sdk.errors import SDKError, SDKErrorCode

_CODEC = "raw"
_HASH = "sha2-256"


def compute_cid(data: bytes) -> str:
    """The CIDv1 (raw, sha2-256, base32) of `data`."""
    return str(CID("base32", 1, _CODEC, multihash.digest(data, _HASH)))


def parse_cid(text: str) -> CID:
    """Decode a CID we can verify; SDKError(INVALID_ARGUMENT) otherwise."""
    if not isinstance(text, str) or not 8 <= len(text) <= 128:
        raise SDKError(SDKErrorCode.INVALID_ARGUMENT, f"not a CID: {text!r}")
    try:
        cid = CID.decode(text)
    except (ValueError, KeyError) as exc:
        raise SDKError(SDKErrorCode.INVALID_ARGUMENT, f"not a CID: {text!r} ({exc})") from None
    if cid.version != 1 or cid.codec.name != _CODEC or cid.hashfun.name != _HASH:
        raise SDKError(
            SDKErrorCode.INVALID_ARGUMENT,
            f"unsupported CID {text!r}: expected CIDv1 raw sha2-256 (bafkrei...)",
        )
    return cid


def is_cid(text: object) -> bool:
    """True if `text` is a CID this SDK can verify (CIDv1 raw sha2-256)."""
    if not isinstance(text, str):
        return False
    try:
        parse_cid(text)
    except SDKError:
        return False
    return True


def canonical_cid(text: str) -> str:
    """The lowercase base32 form of a CID (also a safe file name)."""
    return str(parse_cid(text).set(base="base32"))


def verify_cid(cid: str, data: bytes) -> None:
    """Raise SDKError(STORAGE_ERROR) unless `data` hashes to `cid`."""
    expected = parse_cid(cid)
    if multihash.digest(data, _HASH) != expected.digest:
        raise SDKError(
            SDKErrorCode.STORAGE_ERROR,
            f"content does not match its CID {cid}: the backend returned altered bytes",
            {"cid": cid},
        )
