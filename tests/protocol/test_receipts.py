"""EIP-712 receipts: the vector file, eth-account agreement, malleability, tampering."""

from __future__ import annotations

import contextlib
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_keys.datatypes import PrivateKey, Signature
from eth_utils.crypto import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from fabstir.protocol.receipts import (
    CHECKPOINT_TYPEHASH,
    CHUNK_TAG,
    GENESIS_HASH,
    PROMPT_TAG,
    SECP256K1_N,
    ContentHasher,
    Eip712Domain,
    InvalidSignatureError,
    ProofVerifier,
    Receipt,
    ReceiptSigner,
    check_receipt,
    checkpoint_typed_data,
    expected_receipt_signer,
    receipt_digest,
    recover_receipt_signer,
    recover_session_init_signer,
    recover_signer,
    session_init_typed_data,
    sign_receipt,
    sign_session_init,
)
from fabstir.sdk.errors import SDKError, SDKErrorCode

ROOT = Path(__file__).resolve().parents[2]
VECTORS_PATH = ROOT / "tests" / "vectors" / "receipts.json"
KEY0 = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
ADDR0 = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
KEY1 = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
ADDR1 = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
MARKET = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
DOMAIN = Eip712Domain(chain_id=31337, verifying_contract=MARKET)
HASH = "0x" + keccak(b"transcript").hex()


