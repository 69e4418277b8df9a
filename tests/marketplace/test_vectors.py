"""ProofSystem agrees with the shared receipt vectors (tests/vectors/receipts.json).

The Python SDK is tested against the same file, so the two sides sign and verify
the same bytes. A vector for another chain id cannot match on this chain: its
digest must differ and its signature must not recover the signer here, which is
the cross-chain replay check.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.marketplace import ZERO

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "receipts.json"

if not VECTORS.exists():
    pytest.skip(f"{VECTORS} is not there (yet)", allow_module_level=True)

DATA = json.loads(VECTORS.read_text())


def _hex(value):
    return "0x" + bytes(value).hex()


def _checkpoint_args(v):
    m = v["message"]
    return (
        v["domain"]["verifyingContract"],
        int(m["sessionId"]),
        int(m["tokensUsed"]),
        bytes.fromhex(m["contentHash"][2:]),
    )


def _local(v, chain):
    return v["domain"]["chainId"] == chain.chain_id


def test_vector_file_covers_this_chain_and_another(chain):
    chains = {v["domain"]["chainId"] for v in DATA["checkpoints"]}
    assert chain.chain_id in chains
    assert chains - {chain.chain_id}


def test_type_hashes(env):
    th = DATA["typeHashes"]
    assert _hex(env.proofs.CHECKPOINT_TYPEHASH()) == th["Checkpoint"]
    assert _hex(env.proofs.DOMAIN_TYPEHASH()) == th["EIP712Domain"]
    assert _hex(env.proofs.SESSION_INIT_TYPEHASH()) == th["SessionInit"]


@pytest.mark.parametrize("v", DATA["checkpoints"], ids=lambda v: v["name"])
def test_checkpoint_vector(env, chain, v):
    proofs = env.proofs
    args = _checkpoint_args(v)
    sig = bytes.fromhex(v["signature"][2:])
    digest = _hex(proofs.checkpointDigest(*args))
    signer = proofs.recoverCheckpointSigner(*args, sig)
    separator = _hex(proofs.domainSeparator(v["domain"]["verifyingContract"]))
    if _local(v, chain):
        assert separator == v["domainSeparator"]
        assert digest == v["digest"]
        assert signer == v["signer"]
    else:  # another chain: the same receipt means nothing here
        assert separator != v["domainSeparator"]
        assert digest != v["digest"]
        assert signer != v["signer"]


@pytest.mark.parametrize("v", DATA["sessionInits"], ids=lambda v: v["name"])
def test_session_init_vector(env, chain, v):
    proofs = env.proofs
    vc = v["domain"]["verifyingContract"]
    sid, nonce = int(v["message"]["sessionId"]), bytes.fromhex(v["message"]["nonce"][2:])
    digest = _hex(proofs.sessionInitDigest(vc, sid, nonce))
    signer = proofs.recoverSessionInitSigner(vc, sid, nonce, bytes.fromhex(v["signature"][2:]))
    if _local(v, chain):
        assert digest == v["digest"]
        assert signer == v["signer"]
    else:
        assert digest != v["digest"]
        assert signer != v["signer"]


@pytest.mark.parametrize("case", DATA["invalidSignatures"]["cases"], ids=lambda c: c["name"])
def test_invalid_signature_vector(env, case):
    (base,) = [v for v in DATA["checkpoints"] if v["name"] == DATA["invalidSignatures"]["of"]]
    sig = bytes.fromhex(case["signature"][2:])
    assert env.proofs.recoverCheckpointSigner(*_checkpoint_args(base), sig) == ZERO


@pytest.mark.parametrize("case", DATA["tampered"]["cases"], ids=lambda c: c["name"])
def test_tampered_vector(env, chain, case):
    """A field changed after signing recovers someone else, never the signer."""
    v = {"domain": case["domain"], "message": case["message"]}
    sig = bytes.fromhex(case["signature"][2:])
    recovered = env.proofs.recoverCheckpointSigner(*_checkpoint_args(v), sig)
    if _local(v, chain):
        assert recovered != DATA["tampered"]["signer"]
        assert recovered == case["recovers"]
    else:
        # The contract takes the chain id from the chain, never from the caller: the
        # receipt was signed for this chain, so here it is valid whatever the case
        # claims; on the claimed chain it would recover `recovers` (checked in Python).
        assert recovered == DATA["tampered"]["signer"]
