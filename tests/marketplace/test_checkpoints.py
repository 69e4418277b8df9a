"""Receipts: submitCheckpoint, checkReceipt, ProofSystem, and the attacks on them."""

from __future__ import annotations

import pytest
from eth_keys import keys
from support.marketplace import (
    DEPOSIT,
    DURATION,
    MAX_TOKENS,
    MODEL_ID,
    PRICE,
    PROOF_INTERVAL,
    ZERO,
    Outcome,
    Status,
    content_hash,
    deploy_marketplace,
    open_usdc,
    sign,
)
from support.reverts import reverts

from fabstir.protocol.receipts import (
    CHECKPOINT_TYPEHASH,
    EIP712_DOMAIN_TYPEHASH,
    SECP256K1_N,
    Eip712Domain,
    receipt_digest,
)


@pytest.fixture
def sid(env, session_key):
    return open_usdc(env, key=session_key)


def _tamper(sig: bytes) -> tuple[bytes, bytes, bytes]:
    """(high-s twin, 64-byte EIP-2098 compact form, 66-byte padded) of a valid signature."""
    r, s, v = sig[:32], int.from_bytes(sig[32:64], "big"), sig[64]
    twin = r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])
    compact = r + ((v - 27) << 255 | s).to_bytes(32, "big")
    return twin, compact, sig + b"\x00"


# ------------------------------------------------------------ submitCheckpoint


def test_submit_checkpoint_by_session_key(env, sid, session_key):
    mk = env.mk
    receipt = sign(env, session_key, sid, 100)
    tx = mk.submitCheckpoint(*receipt, sender=env.host)
    (log,) = tx.decode_logs(mk.CheckpointSubmitted)
    assert (log.sessionId, log.tokensUsed, log.contentHash) == (sid, 100, content_hash(100))
    assert mk.getSession(sid).tokensUsed == 100
    # cumulative counts only grow: 250 then 5000 (the whole deposit)
    mk.submitCheckpoint(*sign(env, session_key, sid, 250), sender=env.host)
    mk.submitCheckpoint(*sign(env, session_key, sid, MAX_TOKENS), sender=env.host)
    assert mk.getSession(sid).tokensUsed == MAX_TOKENS
    assert mk.remainingBudget(sid) == (0, 0)


def test_submit_checkpoint_by_depositor_when_no_session_key(env):
    sid = open_usdc(env)  # sessionKey = 0 -> the depositor signs
    env.mk.submitCheckpoint(*sign(env, env.alice, sid, 42), sender=env.host)
    assert env.mk.getSession(sid).tokensUsed == 42


def test_depositor_cannot_sign_when_a_session_key_is_set(env, sid):
    """The session key replaces the depositor as signer; the depositor's own
    signature is not a receipt for this session."""
    with reverts(env.mk.InvalidReceiptSigner, sessionId=sid):
        env.mk.submitCheckpoint(*sign(env, env.alice, sid, 42), sender=env.host)


def test_anyone_may_submit_a_valid_receipt(env, sid, session_key):
    """A receipt is the client's word; who carries it on chain does not matter."""
    env.mk.submitCheckpoint(*sign(env, session_key, sid, 7), sender=env.mallory)
    assert env.mk.getSession(sid).tokensUsed == 7


def test_submit_checkpoint_unknown_session(env, session_key):
    with reverts(env.mk.UnknownSession, sessionId=99):
        env.mk.submitCheckpoint(*sign(env, session_key, 99, 1), sender=env.host)


def test_submit_checkpoint_after_settle(env, sid, session_key):
    mk = env.mk
    mk.settle(sid, sender=env.host)
    with reverts(mk.SessionNotOpen, sessionId=sid, status=Status.SETTLED):
        mk.submitCheckpoint(*sign(env, session_key, sid, 10), sender=env.host)


def test_stale_receipt_equal_and_lower(env, sid, session_key):
    mk = env.mk
    mk.submitCheckpoint(*sign(env, session_key, sid, 300), sender=env.host)
    with reverts(mk.StaleReceipt, tokensUsed=300, recorded=300):
        mk.submitCheckpoint(*sign(env, session_key, sid, 300, content_hash(9)), sender=env.host)
    with reverts(mk.StaleReceipt, tokensUsed=299, recorded=300):
        mk.submitCheckpoint(*sign(env, session_key, sid, 299), sender=env.host)


def test_zero_tokens_receipt_is_stale(env, sid, session_key):
    with reverts(env.mk.StaleReceipt, tokensUsed=0, recorded=0):
        env.mk.submitCheckpoint(*sign(env, session_key, sid, 0), sender=env.host)


