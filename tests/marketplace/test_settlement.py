"""Ending sessions: settle, settleWithReceipt, settleBatch, requestClose, finalize; the
money math, conservation, and the attacks on the ending rules."""

from __future__ import annotations

import pytest
from support.marketplace import (
    DEPOSIT,
    ETH_DEPOSIT,
    ETH_PRICE,
    FEE_BPS,
    MAX_TOKENS,
    MODEL_ID,
    SETTLEMENT_WINDOW,
    USDC_UNIT,
    ZERO,
    ZERO_HASH,
    Outcome,
    Status,
    deploy_marketplace,
    domain_of,
    open_eth,
    open_usdc,
    sign,
    token_totals,
)
from support.reverts import reverts

ODD_PRICE = 123
ODD_DEPOSIT = 1_000_200  # -> 8131 tokens, escrow 1_000_113, 87 left in the balance
ODD_TOKENS = ODD_DEPOSIT // ODD_PRICE
ODD_ESCROW = ODD_TOKENS * ODD_PRICE


def _books(env, token, depositor, host):
    t = getattr(token, "address", token)
    mk = env.mk
    held = mk.balance if t == ZERO else env.usdc.balanceOf(mk)
    rep = env.nodes.reputationOf(host)
    return {
        "held": held,
        "balance": mk.balanceOf(depositor, t),
        "escrowed": mk.escrowedOf(depositor, t),
        "host": env.earnings.balanceOf(host, t),
        "host_total": env.earnings.totalEarned(host, t),
        "fees": env.treasury.balanceOf(t),
        "fees_total": env.treasury.totalCollected(t),
        "sessions": rep.sessionsSettled,
        "served": rep.tokensServed,
    }


def _expect_split(used, price, escrow):
    payment = used * price
    fee = payment * FEE_BPS // 10_000
    return payment - fee, fee, escrow - payment


def _assert_settled(env, tx, sid, token, used, price, escrow, before, depositor=None, host=None):
    depositor = depositor or env.alice
    host = host or env.host
    host_amount, fee, refund = _expect_split(used, price, escrow)
    assert host_amount + fee + refund == escrow
    (log,) = tx.decode_logs(env.mk.SessionSettled)
    assert (log.sessionId, log.host, log.tokensUsed) == (sid, host.address, used)
    assert (log.hostAmount, log.fee, log.refund) == (host_amount, fee, refund)
    after = _books(env, token, depositor, host)
    assert after["held"] == before["held"]  # settlement moves no tokens
    assert after["balance"] == before["balance"] + refund
    assert after["escrowed"] == before["escrowed"] - escrow
    assert after["host"] == before["host"] + host_amount
    assert after["host_total"] == before["host_total"] + host_amount
    assert after["fees"] == before["fees"] + fee
    assert after["fees_total"] == before["fees_total"] + fee
    assert after["sessions"] == before["sessions"] + 1
    assert after["served"] == before["served"] + used
    s = env.mk.getSession(sid)
    assert (s.status, s.tokensUsed) == (Status.SETTLED, used)


# ------------------------------------------------------------------ settle


@pytest.mark.parametrize("used", [0, 1, 7, 4321, ODD_TOKENS])
def test_settle_math_usdc(env, session_key, used):
    mk, usdc = env.mk, env.usdc
    sid = open_usdc(env, key=session_key, deposit=ODD_DEPOSIT, price=ODD_PRICE)
    assert mk.balanceOf(env.alice, usdc) == 0  # the 87 remainder was never pulled
    if used:
        mk.submitCheckpoint(*sign(env, session_key, sid, used), sender=env.host)
    before = _books(env, usdc, env.alice, env.host)
    tx = mk.settle(sid, sender=env.host)
    _assert_settled(env, tx, sid, usdc, used, ODD_PRICE, ODD_ESCROW, before)


def test_settle_math_eth(env, session_key):
    mk = env.mk
    sid = open_eth(env, key=session_key)
    used = 33_333
    before = _books(env, ZERO, env.alice, env.host)
    tx = mk.settleWithReceipt(*sign(env, session_key, sid, used), sender=env.host)
    _assert_settled(env, tx, sid, ZERO, used, ETH_PRICE, ETH_DEPOSIT, before)
    (cp,) = tx.decode_logs(mk.CheckpointSubmitted)
    assert (cp.sessionId, cp.tokensUsed) == (sid, used)


