#!/usr/bin/env python3
"""Write tests/vectors/receipts.json: EIP-712 receipt test vectors.

The Python SDK/host (fabstir.protocol.receipts) and ProofSystem.sol must
agree on every byte of these. The file is generated, never edited by hand;
`tests/protocol/test_receipts.py` fails when it differs from what this
script produces now. Output is deterministic: fixed inputs, RFC 6979
signatures, stable key order.

    python tools/gen_receipt_vectors.py           # (re)write the file
    python tools/gen_receipt_vectors.py --check   # exit 1 if it is stale

Keys are anvil's well-known test keys (public; never use them with value).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from eth_utils.crypto import keccak
from fabstir.protocol.receipts import (
    CHECKPOINT_TYPE,
    CHECKPOINT_TYPEHASH,
    EIP712_DOMAIN_TYPE,
    EIP712_DOMAIN_TYPEHASH,
    GENESIS_HASH,
    SECP256K1_N,
    SESSION_INIT_TYPE,
    SESSION_INIT_TYPEHASH,
    ContentHasher,
    Eip712Domain,
    ReceiptSigner,
    checkpoint_struct_hash,
    checkpoint_typed_data,
    receipt_digest,
    recover_signer,
    session_init_digest,
    session_init_struct_hash,
    session_init_typed_data,
)

OUTPUT = Path(__file__).resolve().parents[1] / "tests" / "vectors" / "receipts.json"

# anvil accounts 0, 1 and 2 (mnemonic "test test ... junk").
ANVIL_KEYS = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
)
# The first two contracts anvil's account 0 deploys (nonce 0 and 1).
CONTRACTS = (
    "0x5FbDB2315678afecb367f032d93F642f64180aa3",
    "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512",
)
LOCAL, BASE_SEPOLIA = 31337, 84532

# A short transcript with non-ASCII text, so UTF-8 encoding is pinned too.
TRANSCRIPT: tuple[tuple[str, str], ...] = (
    ("prompt", "What is the capital of France?"),
    ("chunk", "The capital"),
    ("chunk", " of France is Paris."),
    ("prompt", "Und auf Deutsch? Grüße 🌍"),
    ("chunk", "Paris ist die Hauptstadt — "),
    ("chunk", "Frankreichs."),
)


def _hex(data: bytes) -> str:
    return "0x" + data.hex()


def _transcript_hash(steps: int) -> bytes:
    hasher = ContentHasher()
    for kind, text in TRANSCRIPT[:steps]:
        if kind == "prompt":
            hasher.update_prompt(text)
        else:
            hasher.update_chunk(text)
    return hasher.digest


def _content_hash_chain() -> dict[str, Any]:
    hasher = ContentHasher()
    steps = []
    for kind, text in TRANSCRIPT:
        digest = hasher.update_prompt(text) if kind == "prompt" else hasher.update_chunk(text)
        steps.append({"kind": kind, "text": text, "hash": _hex(digest)})
    return {"genesis": _hex(GENESIS_HASH), "steps": steps}


# (name, chain id, contract index, key index, session id, tokens used, content hash)
CHECKPOINT_CASES: tuple[tuple[str, int, int, int, int, int, bytes], ...] = (
    ("new-session-zero-tokens", LOCAL, 0, 0, 1, 0, GENESIS_HASH),
    ("first-answer", LOCAL, 0, 0, 1, 7, _transcript_hash(3)),
    ("other-contract", LOCAL, 1, 1, 42, 100, _transcript_hash(6)),
    ("base-sepolia-large-tokens", BASE_SEPOLIA, 0, 1, 7, 2**40 - 1, _transcript_hash(6)),
    ("base-sepolia-large-session", BASE_SEPOLIA, 1, 2, 2**64 + 1, 123_456_789, keccak(b"x")),
    ("uint256-extremes", BASE_SEPOLIA, 1, 2, 2**256 - 1, 2**256 - 1, b"\xff" * 32),
)

# (name, chain id, contract index, key index, session id, nonce)
SESSION_INIT_CASES: tuple[tuple[str, int, int, int, int, bytes], ...] = (
    ("local", LOCAL, 0, 0, 1, keccak(b"fabstir greeting nonce 1")),
    ("base-sepolia", BASE_SEPOLIA, 1, 1, 42, bytes(range(32))),
)


def _domain(chain_id: int, contract: int) -> Eip712Domain:
    return Eip712Domain(chain_id=chain_id, verifying_contract=CONTRACTS[contract])


def _checkpoints() -> list[dict[str, Any]]:
    out = []
    for name, chain_id, contract, key, session_id, tokens, content in CHECKPOINT_CASES:
        domain = _domain(chain_id, contract)
        signer = ReceiptSigner(ANVIL_KEYS[key], domain)
        receipt = signer.sign(session_id, tokens, content)
        typed = checkpoint_typed_data(domain, session_id, tokens, content)
        out.append(
            {
                "name": name,
                "domain": typed["domain"],
                "message": typed["message"],
                "privateKey": ANVIL_KEYS[key],
                "signer": signer.address,
                "domainSeparator": _hex(domain.separator),
                "structHash": _hex(checkpoint_struct_hash(session_id, tokens, content)),
                "digest": _hex(receipt_digest(domain, session_id, tokens, content)),
                "signature": receipt.signature,
            }
        )
    return out


def _session_inits() -> list[dict[str, Any]]:
    out = []
    for name, chain_id, contract, key, session_id, nonce in SESSION_INIT_CASES:
        domain = _domain(chain_id, contract)
        signer = ReceiptSigner(ANVIL_KEYS[key], domain)
        typed = session_init_typed_data(domain, session_id, nonce)
        out.append(
            {
                "name": name,
                "domain": typed["domain"],
                "message": typed["message"],
                "privateKey": ANVIL_KEYS[key],
                "signer": signer.address,
                "domainSeparator": _hex(domain.separator),
                "structHash": _hex(session_init_struct_hash(session_id, nonce)),
                "digest": _hex(session_init_digest(domain, session_id, nonce)),
                "signature": signer.sign_session_init(session_id, nonce),
            }
        )
    return out


def _invalid(checkpoints: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Signatures a verifier must refuse, derived from checkpoint 1."""
    base = checkpoints[1]
    sig = bytes.fromhex(base["signature"][2:])
    r, s, v = sig[:32], int.from_bytes(sig[32:64], "big"), sig[64]
    # The malleable twin: same r, s' = n - s, parity flipped. ecrecover would
    # accept it; OpenZeppelin's ECDSA (and we) must not.
    high_s = r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])
    return [
        {"name": "high-s twin", "reason": "high_s", "signature": _hex(high_s)},
        {"name": "v as 0/1", "reason": "v", "signature": _hex(sig[:64] + bytes([v - 27]))},
        {"name": "v = 29", "reason": "v", "signature": _hex(sig[:64] + bytes([29]))},
        {"name": "64 bytes (EIP-2098 form)", "reason": "length", "signature": _hex(sig[:64])},
        {"name": "s = 0", "reason": "s", "signature": _hex(r + bytes(32) + bytes([v]))},
    ]


