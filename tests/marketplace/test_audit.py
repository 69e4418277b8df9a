"""The findings of the outside audit (issue 10), one test each; every one of them fails
on the contracts from before the fix. docs/security.md lists them by name."""

from __future__ import annotations

import pytest
from support.marketplace import (
    ETH_DEPOSIT,
    ETH_PRICE,
    FEE_BPS,
    MODEL_ID,
    PROOF_INTERVAL,
    SETTLEMENT_WINDOW,
    ZERO,
    Status,
    open_eth,
    open_usdc,
    register_contract_host,
    sign,
    token_totals,
)
from support.reverts import deploy_reverts, reverts

from fabstir.chain.books import VaultBooks

U128 = 2**128 - 1
DAY = 24 * 3600


def _settled(tx, mk):
    return [(int(e.sessionId), int(e.tokensUsed)) for e in tx.decode_logs(mk.SessionSettled)]


# ------------------------------------------- 1. the stake outlives every session


def test_no_session_outlives_the_unbonding_period(env, session_key, chain):
    """Repro of finding 1: a 30-day session, the host unregisters, takes its stake back
    after the unbonding period (7 days) and still settles later, unslashable. Now a
    session lasts at most unbondingPeriod - settlementWindow, so by the time the stake
    can leave, every session of the host is past its window (anyone may finalize)."""
    mk, nodes, host = env.mk, env.nodes, env.host
    longest = nodes.unbondingPeriod() - SETTLEMENT_WINDOW
    assert mk.maxDuration() == longest
    with reverts(mk.InvalidDuration, duration=30 * DAY):
        open_usdc(env, key=session_key, duration=30 * DAY)
    with reverts(mk.InvalidDuration, duration=longest + 1):
        open_usdc(env, key=session_key, duration=longest + 1)

    sid = open_usdc(env, key=session_key, duration=longest)
    mk.submitCheckpoint(*sign(env, session_key, sid, 300), sender=host)
    tx = nodes.unregister(sender=host)
    unbonded = nodes.HostUnregistered.from_receipt(tx)[0].unbondingEndsAt
    assert mk.getSession(sid).finalizeAfter <= unbonded

    # Until then the stake is there to slash.
    chain.pending_timestamp = unbonded - 1
    nodes.slash(host, 1, "still bound", sender=env.slasher)
    with reverts(nodes.UnbondingNotOver, endsAt=unbonded):
        nodes.withdrawStake(sender=host)
    # The moment it can leave, the session is finalizable by anyone.
    chain.pending_timestamp = unbonded
    tx = mk.finalize(sid, sender=env.mallory)
    assert _settled(tx, mk) == [(sid, 300)]
    nodes.withdrawStake(sender=host)


def test_marketplace_refuses_an_unbonding_period_shorter_than_a_session(env, project):
    d, p = env.deployer, env.project
    short = d.deploy(p.NodeRegistry, d, env.fab, env.models, 10**18, SETTLEMENT_WINDOW + 59, 5000)
    exact = d.deploy(p.NodeRegistry, d, env.fab, env.models, 10**18, SETTLEMENT_WINDOW + 60, 5000)
    long = d.deploy(p.NodeRegistry, d, env.fab, env.models, 10**18, 365 * DAY, 5000)

    def args(nodes):
        address = d.get_deployment_address(d.nonce + 2)
        e = d.deploy(p.HostEarnings, address)
        t = d.deploy(p.Treasury, d, address)
        return [d, nodes, env.proofs, e, t, FEE_BPS, SETTLEMENT_WINDOW, 1]

    mk = p.JobMarketplace
    deploy_reverts(
        d, mk, args(short), mk.UnbondingTooShort, SETTLEMENT_WINDOW + 59, SETTLEMENT_WINDOW
    )
    assert d.deploy(mk, *args(exact)).maxDuration() == 60
    # MAX_DURATION stays the ceiling however long the unbonding.
    assert d.deploy(mk, *args(long)).maxDuration() == 30 * DAY