def test_settle_with_receipt_uses_the_new_receipt(env, session_key):
    mk = env.mk
    sid = open_usdc(env, key=session_key)
    mk.submitCheckpoint(*sign(env, session_key, sid, 100), sender=env.host)
    before = _books(env, env.usdc, env.alice, env.host)
    tx = mk.settleWithReceipt(*sign(env, session_key, sid, 300), sender=env.host)
    _assert_settled(env, tx, sid, env.usdc, 300, 200, DEPOSIT, before)


def test_settle_reverts(env, session_key):
    mk = env.mk
    sid = open_usdc(env, key=session_key)
    for caller in (env.mallory, env.host2, env.alice):
        with reverts(mk.NotSessionHost, caller=caller.address):
            mk.settle(sid, sender=caller)
    with reverts(mk.UnknownSession, sessionId=sid + 1):
        mk.settle(sid + 1, sender=env.host)
    mk.settle(sid, sender=env.host)
    with reverts(mk.SessionNotOpen, sessionId=sid, status=Status.SETTLED):
        mk.settle(sid, sender=env.host)


def test_settle_with_receipt_reverts(env, session_key, other_key):
    mk = env.mk
    sid = open_usdc(env, key=session_key)
    receipt = sign(env, session_key, sid, 100)
    with reverts(mk.NotSessionHost, caller=env.mallory.address):
        mk.settleWithReceipt(*receipt, sender=env.mallory)
    with reverts(mk.UnknownSession, sessionId=sid + 1):
        mk.settleWithReceipt(*sign(env, session_key, sid + 1, 100), sender=env.host)
    with reverts(mk.InvalidReceiptSigner, sessionId=sid):
        mk.settleWithReceipt(*sign(env, other_key, sid, 100), sender=env.host)
    with reverts(mk.ExceedsDeposit, tokensUsed=MAX_TOKENS + 1, maxTokens=MAX_TOKENS):
        mk.settleWithReceipt(*sign(env, session_key, sid, MAX_TOKENS + 1), sender=env.host)
    mk.submitCheckpoint(*receipt, sender=env.host)
    # An older receipt is stale; an equal one settles as recorded (test_audit).
    with reverts(mk.StaleReceipt, tokensUsed=99, recorded=100):
        mk.settleWithReceipt(*sign(env, session_key, sid, 99), sender=env.host)
    mk.settleWithReceipt(*sign(env, session_key, sid, 101), sender=env.host)
    with reverts(mk.SessionNotOpen, sessionId=sid, status=Status.SETTLED):
        mk.settleWithReceipt(*sign(env, session_key, sid, 102), sender=env.host)


def test_attack_host_settles_someone_elses_session(env, session_key):
    """host2 holds a valid receipt for host's session: it can neither settle it nor
    get paid for it, one by one or in a batch."""
    mk = env.mk
    sid = open_usdc(env, key=session_key)
    receipt = sign(env, session_key, sid, 1000)
    with reverts(mk.NotSessionHost, caller=env.host2.address):
        mk.settle(sid, sender=env.host2)
    with reverts(mk.NotSessionHost, caller=env.host2.address):
        mk.settleWithReceipt(*receipt, sender=env.host2)
    assert mk.settleBatch.call([receipt], sender=env.host2) == [Outcome.NOT_HOST]
    tx = mk.settleBatch([receipt], sender=env.host2)
    (skip,) = tx.decode_logs(mk.BatchItemSkipped)
    assert (skip.sessionId, skip.reason) == (sid, Outcome.NOT_HOST)
    s = mk.getSession(sid)
    assert (s.status, s.tokensUsed) == (Status.ACTIVE, 0)
    assert env.earnings.balanceOf(env.host2, env.usdc) == 0
    assert env.nodes.reputationOf(env.host2).sessionsSettled == 0


# ------------------------------------------------------------- settleBatch


def test_settle_batch_empty_and_too_large(env):
    mk = env.mk
    with reverts(mk.EmptyBatch):
        mk.settleBatch([], sender=env.host)
    items = [(i, 0, ZERO_HASH, b"") for i in range(1, 102)]
    with reverts(mk.BatchTooLarge, size=101):
        mk.settleBatch(items, sender=env.host)
    # exactly MAX_BATCH is accepted (every item skipped: no such sessions)
    assert mk.settleBatch.call(items[:100], sender=env.host) == [Outcome.UNKNOWN_SESSION] * 100