def _load_generator() -> ModuleType:
    path = ROOT / "tools" / "gen_receipt_vectors.py"
    spec = importlib.util.spec_from_file_location("gen_receipt_vectors", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def vectors() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
    return data


def _domain(d: dict[str, Any]) -> Eip712Domain:
    return Eip712Domain(d["chainId"], d["verifyingContract"], d["name"], d["version"])


# --- the vector file ------------------------------------------------------------------


def test_vector_file_is_what_the_generator_produces_now() -> None:
    gen = _load_generator()
    expected = gen.render(gen.build_vectors())
    assert VECTORS_PATH.read_text(encoding="utf-8") == expected, (
        "tests/vectors/receipts.json is stale: run python tools/gen_receipt_vectors.py"
    )


def test_vector_file_covers_what_the_contract_tests_need(vectors: dict[str, Any]) -> None:
    cps = vectors["checkpoints"]
    assert len(cps) >= 5
    assert {c["domain"]["chainId"] for c in cps} == {31337, 84532}
    assert len({c["domain"]["verifyingContract"] for c in cps}) == 2
    assert any(c["message"]["tokensUsed"] == 0 for c in cps)
    assert any(c["message"]["tokensUsed"] == 2**40 - 1 for c in cps)
    assert any(int(c["message"]["contentHash"], 16) not in (0, 2**256 - 1) for c in cps)
    assert len(vectors["sessionInits"]) >= 2


def test_checkpoint_vectors_agree_with_eth_account(vectors: dict[str, Any]) -> None:
    for case in vectors["checkpoints"]:
        domain = _domain(case["domain"])
        msg = case["message"]
        typed = checkpoint_typed_data(
            domain, msg["sessionId"], msg["tokensUsed"], msg["contentHash"]
        )
        # eth-account's generic encoder is an independent implementation.
        signable = encode_typed_data(full_message=typed)
        assert "0x" + signable.header.hex() == case["domainSeparator"]
        assert "0x" + signable.body.hex() == case["structHash"]
        digest = receipt_digest(domain, msg["sessionId"], msg["tokensUsed"], msg["contentHash"])
        assert "0x" + digest.hex() == case["digest"]
        assert keccak(b"\x19\x01" + signable.header + signable.body) == digest
        assert Account.from_key(case["privateKey"]).address == case["signer"]
        assert (
            "0x" + Account.sign_message(signable, case["privateKey"]).signature.hex()
            == (case["signature"])
        )
        receipt = Receipt(
            msg["sessionId"], msg["tokensUsed"], msg["contentHash"], case["signature"]
        )
        assert recover_receipt_signer(domain, receipt) == case["signer"]
        assert Account.recover_message(signable, signature=case["signature"]) == case["signer"]
        assert sign_receipt(case["privateKey"], domain, *receipt_fields(msg)) == receipt


def receipt_fields(msg: dict[str, Any]) -> tuple[int, int, str]:
    return msg["sessionId"], msg["tokensUsed"], msg["contentHash"]


def test_session_init_vectors_agree_with_eth_account(vectors: dict[str, Any]) -> None:
    for case in vectors["sessionInits"]:
        domain = _domain(case["domain"])
        msg = case["message"]
        signable = encode_typed_data(
            full_message=session_init_typed_data(domain, msg["sessionId"], msg["nonce"])
        )
        assert "0x" + signable.body.hex() == case["structHash"]
        assert "0x" + signable.header.hex() == case["domainSeparator"]
        sig = sign_session_init(case["privateKey"], domain, msg["sessionId"], msg["nonce"])
        assert sig == case["signature"]
        assert "0x" + Account.sign_message(signable, case["privateKey"]).signature.hex() == sig
        assert (
            recover_session_init_signer(domain, msg["sessionId"], msg["nonce"], sig)
            == (case["signer"])
        )


def test_invalid_signature_vectors_are_rejected(vectors: dict[str, Any]) -> None:
    base = next(
        c for c in vectors["checkpoints"] if c["name"] == vectors["invalidSignatures"]["of"]
    )
    digest = bytes.fromhex(base["digest"][2:])
    for case in vectors["invalidSignatures"]["cases"]:
        with pytest.raises(InvalidSignatureError) as info:
            recover_signer(digest, case["signature"])
        assert info.value.reason == case["reason"], case["name"]
        assert info.value.code is SDKErrorCode.INVALID_PROOF


def test_high_s_twin_is_a_real_signature_that_ecrecover_alone_would_accept(
    vectors: dict[str, Any],
) -> None:
    base = vectors["checkpoints"][1]
    twin = bytes.fromhex(vectors["invalidSignatures"]["cases"][0]["signature"][2:])
    r, s, v = (int.from_bytes(twin[:32], "big"), int.from_bytes(twin[32:64], "big"), twin[64])
    # Without the low-s rule it recovers the same signer: that is the malleability.
    pub = Signature(vrs=(v - 27, r, s)).recover_public_key_from_msg_hash(
        bytes.fromhex(base["digest"][2:])
    )
    assert pub.to_checksum_address() == base["signer"]


def test_tampered_vectors_recover_someone_else(vectors: dict[str, Any]) -> None:
    signer = vectors["tampered"]["signer"]
    for case in vectors["tampered"]["cases"]:
        domain = _domain(case["domain"])
        receipt = Receipt(*receipt_fields(case["message"]), case["signature"])
        recovered = recover_receipt_signer(domain, receipt)
        assert recovered == case["recovers"] != signer, case["name"]


# --- signing and recovery ---------------------------------------------------------------


def test_sign_and_recover_round_trip_and_every_field_matters() -> None:
    receipt = sign_receipt(KEY0, DOMAIN, 5, 300, HASH)
    assert recover_receipt_signer(DOMAIN, receipt) == ADDR0
    variants = [
        (DOMAIN, Receipt(6, 300, HASH, receipt.signature)),
        (DOMAIN, Receipt(5, 301, HASH, receipt.signature)),
        (DOMAIN, Receipt(5, 300, "0x" + keccak(b"other").hex(), receipt.signature)),
        (Eip712Domain(84532, MARKET), receipt),
        (Eip712Domain(31337, "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"), receipt),
        (Eip712Domain(31337, MARKET, name="Other"), receipt),
        (Eip712Domain(31337, MARKET, version="2"), receipt),
    ]
    for domain, tampered in variants:
        with contextlib.suppress(InvalidSignatureError):  # no key at all is also fine
            assert recover_receipt_signer(domain, tampered) != ADDR0


@settings(max_examples=25, deadline=None)
@given(
    session_id=st.integers(0, 2**256 - 1),
    tokens=st.integers(0, 2**256 - 1),
    content=st.binary(min_size=32, max_size=32),
)
def test_round_trip_and_high_s_twin_property(session_id: int, tokens: int, content: bytes) -> None:
    receipt = sign_receipt(KEY1, DOMAIN, session_id, tokens, content)
    assert recover_receipt_signer(DOMAIN, receipt) == ADDR1
    sig = receipt.signature_bytes
    s = int.from_bytes(sig[32:64], "big")
    twin = sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - sig[64]])
    with pytest.raises(InvalidSignatureError) as info:
        recover_receipt_signer(
            DOMAIN, Receipt(session_id, tokens, "0x" + content.hex(), "0x" + twin.hex())
        )
    assert info.value.reason == "high_s"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda sig: sig[:64] + bytes([sig[64] - 27]), "v"),
        (lambda sig: sig[:64] + b"\x1d", "v"),
        (lambda sig: sig[:64], "length"),
        (lambda sig: sig + b"\x00", "length"),
        (lambda sig: bytes(32) + sig[32:], "r"),
        (lambda sig: SECP256K1_N.to_bytes(32, "big") + sig[32:], "r"),
        (lambda sig: sig[:32] + bytes(32) + sig[64:], "s"),
    ],
)
def test_malformed_signatures_are_rejected(mutate: Any, reason: str) -> None:
    receipt = sign_receipt(KEY0, DOMAIN, 1, 1, HASH)
    digest = receipt_digest(DOMAIN, 1, 1, HASH)
    with pytest.raises(InvalidSignatureError) as info:
        recover_signer(digest, mutate(receipt.signature_bytes))
    assert info.value.reason == reason