# ------------------------------------------------------------------- attacks


def test_attack_replay_older_receipt(env, sid, session_key):
    """A host (or anyone) replays an older receipt after a newer one: refused,
    tokensUsed never goes down."""
    mk = env.mk
    old = sign(env, session_key, sid, 100)
    mk.submitCheckpoint(*old, sender=env.host)
    mk.submitCheckpoint(*sign(env, session_key, sid, 200), sender=env.host)
    with reverts(mk.StaleReceipt, tokensUsed=100, recorded=200):
        mk.submitCheckpoint(*old, sender=env.host)
    assert mk.getSession(sid).tokensUsed == 200


def test_attack_receipt_signed_by_wrong_key(env, sid, other_key):
    mk = env.mk
    for signer in (other_key, env.host, env.mallory):
        with reverts(mk.InvalidReceiptSigner, sessionId=sid):
            mk.submitCheckpoint(*sign(env, signer, sid, 100), sender=env.host)
    assert mk.getSession(sid).tokensUsed == 0


def test_attack_receipt_for_another_session(env, session_key):
    """The same key signs for two sessions; a receipt of one is no receipt of the other."""
    mk = env.mk
    s1 = open_usdc(env, key=session_key)
    s2 = open_usdc(env, key=session_key)
    _, used, chash, sig = sign(env, session_key, s2, 1000)
    with reverts(mk.InvalidReceiptSigner, sessionId=s1):
        mk.submitCheckpoint(s1, used, chash, sig, sender=env.host)
    mk.submitCheckpoint(s2, used, chash, sig, sender=env.host)
    assert (mk.getSession(s1).tokensUsed, mk.getSession(s2).tokensUsed) == (0, 1000)


def test_attack_tampered_fields(env, sid, session_key):
    """A host raising tokensUsed or swapping the content hash breaks the signature."""
    mk = env.mk
    _, used, chash, sig = sign(env, session_key, sid, 100)
    with reverts(mk.InvalidReceiptSigner, sessionId=sid):
        mk.submitCheckpoint(sid, used + 1, chash, sig, sender=env.host)
    with reverts(mk.InvalidReceiptSigner, sessionId=sid):
        mk.submitCheckpoint(sid, used, content_hash(1), sig, sender=env.host)


def test_attack_receipt_from_another_chain(env, sid, session_key):
    foreign = Eip712Domain(chain_id=84532, verifying_contract=env.mk.address)
    receipt = sign(env, session_key, sid, 100, domain=foreign)
    assert env.mk.checkReceipt(*receipt) == Outcome.BAD_SIGNATURE
    with reverts(env.mk.InvalidReceiptSigner, sessionId=sid):
        env.mk.submitCheckpoint(*receipt, sender=env.host)


def test_attack_receipt_from_another_deployment(env, session_key):
    """Two marketplaces, each with a session 1 under the same key: a receipt for
    one deployment is refused by the other."""
    mk = env.mk
    mk2, _, _ = deploy_marketplace(env)
    env.usdc.approve(mk2, 2**256 - 1, sender=env.alice)
    s1 = open_usdc(env, key=session_key)
    args = [MODEL_ID, env.usdc, DEPOSIT, PRICE, DURATION, PROOF_INTERVAL, session_key.address]
    tx = mk2.createSessionFromWallet(env.host, *args, sender=env.alice)
    s2 = tx.decode_logs(mk2.SessionCreated)[0].sessionId
    assert s1 == s2 == 1
    other = Eip712Domain(chain_id=env.domain.chain_id, verifying_contract=mk2.address)
    receipt = sign(env, session_key, 1, 500, domain=other)
    assert mk.checkReceipt(*receipt) == Outcome.BAD_SIGNATURE
    assert mk2.checkReceipt(*receipt) == Outcome.OK
    with reverts(mk.InvalidReceiptSigner, sessionId=1):
        mk.submitCheckpoint(*receipt, sender=env.host)
    mk2.submitCheckpoint(*receipt, sender=env.host)
    assert mk2.getSession(1).tokensUsed == 500
    assert mk.getSession(1).tokensUsed == 0
    assert mk2.domainSeparator() != mk.domainSeparator()


def test_attack_tokens_above_deposit(env, sid, session_key):
    mk = env.mk
    with reverts(mk.ExceedsDeposit, tokensUsed=MAX_TOKENS + 1, maxTokens=MAX_TOKENS):
        mk.submitCheckpoint(*sign(env, session_key, sid, MAX_TOKENS + 1), sender=env.host)
    huge = 2**256 - 1
    with reverts(mk.ExceedsDeposit, tokensUsed=huge, maxTokens=MAX_TOKENS):
        mk.submitCheckpoint(*sign(env, session_key, sid, huge), sender=env.host)
    assert mk.getSession(sid).tokensUsed == 0