def test_settle_batch_mixed_outcomes(env, session_key, other_key):
    mk, usdc, host = env.mk, env.usdc, env.host
    ids = [open_usdc(env, key=session_key) for _ in range(7)]
    foreign = open_usdc(env, env.bob, host=env.host2, key=session_key)
    good, settled, stale, bad_sig, exceeds, recorded, dup = ids
    mk.settle(settled, sender=host)
    mk.submitCheckpoint(*sign(env, session_key, stale, 500), sender=host)
    mk.submitCheckpoint(*sign(env, session_key, recorded, 250), sender=host)
    items = [
        sign(env, session_key, good, 1000),
        sign(env, session_key, settled, 10),
        sign(env, session_key, stale, 400),
        sign(env, other_key, bad_sig, 10),
        sign(env, session_key, exceeds, MAX_TOKENS + 1),
        (recorded, 0, ZERO_HASH, b""),  # settle as recorded (250)
        sign(env, session_key, foreign, 10),
        sign(env, session_key, 999, 10),
        sign(env, session_key, dup, 20),
        sign(env, session_key, dup, 30),  # same session again: already settled by then
    ]
    expected = [
        Outcome.OK,
        Outcome.NOT_OPEN,
        Outcome.STALE,
        Outcome.BAD_SIGNATURE,
        Outcome.EXCEEDS_DEPOSIT,
        Outcome.OK,
        Outcome.NOT_HOST,
        Outcome.UNKNOWN_SESSION,
        Outcome.OK,
        Outcome.NOT_OPEN,
    ]
    assert mk.settleBatch.call(items, sender=host) == expected
    before = _books(env, usdc, env.alice, host)
    tx = mk.settleBatch(items, sender=host)

    skipped = [(log.sessionId, log.reason) for log in tx.decode_logs(mk.BatchItemSkipped)]
    assert skipped == [(items[i][0], o) for i, o in enumerate(expected) if o != Outcome.OK]
    settled_logs = {log.sessionId: log for log in tx.decode_logs(mk.SessionSettled)}
    assert set(settled_logs) == {good, recorded, dup}
    used = {good: 1000, recorded: 250, dup: 20}
    host_sum = fee_sum = refund_sum = 0
    for sid, n in used.items():
        h, f, r = _expect_split(n, 200, DEPOSIT)
        log = settled_logs[sid]
        assert (log.tokensUsed, log.hostAmount, log.fee, log.refund) == (n, h, f, r)
        assert mk.getSession(sid).status == Status.SETTLED
        host_sum, fee_sum, refund_sum = host_sum + h, fee_sum + f, refund_sum + r
    # skipped sessions are untouched and still open
    for sid, n in ((stale, 500), (bad_sig, 0), (exceeds, 0)):
        s = mk.getSession(sid)
        assert (s.status, s.tokensUsed) == (Status.ACTIVE, n)
    assert mk.getSession(foreign).status == Status.ACTIVE

    after = _books(env, usdc, env.alice, host)
    assert after["host"] == before["host"] + host_sum
    assert after["fees"] == before["fees"] + fee_sum
    assert after["balance"] == before["balance"] + refund_sum
    assert after["escrowed"] == before["escrowed"] - 3 * DEPOSIT
    assert after["held"] == before["held"]
    assert after["sessions"] == before["sessions"] + 3
    assert after["served"] == before["served"] + sum(used.values())
    # one ledger credit per token run, not per session
    assert len(tx.decode_logs(env.earnings.EarningsCredited)) == 1
    assert len(tx.decode_logs(env.treasury.FeesCredited)) == 1