def test_signature_text_forms() -> None:
    receipt = sign_receipt(KEY0, DOMAIN, 1, 1, HASH)
    digest = receipt_digest(DOMAIN, 1, 1, HASH)
    assert recover_signer(digest, receipt.signature.upper().replace("0X", "0x")) == ADDR0
    assert recover_signer(digest, receipt.signature[2:]) == ADDR0
    for bad in ("0xzz", receipt.signature[:10] + " " + receipt.signature[11:], "0x123"):
        with pytest.raises(InvalidSignatureError):
            recover_signer(digest, bad)


def test_private_key_forms_agree_and_bad_keys_do_not_leak() -> None:
    forms: list[Any] = [
        KEY0,
        KEY0[2:],
        bytes.fromhex(KEY0[2:]),
        PrivateKey(bytes.fromhex(KEY0[2:])),
        Account.from_key(KEY0),
    ]
    sigs = {sign_receipt(k, DOMAIN, 1, 2, HASH).signature for k in forms}
    assert len(sigs) == 1
    secret_typo = KEY0[:-1]
    with pytest.raises(SDKError) as info:
        sign_receipt(secret_typo, DOMAIN, 1, 2, HASH)
    assert info.value.code is SDKErrorCode.INVALID_SIGNER
    assert secret_typo[2:] not in str(info.value)
    with pytest.raises(SDKError):
        sign_receipt("0x" + "00" * 32, DOMAIN, 1, 2, HASH)  # zero is not a key


@pytest.mark.parametrize(
    "args",
    [
        (-1, 0, HASH),
        (0, -1, HASH),
        (True, 0, HASH),
        (0, 2**256, HASH),
        (0, 0, "0x12"),
        (0, 0, b"short"),
        (0, 0, "0x" + "g" * 64),
        (1.0, 0, HASH),
    ],
)
def test_bad_receipt_inputs_raise_invalid_argument(args: tuple[Any, Any, Any]) -> None:
    with pytest.raises(SDKError) as info:
        sign_receipt(KEY0, DOMAIN, *args)
    assert info.value.code is SDKErrorCode.INVALID_ARGUMENT


def test_domain_validation_and_normalisation() -> None:
    lower = Eip712Domain(31337, MARKET.lower())
    assert lower.verifying_contract == MARKET
    assert lower == DOMAIN and lower.separator == DOMAIN.separator
    for bad in ("0x123", "0x5fbDB2315678afecb367f032d93F642f64180aa3", 42):
        with pytest.raises(SDKError) as info:
            Eip712Domain(31337, bad)  # type: ignore[arg-type]
        assert info.value.code is SDKErrorCode.INVALID_ADDRESS
    for chain in (0, -1, True):
        with pytest.raises(SDKError):
            Eip712Domain(chain, MARKET)