# ------------------------------------- 2. balance + escrow stays within 128 bits


@pytest.fixture
def big(env):
    """An open-mint token the token admin accepts, with a supply beyond 2^128."""
    token = env.deployer.deploy(env.project.MockUSDC)
    env.mk.configureToken(token, True, 1, sender=env.deployer)
    env.nodes.setMinPrices([token], [1], sender=env.host)
    token.mint(env.alice, U128 + 2 * 10**13, sender=env.deployer)
    token.approve(env.mk, 2**256 - 1, sender=env.alice)
    return token


def test_refund_cannot_wrap_the_balance(env, big, session_key, chain):
    """Repro of finding 2: deposit 2^128-1, open a session from it, deposit the escrowed
    amount again (the balance alone still fit), close, finalize: the refund wrapped the
    balance past 2^128 and the books were off by 2^128. Deposits now bound balance +
    escrow."""
    mk, alice = env.mk, env.alice
    escrow = 10**13  # 10**6 tokens at 10**7 each
    mk.deposit(big, U128, sender=alice)
    tx = mk.createSession(
        env.host,
        MODEL_ID,
        big,
        escrow,
        10**7,
        3600,
        PROOF_INTERVAL,
        session_key.address,
        sender=alice,
    )
    sid = int(tx.decode_logs(mk.SessionCreated)[0].sessionId)
    assert mk.balanceOf(alice, big) + mk.escrowedOf(alice, big) == U128
    for amount in (escrow, 1):
        with reverts(mk.SafeCastOverflowedUintDowncast, bits=128, value=U128 + amount):
            mk.deposit(big, amount, sender=alice)

    mk.requestClose(sid, sender=alice)
    chain.pending_timestamp = mk.getSession(sid).finalizeAfter
    mk.finalize(sid, sender=env.mallory)
    assert mk.balanceOf(alice, big) == U128
    assert mk.escrowedOf(alice, big) == 0
    assert big.balanceOf(mk) == token_totals(env, big, [alice], [env.host]) == U128


def test_books_exact_at_the_128_bit_limit(env, big, session_key):
    """A session settled with the account at exactly 2^128-1 keeps every unit."""
    mk, alice = env.mk, env.alice
    mk.deposit(big, U128, sender=alice)
    tx = mk.createSession(
        env.host,
        MODEL_ID,
        big,
        10**13,
        10**7,
        3600,
        PROOF_INTERVAL,
        session_key.address,
        sender=alice,
    )
    sid = int(tx.decode_logs(mk.SessionCreated)[0].sessionId)
    mk.settleWithReceipt(*sign(env, session_key, sid, 123_456), sender=env.host)
    paid = 123_456 * 10**7
    assert mk.balanceOf(alice, big) == U128 - paid
    assert env.earnings.balanceOf(env.host, big) + env.treasury.balanceOf(big) == paid
    assert big.balanceOf(mk) == token_totals(env, big, [alice], [env.host]) == U128


# ------------------------------------------------- 3. withdrawTo, both ledgers


@pytest.fixture
def blocky(env):
    """A USDC-like token that blocklists addresses; accepted and priced by env.host."""
    token = env.deployer.deploy(env.project.BlocklistToken)
    env.mk.configureToken(token, True, 10**6, sender=env.deployer)
    env.nodes.setMinPrices([token], [100], sender=env.host)
    token.mint(env.alice, 10**9, sender=env.deployer)
    token.approve(env.mk, 2**256 - 1, sender=env.alice)
    return token