def test_settle_batch_mixed_tokens(env, session_key):
    """USDC and ETH sessions interleaved in one batch: each token's ledgers get
    exactly their own sessions' sums."""
    mk, usdc, host = env.mk, env.usdc, env.host
    u1, e1, u2, e2, u3 = (
        open_usdc(env, key=session_key),
        open_eth(env, key=session_key),
        open_usdc(env, env.bob, key=session_key),
        open_eth(env, env.bob, key=session_key),
        open_usdc(env, key=session_key),
    )
    work = [(u1, 100), (e1, 1000), (u2, 333), (e2, 77), (u3, 0)]
    items = [sign(env, session_key, sid, n) if n else (sid, 0, ZERO_HASH, b"") for sid, n in work]
    held_usdc, held_eth = usdc.balanceOf(mk), mk.balance
    tx = mk.settleBatch(items, sender=host)
    assert not tx.decode_logs(mk.BatchItemSkipped)

    uh = sum(_expect_split(n, 200, DEPOSIT)[0] for n in (100, 333, 0))
    uf = sum(_expect_split(n, 200, DEPOSIT)[1] for n in (100, 333, 0))
    eh = sum(_expect_split(n, ETH_PRICE, ETH_DEPOSIT)[0] for n in (1000, 77))
    ef = sum(_expect_split(n, ETH_PRICE, ETH_DEPOSIT)[1] for n in (1000, 77))
    assert env.earnings.balanceOf(host, usdc) == uh
    assert env.treasury.balanceOf(usdc) == uf
    assert env.earnings.balanceOf(host, ZERO) == eh
    assert env.treasury.balanceOf(ZERO) == ef
    assert mk.balanceOf(env.alice, usdc) == 2 * DEPOSIT - 100 * 200
    assert mk.balanceOf(env.bob, usdc) == DEPOSIT - 333 * 200
    assert mk.balanceOf(env.alice, ZERO) == ETH_DEPOSIT - 1000 * ETH_PRICE
    assert mk.balanceOf(env.bob, ZERO) == ETH_DEPOSIT - 77 * ETH_PRICE
    assert (usdc.balanceOf(mk), mk.balance) == (held_usdc, held_eth)
    rep = env.nodes.reputationOf(host)
    assert (rep.sessionsSettled, rep.tokensServed) == (5, 100 + 1000 + 333 + 77)
    people = [env.alice, env.bob]
    assert token_totals(env, usdc, people, [host]) == usdc.balanceOf(mk)
    assert token_totals(env, ZERO, people, [host]) == mk.balance


# ------------------------------------------------------------ requestClose


def test_request_close_by_depositor(env, session_key, chain):
    mk = env.mk
    sid = open_usdc(env, key=session_key)
    tx = mk.requestClose(sid, sender=env.alice)
    now = chain.blocks[-1].timestamp
    (log,) = tx.decode_logs(mk.CloseRequested)
    assert (log.sessionId, log.by, log.finalizeAfter) == (
        sid,
        env.alice.address,
        now + SETTLEMENT_WINDOW,
    )
    s = mk.getSession(sid)
    assert (s.status, s.endsAt, s.finalizeAfter) == (Status.CLOSING, now, now + SETTLEMENT_WINDOW)


def test_request_close_by_session_key(env):
    """The session key (here an account that pays its own gas) may close too."""
    mk, key = env.mk, env.keyholder
    sid = open_usdc(env, key=key)
    tx = mk.requestCloseWithReceipt(*sign(env, key, sid, 120), sender=key)
    (log,) = tx.decode_logs(mk.CloseRequested)
    assert log.by == key.address
    s = mk.getSession(sid)
    assert (s.status, s.tokensUsed) == (Status.CLOSING, 120)


def test_request_close_plain_by_session_key(env):
    mk, key = env.mk, env.keyholder
    sid = open_usdc(env, key=key)
    mk.requestClose(sid, sender=key)
    assert mk.getSession(sid).status == Status.CLOSING


def test_request_close_reverts(env, session_key):
    mk = env.mk
    sid = open_usdc(env, key=session_key)
    with reverts(mk.UnknownSession, sessionId=sid + 1):
        mk.requestClose(sid + 1, sender=env.alice)
    for caller in (env.mallory, env.host, env.bob):
        with reverts(mk.NotSessionClient, caller=caller.address):
            mk.requestClose(sid, sender=caller)
    mk.requestClose(sid, sender=env.alice)
    with reverts(mk.SessionNotOpen, sessionId=sid, status=Status.CLOSING):
        mk.requestClose(sid, sender=env.alice)
    mk.settle(sid, sender=env.host)
    with reverts(mk.SessionNotOpen, sessionId=sid, status=Status.SETTLED):
        mk.requestClose(sid, sender=env.alice)