def _tampered(checkpoints: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Checkpoint 1's signature over a changed field: valid, but a different signer."""
    base = checkpoints[1]
    msg = base["message"]
    domain = Eip712Domain(base["domain"]["chainId"], base["domain"]["verifyingContract"])
    out = []
    variants = (
        ("tokensUsed + 1", domain, {**msg, "tokensUsed": msg["tokensUsed"] + 1}),
        ("sessionId + 1", domain, {**msg, "sessionId": msg["sessionId"] + 1}),
        ("contentHash changed", domain, {**msg, "contentHash": _hex(keccak(b"other"))}),
        ("other chain", _domain(BASE_SEPOLIA, 0), msg),
        ("other contract", _domain(LOCAL, 1), msg),
    )
    for name, dom, message in variants:
        digest = receipt_digest(
            dom, message["sessionId"], message["tokensUsed"], message["contentHash"]
        )
        out.append(
            {
                "name": name,
                "domain": dom.as_dict(),
                "message": message,
                "signature": base["signature"],
                "recovers": recover_signer(digest, base["signature"]),
            }
        )
    return out


def build_vectors() -> dict[str, Any]:
    """Every vector, as the JSON document."""
    checkpoints = _checkpoints()
    return {
        "description": (
            "EIP-712 Checkpoint receipts and SessionInit proofs of the Fabstir marketplace. "
            "Generated by tools/gen_receipt_vectors.py; do not edit."
        ),
        "types": {
            "EIP712Domain": EIP712_DOMAIN_TYPE,
            "Checkpoint": CHECKPOINT_TYPE,
            "SessionInit": SESSION_INIT_TYPE,
        },
        "typeHashes": {
            "EIP712Domain": _hex(EIP712_DOMAIN_TYPEHASH),
            "Checkpoint": _hex(CHECKPOINT_TYPEHASH),
            "SessionInit": _hex(SESSION_INIT_TYPEHASH),
        },
        "contentHashChain": _content_hash_chain(),
        "checkpoints": checkpoints,
        "sessionInits": _session_inits(),
        "invalidSignatures": {"of": checkpoints[1]["name"], "cases": _invalid(checkpoints)},
        "tampered": {
            "of": checkpoints[1]["name"],
            "signer": checkpoints[1]["signer"],
            "cases": _tampered(checkpoints),
        },
    }


def render(vectors: dict[str, Any]) -> str:
    """Stable text form: two-space indent, UTF-8, trailing newline."""
    return json.dumps(vectors, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render(build_vectors())
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale; run tools/gen_receipt_vectors.py", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