def test_vault_withdraw_to_for_a_receiver_that_reverts(env, project):
    mk, op, payee = env.mk, env.deployer, env.payee
    rx = op.deploy(project.RevertingEthReceiver)
    rx.execute(mk, 10**15, mk.deposit.encode_input(ZERO, 10**15), value=10**15, sender=op)
    with reverts(mk.EthTransferFailed, to=rx.address, amount=10**15):
        rx.execute(mk, 0, mk.withdraw.encode_input(ZERO, 10**15), sender=op)
    before = payee.balance
    tx = rx.execute(mk, 0, mk.withdrawTo.encode_input(ZERO, payee, 4 * 10**14), sender=op)
    assert tx.decode_logs(mk.Withdrawn)[0].to == payee.address
    assert payee.balance == before + 4 * 10**14
    assert mk.balanceOf(rx, ZERO) == 6 * 10**14
    assert mk.balance == 6 * 10**14


def test_vault_withdraw_to_for_a_blocklisted_user(env, blocky):
    mk, alice, payee = env.mk, env.alice, env.payee
    mk.deposit(blocky, 10**9, sender=alice)
    blocky.setBlocked(alice, True, sender=env.deployer)
    with reverts(blocky.Blocklisted, account=alice.address):
        mk.withdraw(blocky, 10**9, sender=alice)
    tx = mk.withdrawTo(blocky, payee, 10**9, sender=alice)
    assert tx.events.filter(mk.Withdrawn) == [
        mk.Withdrawn(user=alice, token=blocky, amount=10**9, to=payee)
    ]
    assert blocky.balanceOf(payee) == 10**9
    assert mk.balanceOf(alice, blocky) == 0
    assert blocky.balanceOf(mk) == 0


def test_vault_withdraw_to_refusals(env):
    mk, alice = env.mk, env.alice
    mk.deposit(env.usdc, 10**6, sender=alice)
    for bad in (ZERO, mk.address):
        with reverts(mk.InvalidRecipient, to=bad):
            mk.withdrawTo(env.usdc, bad, 1, sender=alice)
    with reverts(mk.ZeroAmount):
        mk.withdrawTo(env.usdc, env.payee, 0, sender=alice)
    with reverts(mk.InsufficientBalance, available=10**6, required=10**6 + 1):
        mk.withdrawTo(env.usdc, env.payee, 10**6 + 1, sender=alice)
    # Someone else's balance is not the caller's.
    with reverts(mk.InsufficientBalance, available=0, required=1):
        mk.withdrawTo(env.usdc, env.mallory, 1, sender=env.mallory)
    assert mk.balanceOf(alice, env.usdc) == 10**6


def test_host_earnings_withdraw_to_for_a_contract_host(env, project, session_key):
    """A host that is a contract without receive() could never take its ETH out."""
    mk, op, payee, earnings = env.mk, env.deployer, env.payee, env.earnings
    proxy = op.deploy(project.RevertingEthReceiver)
    register_contract_host(env, proxy, op)
    sid = open_eth(env, host=proxy, key=session_key)
    data = mk.settleWithReceipt.encode_input(*sign(env, session_key, sid, 1000))
    proxy.execute(mk, 0, data, sender=op)
    owed = earnings.balanceOf(proxy, ZERO)
    assert owed == 1000 * ETH_PRICE * (10_000 - FEE_BPS) // 10_000
    with reverts(mk.EthTransferFailed, to=proxy.address, amount=owed):
        proxy.execute(earnings, 0, earnings.withdraw.encode_input(ZERO), sender=op)
    before = payee.balance
    data = earnings.withdrawTo.encode_input(ZERO, payee, owed - 5)
    tx = proxy.execute(earnings, 0, data, sender=op)
    assert tx.decode_logs(earnings.EarningsWithdrawn)[0].to == payee.address
    assert payee.balance == before + owed - 5
    assert earnings.balanceOf(proxy, ZERO) == 5
    assert earnings.totalEarned(proxy, ZERO) == owed
    assert mk.balance == ETH_DEPOSIT - (owed - 5)