def test_request_close_with_receipt_reverts(env, session_key):
    mk = env.mk
    sid = open_usdc(env, key=session_key)
    receipt = sign(env, session_key, sid, 100)
    with reverts(mk.NotSessionClient, caller=env.mallory.address):
        mk.requestCloseWithReceipt(*receipt, sender=env.mallory)
    assert mk.getSession(sid).tokensUsed == 0  # nothing recorded by the failed call
    mk.submitCheckpoint(*receipt, sender=env.host)
    with reverts(mk.StaleReceipt, tokensUsed=99, recorded=100):
        mk.requestCloseWithReceipt(*sign(env, session_key, sid, 99), sender=env.alice)
    mk.requestCloseWithReceipt(*sign(env, session_key, sid, 150), sender=env.alice)
    with reverts(mk.SessionNotOpen, sessionId=sid, status=Status.CLOSING):
        mk.requestCloseWithReceipt(*sign(env, session_key, sid, 160), sender=env.alice)


def test_request_close_after_expiry_keeps_end(env, chain):
    mk = env.mk
    sid = open_usdc(env)
    ends = mk.getSession(sid).endsAt
    chain.pending_timestamp = ends + 100
    tx = mk.requestClose(sid, sender=env.alice)
    assert tx.decode_logs(mk.CloseRequested)[0].finalizeAfter == ends + SETTLEMENT_WINDOW
    assert mk.getSession(sid).endsAt == ends


# ---------------------------------------------------------------- finalize


def test_finalize_after_close_window(env, session_key, chain):
    mk, usdc = env.mk, env.usdc
    sid = open_usdc(env, key=session_key)
    mk.requestCloseWithReceipt(*sign(env, session_key, sid, 640), sender=env.alice)
    ready = mk.getSession(sid).finalizeAfter
    with reverts(mk.SettlementWindowOpen, finalizeAfter=ready):
        mk.finalize(sid, sender=env.mallory)
    chain.pending_timestamp = ready - 1
    with reverts(mk.SettlementWindowOpen, finalizeAfter=ready):
        mk.finalize(sid, sender=env.mallory)
    chain.pending_timestamp = ready
    before = _books(env, usdc, env.alice, env.host)
    tx = mk.finalize(sid, sender=env.mallory)  # anyone
    _assert_settled(env, tx, sid, usdc, 640, 200, DEPOSIT, before)
    with reverts(mk.SessionNotOpen, sessionId=sid, status=Status.SETTLED):
        mk.finalize(sid, sender=env.mallory)


def test_finalize_after_expiry_without_close(env, session_key, chain):
    mk, usdc = env.mk, env.usdc
    sid = open_usdc(env, key=session_key)
    mk.submitCheckpoint(*sign(env, session_key, sid, 900), sender=env.host)
    s = mk.getSession(sid)
    assert s.finalizeAfter == s.endsAt + SETTLEMENT_WINDOW
    chain.pending_timestamp = s.endsAt + 1  # expired, but the window is still open
    with reverts(mk.SettlementWindowOpen, finalizeAfter=s.finalizeAfter):
        mk.finalize(sid, sender=env.bob)
    chain.pending_timestamp = s.finalizeAfter
    before = _books(env, usdc, env.alice, env.host)
    tx = mk.finalize(sid, sender=env.bob)
    _assert_settled(env, tx, sid, usdc, 900, 200, DEPOSIT, before)


def test_finalize_unknown(env):
    with reverts(env.mk.UnknownSession, sessionId=5):
        env.mk.finalize(5, sender=env.mallory)


def test_attack_finalize_before_window_ends(env, session_key, chain):
    """The client closes at once and tries to finalize (alone, or through a friend)
    before the host had its window: refused until the window has passed."""
    mk = env.mk
    sid = open_usdc(env, key=session_key)
    mk.requestClose(sid, sender=env.alice)
    ready = mk.getSession(sid).finalizeAfter
    for who in (env.alice, env.bob, env.host2):
        with reverts(mk.SettlementWindowOpen, finalizeAfter=ready):
            mk.finalize(sid, sender=who)
    chain.pending_timestamp = ready - 10
    # the host still posts inside the window
    mk.settleWithReceipt(*sign(env, session_key, sid, 2000), sender=env.host)
    assert mk.getSession(sid).tokensUsed == 2000