def test_receipt_signer_reuses_key_and_matches_one_shot() -> None:
    signer = ReceiptSigner(KEY0, DOMAIN)
    assert signer.address == ADDR0
    assert signer.sign(3, 10, HASH) == sign_receipt(KEY0, DOMAIN, 3, 10, HASH)
    nonce = "0x" + "ab" * 32
    assert signer.sign_session_init(3, nonce) == sign_session_init(KEY0, DOMAIN, 3, nonce)
    # Receipt and session-init digests differ, so one can't stand in for the other.
    assert signer.sign_session_init(3, HASH) != signer.sign(3, 0, HASH).signature


def test_receipt_normalises_and_serialises() -> None:
    r = sign_receipt(KEY0, DOMAIN, 1, 2, HASH)
    upper = Receipt(1, 2, HASH.upper().replace("0X", "0x"), r.signature.upper().replace("0X", "0x"))
    assert upper == r
    assert r.to_dict() == {
        "session_id": 1,
        "tokens_used": 2,
        "content_hash": HASH,
        "signature": r.signature,
    }
    with pytest.raises(InvalidSignatureError):
        Receipt(1, 2, HASH, "0x1234")


# --- content hash chain ----------------------------------------------------------------------


def test_content_hash_chain_definition(vectors: dict[str, Any]) -> None:
    h = GENESIS_HASH
    hasher = ContentHasher()
    assert hasher.digest == bytes(32)
    for step in vectors["contentHashChain"]["steps"]:
        tag = PROMPT_TAG if step["kind"] == "prompt" else CHUNK_TAG
        h = keccak(h + tag + keccak(step["text"].encode("utf-8")))
        if step["kind"] == "prompt":
            hasher.update_prompt(step["text"])
        else:
            hasher.update_chunk(step["text"])
        assert hasher.hexdigest == "0x" + h.hex() == step["hash"]


def test_content_hasher_tags_boundaries_and_copy() -> None:
    a, b = ContentHasher(), ContentHasher()
    assert a.update_prompt("x") != b.update_chunk("x")
    one, two = ContentHasher(), ContentHasher()
    one.update_chunk("ab")
    two.update_chunk("a")
    two.update_chunk("b")
    assert one.digest != two.digest  # chunk boundaries are part of the transcript
    fork = one.copy()
    fork.update_chunk("c")
    assert fork.digest != one.digest
    assert ContentHasher(one.hexdigest).digest == one.digest
    with pytest.raises(UnicodeEncodeError):
        ContentHasher().update_chunk("\ud800")


# --- ProofVerifier ----------------------------------------------------------------------------


def test_proof_verifier_generate_and_verify() -> None:
    verifier = ProofVerifier(DOMAIN)
    receipt = verifier.generate_proof(KEY0, session_id=9, tokens_used=200, content_hash=HASH)
    kwargs: dict[str, Any] = {"session_id": 9, "tokens_used": 200, "content_hash": HASH}
    assert verifier.verify_checkpoint_proof(receipt.signature, expected_signer=ADDR0, **kwargs)
    assert verifier.verify_checkpoint_proof(receipt, expected_signer=ADDR0.lower(), **kwargs)
    assert verifier.verify_checkpoint_proof(
        receipt.signature_bytes, expected_signer=ADDR0, **kwargs
    )
    assert not verifier.verify_checkpoint_proof(receipt, expected_signer=ADDR1, **kwargs)
    assert not verifier.verify_checkpoint_proof(
        receipt, expected_signer=ADDR0, session_id=9, tokens_used=201, content_hash=HASH
    )
    assert not verifier.verify_checkpoint_proof(
        "0x" + "00" * 64, expected_signer=ADDR0, **kwargs
    )  # the reference's "any 64 bytes" proof is refused
    assert not verifier.verify_checkpoint_proof("junk", expected_signer=ADDR0, **kwargs)
    assert verifier.recover_checkpoint_signer(receipt.signature, **kwargs) == ADDR0
    nonce = "0x" + "01" * 32
    sig = sign_session_init(KEY1, DOMAIN, 9, nonce)
    assert verifier.verify_session_init(sig, session_id=9, nonce=nonce, expected_signer=ADDR1)
    assert not verifier.verify_session_init(sig, session_id=8, nonce=nonce, expected_signer=ADDR1)
    assert not verifier.verify_session_init(
        "0x00", session_id=9, nonce=nonce, expected_signer=ADDR1
    )