def test_host_earnings_withdraw_to_for_a_blocklisted_host(env, blocky, session_key):
    mk, host, payee, earnings = env.mk, env.host, env.payee, env.earnings
    tx = mk.createSessionFromWallet(
        host,
        MODEL_ID,
        blocky,
        10**6,
        100,
        3600,
        PROOF_INTERVAL,
        session_key.address,
        sender=env.alice,
    )
    sid = int(tx.decode_logs(mk.SessionCreated)[0].sessionId)
    mk.settleWithReceipt(*sign(env, session_key, sid, 5000), sender=host)
    owed = earnings.balanceOf(host, blocky)
    assert owed == 5000 * 100 * (10_000 - FEE_BPS) // 10_000
    blocky.setBlocked(host, True, sender=env.deployer)
    with reverts(blocky.Blocklisted, account=host.address):
        earnings.withdraw(blocky, sender=host)
    tx = earnings.withdrawTo(blocky, payee, owed, sender=host)
    assert tx.events.filter(earnings.EarningsWithdrawn) == [
        earnings.EarningsWithdrawn(host=host, token=blocky, amount=owed, to=payee)
    ]
    assert blocky.balanceOf(payee) == owed
    assert earnings.balanceOf(host, blocky) == 0


def test_host_earnings_withdraw_to_refusals(env, session_key):
    mk, host, earnings = env.mk, env.host, env.earnings
    sid = open_usdc(env, key=session_key)
    mk.settleWithReceipt(*sign(env, session_key, sid, 1000), sender=host)
    owed = earnings.balanceOf(host, env.usdc)
    for bad in (ZERO, mk.address):
        with reverts(earnings.InvalidRecipient, to=bad):
            earnings.withdrawTo(env.usdc, bad, 1, sender=host)
    with reverts(earnings.ZeroAmount):
        earnings.withdrawTo(env.usdc, env.payee, 0, sender=host)
    with reverts(earnings.InsufficientEarnings, requested=owed + 1, available=owed):
        earnings.withdrawTo(env.usdc, env.payee, owed + 1, sender=host)
    with reverts(earnings.InsufficientEarnings, requested=1, available=0):
        earnings.withdrawTo(env.usdc, env.mallory, 1, sender=env.mallory)
    assert earnings.balanceOf(host, env.usdc) == owed


# ----------------------------------------- 4. a copied receipt cannot grief settlement


def test_copied_receipt_does_not_block_settle_with_receipt(env, session_key):
    """Repro of finding 4: anyone copies the host's pending receipt into submitCheckpoint
    first; the host's settleWithReceipt reverted StaleReceipt. It now settles."""
    mk = env.mk
    sid = open_usdc(env, key=session_key)
    receipt = sign(env, session_key, sid, 300)
    mk.submitCheckpoint(*receipt, sender=env.mallory)
    tx = mk.settleWithReceipt(*receipt, sender=env.host)
    assert _settled(tx, mk) == [(sid, 300)]
    assert tx.decode_logs(mk.CheckpointSubmitted) == []
    assert mk.getSession(sid).status == Status.SETTLED


def test_copied_receipt_does_not_skip_a_batch_item(env, session_key):
    mk = env.mk
    a, b = open_usdc(env, key=session_key), open_usdc(env, key=session_key)
    items = [sign(env, session_key, a, 200), sign(env, session_key, b, 400)]
    mk.submitCheckpoint(*items[1], sender=env.mallory)
    assert mk.settleBatch.call(items, sender=env.host) == [0, 0]
    tx = mk.settleBatch(items, sender=env.host)
    assert tx.decode_logs(mk.BatchItemSkipped) == []
    assert _settled(tx, mk) == [(a, 200), (b, 400)]


def test_copied_receipt_does_not_block_the_clients_close(env, session_key):
    mk = env.mk
    sid = open_usdc(env, key=session_key)
    receipt = sign(env, session_key, sid, 300)
    mk.submitCheckpoint(*receipt, sender=env.host)
    mk.requestCloseWithReceipt(*receipt, sender=env.alice)
    info = mk.getSession(sid)
    assert (info.status, info.tokensUsed) == (Status.CLOSING, 300)