def test_attack_client_closes_with_stale_receipt_host_wins(env, session_key, chain):
    """The client signed 300 tokens' worth but closes with its receipt for 200
    (the host had only posted 100). Inside the window the host posts 300 and is
    paid for 300; after the window a finalize pays 300 as well."""
    mk, usdc = env.mk, env.usdc
    sid = open_usdc(env, key=session_key)
    r100, r200, r300 = (sign(env, session_key, sid, n) for n in (100, 200, 300))
    mk.submitCheckpoint(*r100, sender=env.host)
    mk.requestCloseWithReceipt(*r200, sender=env.alice)
    assert mk.getSession(sid).tokensUsed == 200
    ready = mk.getSession(sid).finalizeAfter
    chain.pending_timestamp = ready - 1  # last second of the window
    mk.submitCheckpoint(*r300, sender=env.host)
    # the client cannot roll it back with its older receipts
    with reverts(mk.StaleReceipt, tokensUsed=200, recorded=300):
        mk.submitCheckpoint(*r200, sender=env.alice)
    chain.pending_timestamp = ready
    before = _books(env, usdc, env.alice, env.host)
    tx = mk.finalize(sid, sender=env.alice)
    _assert_settled(env, tx, sid, usdc, 300, 200, DEPOSIT, before)


def test_attack_client_closes_with_stale_receipt_when_host_already_posted(env, session_key):
    """If the host's newer receipt is already on chain, the client's older one is refused
    outright; a plain close keeps the host's count."""
    mk = env.mk
    sid = open_usdc(env, key=session_key)
    mk.submitCheckpoint(*sign(env, session_key, sid, 300), sender=env.host)
    with reverts(mk.StaleReceipt, tokensUsed=200, recorded=300):
        mk.requestCloseWithReceipt(*sign(env, session_key, sid, 200), sender=env.alice)
    mk.requestClose(sid, sender=env.alice)
    assert mk.getSession(sid).tokensUsed == 300


# ------------------------------------------------ pause and stuck funds


def test_pause_blocks_only_new_sessions(env, session_key, chain):
    mk, usdc, host = env.mk, env.usdc, env.host
    s1, s2, s3, s4, s5 = (open_usdc(env, key=session_key) for _ in range(5))
    eth = open_eth(env, key=session_key)
    mk.pause(sender=env.deployer)

    with reverts(mk.EnforcedPause):
        open_usdc(env, key=session_key)
    with reverts(mk.EnforcedPause):
        mk.createSession(host, b"\0" * 32, usdc, 1, 1, 1, 1, ZERO, sender=env.alice)

    mk.deposit(usdc, USDC_UNIT, sender=env.bob)
    mk.deposit(ZERO, 10**15, value=10**15, sender=env.bob)
    mk.withdraw(usdc, USDC_UNIT, sender=env.bob)
    mk.withdraw(ZERO, 10**15, sender=env.bob)
    mk.submitCheckpoint(*sign(env, session_key, s1, 10), sender=host)
    mk.settle(s1, sender=host)
    mk.settleWithReceipt(*sign(env, session_key, s2, 20), sender=host)
    mk.settleBatch([sign(env, session_key, s3, 30)], sender=host)
    mk.requestClose(s4, sender=env.alice)
    mk.requestCloseWithReceipt(*sign(env, session_key, s5, 50), sender=env.alice)
    chain.pending_timestamp = mk.getSession(eth).finalizeAfter
    mk.finalize(s4, sender=env.mallory)
    mk.finalize(s5, sender=env.mallory)
    mk.finalize(eth, sender=env.mallory)
    env.earnings.withdraw(usdc, sender=host)
    env.treasury.withdraw(usdc, env.treasurer, 1, sender=env.treasurer)
    mk.withdraw(usdc, mk.balanceOf(env.alice, usdc), sender=env.alice)
    mk.withdraw(ZERO, mk.balanceOf(env.alice, ZERO), sender=env.alice)
    for sid in (s1, s2, s3, s4, s5, eth):
        assert mk.getSession(sid).status == Status.SETTLED
    assert mk.paused()