def test_attack_high_s_malleable_signature(env, sid, session_key):
    mk = env.mk
    receipt = sign(env, session_key, sid, 100)
    twin, _, _ = _tamper(receipt[3])
    # the twin really is a valid signature of the same digest by the same key ...
    digest = receipt_digest(env.domain, sid, 100, receipt[2])
    v, r, s = twin[64] - 27, int.from_bytes(twin[:32], "big"), int.from_bytes(twin[32:64], "big")
    recovered = keys.Signature(vrs=(v, r, s)).recover_public_key_from_msg_hash(digest)
    assert recovered.to_checksum_address() == session_key.address
    # ... and the contract refuses it
    assert env.proofs.recoverCheckpointSigner(mk, sid, 100, receipt[2], twin) == ZERO
    with reverts(mk.InvalidReceiptSigner, sessionId=sid):
        mk.submitCheckpoint(sid, 100, receipt[2], twin, sender=env.host)
    mk.submitCheckpoint(*receipt, sender=env.host)  # the canonical one is fine


@pytest.mark.parametrize("form", ["64-byte-compact", "66-byte", "empty", "v-0-1", "v-29"])
def test_attack_malformed_signatures(env, sid, session_key, form):
    mk = env.mk
    _, used, chash, sig = sign(env, session_key, sid, 100)
    _, compact, padded = _tamper(sig)
    bad = {
        "64-byte-compact": compact,
        "66-byte": padded,
        "empty": b"",
        "v-0-1": sig[:64] + bytes([sig[64] - 27]),
        "v-29": sig[:64] + bytes([29]),
    }[form]
    assert env.proofs.recoverCheckpointSigner(mk, sid, used, chash, bad) == ZERO
    assert mk.checkReceipt(sid, used, chash, bad) == Outcome.BAD_SIGNATURE
    with reverts(mk.InvalidReceiptSigner, sessionId=sid):
        mk.submitCheckpoint(sid, used, chash, bad, sender=env.host)


# ------------------------------------------------------------- checkReceipt


def test_check_receipt_outcomes(env, sid, session_key, other_key):
    mk = env.mk
    assert mk.checkReceipt(*sign(env, session_key, sid, 100)) == Outcome.OK
    assert mk.checkReceipt(*sign(env, session_key, 77, 100)) == Outcome.UNKNOWN_SESSION
    assert mk.checkReceipt(*sign(env, other_key, sid, 100)) == Outcome.BAD_SIGNATURE
    too_many = sign(env, session_key, sid, MAX_TOKENS + 1)
    assert mk.checkReceipt(*too_many) == Outcome.EXCEEDS_DEPOSIT
    mk.submitCheckpoint(*sign(env, session_key, sid, 100), sender=env.host)
    assert mk.checkReceipt(*sign(env, session_key, sid, 100)) == Outcome.STALE
    assert mk.checkReceipt(*sign(env, session_key, sid, 50)) == Outcome.STALE
    assert mk.checkReceipt(*sign(env, session_key, sid, 101)) == Outcome.OK
    mk.requestClose(sid, sender=env.alice)  # closing: a newer receipt is still welcome
    assert mk.checkReceipt(*sign(env, session_key, sid, 101)) == Outcome.OK
    mk.settle(sid, sender=env.host)
    assert mk.checkReceipt(*sign(env, session_key, sid, 101)) == Outcome.NOT_OPEN


# --------------------------------------------------------------- ProofSystem


def test_proof_system_digest_and_recovery_match_python(env, session_key):
    proofs, mk = env.proofs, env.mk
    chash = content_hash(5)
    digest = receipt_digest(env.domain, 3, 5, chash)
    assert proofs.checkpointDigest(mk, 3, 5, chash) == digest
    assert proofs.domainSeparator(mk) == env.domain.separator
    _, _, _, sig = sign(env, session_key, 3, 5, chash)
    assert proofs.recoverCheckpointSigner(mk, 3, 5, chash, sig) == session_key.address
    # bound to the marketplace address it is asked about
    assert proofs.recoverCheckpointSigner(env.usdc, 3, 5, chash, sig) != session_key.address


def test_proof_system_type_hashes(env):
    assert env.proofs.CHECKPOINT_TYPEHASH() == CHECKPOINT_TYPEHASH
    assert env.proofs.DOMAIN_TYPEHASH() == EIP712_DOMAIN_TYPEHASH