def test_equal_receipt_on_a_settled_session_still_refused(env, session_key):
    mk = env.mk
    sid = open_usdc(env, key=session_key)
    receipt = sign(env, session_key, sid, 300)
    mk.settleWithReceipt(*receipt, sender=env.host)
    with reverts(mk.SessionNotOpen, sessionId=sid, status=Status.SETTLED):
        mk.settleWithReceipt(*receipt, sender=env.host)
    with reverts(mk.SessionNotOpen, sessionId=sid, status=Status.SETTLED):
        mk.requestCloseWithReceipt(*receipt, sender=env.alice)
    assert mk.settleBatch.call([receipt], sender=env.host) == [2]  # NotOpen


# ------------------------------------------------------------ 6. donations


def test_donations_leave_a_surplus_not_a_failed_check(env, project, session_key):
    """Finding 6: a plain transfer or forced ETH makes the vault hold more than it owes;
    the books check (the demo's, VaultBooks) reports the surplus and still balances."""
    mk, usdc = env.mk, env.usdc
    users, hosts = [env.alice], [env.host]
    sid = open_usdc(env, key=session_key)
    mk.settleWithReceipt(*sign(env, session_key, sid, 1000), sender=env.host)
    e = open_eth(env, key=session_key)

    usdc.transfer(mk, 7, sender=env.bob)
    env.deployer.deploy(project.ForceEth, mk, value=3)
    for token, donated in ((usdc, 7), (ZERO, 3)):
        held = usdc.balanceOf(mk) if token == usdc else mk.balance
        books = VaultBooks(held=held, owed=token_totals(env, token, users, hosts))
        assert books.balanced
        assert books.surplus == donated
        assert books.shortfall == 0
    # Nobody owns the surplus: every owed unit still comes out, the donation stays.
    mk.settle(e, sender=env.host)
    mk.withdraw(usdc, mk.balanceOf(env.alice, usdc), sender=env.alice)
    env.earnings.withdrawMany([usdc, ZERO], sender=env.host)
    env.treasury.withdraw(usdc, env.payee, env.treasury.balanceOf(usdc), sender=env.treasurer)
    assert usdc.balanceOf(mk) == 7
    assert VaultBooks(held=6, owed=7).shortfall == 1
    assert not VaultBooks(held=6, owed=7).balanced


# --------------------------------------------- what the suites missed (mutants)


def test_host_earnings_credit_up_to_exactly_128_bits(env, project):
    """The AmountTooLarge guard, exactly at its edge, on a ledger whose marketplace is a
    test account (so credits can be driven directly)."""
    market = env.mallory
    ledger = env.deployer.deploy(project.HostEarnings, market)
    ledger.credit(env.host, env.usdc, U128 - 1, sender=market)
    ledger.credit(env.host, env.usdc, 1, sender=market)
    assert ledger.balanceOf(env.host, env.usdc) == ledger.totalEarned(env.host, env.usdc) == U128
    with reverts(ledger.AmountTooLarge):
        ledger.credit(env.host, env.usdc, 1, sender=market)
    assert ledger.balanceOf(env.host, env.usdc) == ledger.totalEarned(env.host, env.usdc) == U128
    # Another host's account is separate.
    ledger.credit(env.host2, env.usdc, U128, sender=market)


def test_treasury_credit_up_to_exactly_128_bits(env, project):
    market = env.mallory
    ledger = env.deployer.deploy(project.Treasury, env.deployer, market)
    ledger.credit(env.usdc, U128 - 1, sender=market)
    ledger.credit(env.usdc, 1, sender=market)
    assert ledger.balanceOf(env.usdc) == ledger.totalCollected(env.usdc) == U128
    with reverts(ledger.AmountTooLarge):
        ledger.credit(env.usdc, 1, sender=market)
    assert ledger.balanceOf(env.usdc) == ledger.totalCollected(env.usdc) == U128
    ledger.credit(ZERO, U128, sender=market)