def test_no_path_stuck_when_host_leaves_and_model_is_deactivated(env, session_key, chain):
    mk = env.mk
    s1 = open_usdc(env, key=session_key)
    s2 = open_usdc(env, key=session_key)
    mk.submitCheckpoint(*sign(env, session_key, s1, 10), sender=env.host)
    env.models.deactivateModel(env.mk.getSession(s1).modelId, sender=env.curator)
    env.nodes.unregister(sender=env.host)
    mk.settle(s1, sender=env.host)  # the host can still settle what it served
    chain.pending_timestamp = mk.getSession(s2).finalizeAfter
    mk.finalize(s2, sender=env.mallory)  # and what it abandons is finalized by anyone
    assert mk.balanceOf(env.alice, env.usdc) == 2 * DEPOSIT - 10 * 200
    assert mk.escrowedOf(env.alice, env.usdc) == 0


def test_settle_and_withdraw_after_token_is_no_longer_accepted(env, session_key):
    mk, usdc = env.mk, env.usdc
    sid = open_usdc(env, key=session_key)
    mk.configureToken(usdc, False, 0, sender=env.deployer)
    mk.settleWithReceipt(*sign(env, session_key, sid, 10), sender=env.host)
    env.earnings.withdraw(usdc, sender=env.host)
    mk.withdraw(usdc, DEPOSIT - 10 * 200, sender=env.alice)
    assert usdc.balanceOf(mk) == env.treasury.balanceOf(usdc) == 10 * 200 // 10


def test_reputation_refused_does_not_block_settlement(env, session_key):
    """A marketplace the registry does not know (no MARKETPLACE_ROLE) still settles;
    it only reports that reputation was not recorded."""
    mk2, e2, _ = deploy_marketplace(env)
    env.usdc.approve(mk2, 2**256 - 1, sender=env.alice)
    args = [MODEL_ID, env.usdc, DEPOSIT, 200, 3600, 100, session_key.address]
    mk2.createSessionFromWallet(env.host, *args, sender=env.alice)
    tx = mk2.settleWithReceipt(
        *sign(env, session_key, 1, 10, domain=domain_of(mk2)), sender=env.host
    )
    (log,) = tx.decode_logs(mk2.ReputationNotRecorded)
    assert log.host == env.host.address
    assert mk2.getSession(1).status == Status.SETTLED
    assert e2.balanceOf(env.host, env.usdc) == 10 * 200 * 9 // 10
    assert env.nodes.reputationOf(env.host).sessionsSettled == 0


def test_books_balance_across_a_busy_scenario(env, session_key):
    """Funds held == balances + escrow + host earnings + treasury, after every step."""
    mk, usdc = env.mk, env.usdc
    people = [env.alice, env.bob, env.mallory]
    hosts = [env.host, env.host2]

    def check():
        assert token_totals(env, usdc, people, hosts) == usdc.balanceOf(mk)
        assert token_totals(env, ZERO, people, hosts) == mk.balance

    mk.deposit(usdc, 5 * USDC_UNIT, sender=env.bob)
    check()
    a = open_usdc(env, key=session_key)
    b = open_usdc(env, env.bob, host=env.host2, key=session_key)
    e = open_eth(env, env.mallory, host=env.host2, key=session_key)
    check()
    mk.submitCheckpoint(*sign(env, session_key, a, 1234), sender=env.host)
    mk.settle(a, sender=env.host)
    check()
    mk.settleBatch(
        [sign(env, session_key, b, 4999), sign(env, session_key, e, 5)], sender=env.host2
    )
    check()
    env.earnings.withdrawMany([usdc.address, ZERO], sender=env.host2)
    env.earnings.withdraw(usdc, sender=env.host)
    env.treasury.withdraw(usdc, env.treasurer, env.treasury.balanceOf(usdc), sender=env.treasurer)
    check()
    mk.withdraw(usdc, mk.balanceOf(env.bob, usdc), sender=env.bob)
    mk.withdraw(ZERO, mk.balanceOf(env.mallory, ZERO), sender=env.mallory)
    mk.withdraw(usdc, mk.balanceOf(env.alice, usdc), sender=env.alice)
    check()
    # all that is left is the treasury's ETH fee
    assert usdc.balanceOf(mk) == 0
    assert mk.balance == env.treasury.balanceOf(ZERO) > 0