def test_expected_receipt_signer_rule() -> None:
    zero = "0x" + "00" * 20
    assert expected_receipt_signer(zero, ADDR0.lower()) == ADDR0
    assert expected_receipt_signer(ADDR1.lower(), ADDR0) == ADDR1
    with pytest.raises(SDKError) as info:
        expected_receipt_signer("0x12", ADDR0)
    assert info.value.code is SDKErrorCode.INVALID_ADDRESS


def test_check_receipt_is_the_one_rule_set_with_one_code_per_rule() -> None:
    """The checker the SDK, the host and ProofVerifier share: each rule, its code."""
    good = sign_receipt(KEY0, DOMAIN, 7, 50, HASH)

    def code(receipt: Receipt, **kw: Any) -> str:
        args: dict[str, Any] = {"session_id": 7, "signer": ADDR0, **kw}
        with pytest.raises(SDKError) as info:
            check_receipt(receipt, DOMAIN, **args)
        return info.value.code.value

    check_receipt(good, DOMAIN, session_id=7, signer=ADDR0.lower())
    check_receipt(good, DOMAIN, session_id=7, signer=ADDR0, recorded=49, max_tokens=50)
    check_receipt(good, DOMAIN, session_id=7, signer=ADDR0, sent={(50, good.content_hash)})
    assert code(good, session_id=8) == "PROOF_VERIFICATION_FAILED"
    assert code(good, recorded=50) == "STALE_RECEIPT"
    assert code(good, max_tokens=49) == "SESSION_BUDGET_EXHAUSTED"
    assert code(good, sent={(49, good.content_hash)}) == "PROOF_VERIFICATION_FAILED"
    malformed = Receipt(7, 50, HASH, good.signature[:-2] + "1d")  # v = 29
    assert code(malformed) == "INVALID_PROOF"
    # Another signer: a wrong key when the fields are a state that was sent, else
    # possibly altered fields (both recover another address).
    other = sign_receipt(KEY1, DOMAIN, 7, 50, HASH)
    assert code(other, sent={(50, other.content_hash)}) == "WRONG_SIGNER"
    assert code(other) == "PROOF_VERIFICATION_FAILED"
    altered = Receipt(7, 51, HASH, good.signature)
    assert code(altered) == "PROOF_VERIFICATION_FAILED"
    # The zero address never signs, even where the expected signer says so.
    assert code(good, signer="0x" + "00" * 20) == "PROOF_VERIFICATION_FAILED"


def test_receipt_call_args_are_what_the_contract_takes() -> None:
    r = sign_receipt(KEY0, DOMAIN, 7, 50, HASH)
    assert r.call_args() == (7, 50, bytes.fromhex(HASH[2:]), r.signature_bytes)
    assert r.digest == keccak(
        CHECKPOINT_TYPEHASH + (7).to_bytes(32, "big") + (50).to_bytes(32, "big") + r.call_args()[2]
    )


def test_receipt_from_mapping_takes_either_spelling() -> None:
    r = sign_receipt(KEY0, DOMAIN, 7, 50, HASH)
    assert Receipt.from_mapping(r.to_dict()) == r
    camel = {"sessionId": 7, "tokensUsed": 50, "contentHash": HASH, "proofData": r.signature}
    assert Receipt.from_mapping(camel) == r
    with pytest.raises(SDKError) as info:
        Receipt.from_mapping({"session_id": 7, "tokens_used": 50, "content_hash": HASH})
    assert info.value.code is SDKErrorCode.INVALID_ARGUMENT and "signature" in info.value.message