def test_largest_storable_price_accepted(env, session_key):
    """pricePerToken is stored in 64 bits: 2^64-1 is accepted (2^64 is refused in
    test_sessions) and settles to the unit."""
    mk, usdc, alice = env.mk, env.usdc, env.alice
    price = 2**64 - 1
    usdc.mint(alice, 3 * price, sender=env.deployer)
    tx = mk.createSessionFromWallet(
        env.host, MODEL_ID, usdc, 3 * price, price, 3600, 1, session_key.address, sender=alice
    )
    sid = int(tx.decode_logs(mk.SessionCreated)[0].sessionId)
    info = mk.getSession(sid)
    assert (info.pricePerToken, info.maxTokens, info.deposit) == (price, 3, 3 * price)
    mk.settleWithReceipt(*sign(env, session_key, sid, 2), sender=env.host)
    fee = 2 * price * FEE_BPS // 10_000
    assert env.treasury.balanceOf(usdc) == fee
    assert env.earnings.balanceOf(env.host, usdc) == 2 * price - fee
    assert mk.escrowedOf(alice, usdc) == 0


# ------------------------------------------------------------------- roles


def test_no_role_moves_a_users_balance_or_escrow(env, session_key, chain):
    """Every role holder uses every power it has while alice holds a balance and an open
    session; none of it changes her balance or escrow, and she gets every unit back."""
    mk, usdc, alice, d = env.mk, env.usdc, env.alice, env.deployer
    mk.deposit(usdc, 5 * 10**6, sender=alice)
    sid = open_usdc(env, key=session_key)
    mk.submitCheckpoint(*sign(env, session_key, sid, 1000), sender=env.host)
    before = (mk.balanceOf(alice, usdc), mk.escrowedOf(alice, usdc))

    mk.pause(sender=d)  # pauser
    mk.configureToken(usdc, False, 0, sender=d)  # token admin: delist
    env.models.deactivateModel(MODEL_ID, sender=env.curator)  # curator
    env.nodes.slash(env.host, 10**18, "test", sender=env.slasher)  # slasher
    for who in (d, env.curator, env.treasurer, env.host):
        with reverts(mk.OnlyLedger):
            mk.payout(usdc, who, 1, sender=who)
        with reverts(mk.InsufficientBalance, available=0, required=1):
            mk.withdrawTo(usdc, who, 1, sender=who)
    assert (mk.balanceOf(alice, usdc), mk.escrowedOf(alice, usdc)) == before

    # Her session still ends and everything comes back to her.
    mk.requestClose(sid, sender=alice)
    chain.pending_timestamp = mk.getSession(sid).finalizeAfter
    mk.finalize(sid, sender=env.mallory)
    wallet = usdc.balanceOf(alice)
    mk.withdraw(usdc, mk.balanceOf(alice, usdc), sender=alice)
    assert usdc.balanceOf(alice) - wallet == before[0] + before[1] - 1000 * 200


def test_functions_that_move_tokens_are_the_reviewed_ones(env):
    """A new state-changing function on the vault or the ledgers must be reviewed against
    the role table in docs/security.md: this list is that table's index."""

    def mutating(contract):
        return sorted(
            abi.name
            for abi in contract.contract_type.abi
            if abi.type == "function" and abi.stateMutability in ("nonpayable", "payable")
        )

    assert mutating(env.mk) == [
        "configureToken", "createSession", "createSessionFromWallet", "deposit", "finalize",
        "grantRole", "pause", "payout", "renounceRole", "requestClose",
        "requestCloseWithReceipt", "revokeRole", "settle", "settleBatch", "settleWithReceipt",
        "submitCheckpoint", "unpause", "withdraw", "withdrawTo",
    ]  # fmt: skip
    assert mutating(env.earnings) == ["credit", "withdraw", "withdrawMany", "withdrawTo"]
    assert mutating(env.treasury) == [
        "credit",
        "grantRole",
        "renounceRole",
        "revokeRole",
        "withdraw",
    ]
