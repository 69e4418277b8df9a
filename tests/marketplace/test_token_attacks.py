"""Hostile and odd tokens and receivers: reentrancy through an ERC20 and through ETH
receivers, fee-on-transfer tokens, USDT-like tokens without return values, and
recipients that refuse ETH."""

from __future__ import annotations

import ape
import pytest
from support.marketplace import (
    DURATION,
    ETH_DEPOSIT,
    ETH_PRICE,
    HOST_USDC_MIN_PRICE,
    MODEL_ID,
    PRICE,
    PROOF_INTERVAL,
    USDC_MIN_DEPOSIT,
    ZERO,
    Status,
    open_eth,
    register_contract_host,
    sign,
)
from support.reverts import REENTRANT_CALL_SELECTOR, reverts

AMOUNT = 10 * USDC_MIN_DEPOSIT


def _accept(env, token):
    """The marketplace accepts `token` and env.host takes it at the usual price."""
    env.mk.configureToken(token, True, USDC_MIN_DEPOSIT, sender=env.deployer)
    env.nodes.setMinPrices([token.address], [HOST_USDC_MIN_PRICE], sender=env.host)


def _session_args(env, token, key=ZERO, deposit=USDC_MIN_DEPOSIT):
    return [env.host, MODEL_ID, token, deposit, PRICE, DURATION, PROOF_INTERVAL, key]


# ----------------------------------------------------------- reentrant ERC20


@pytest.fixture
def evil(env, project):
    """A ReentrantToken that is also a marketplace user holding a balance of itself."""
    op = env.deployer
    token = op.deploy(project.ReentrantToken)
    _accept(env, token)
    mk = env.mk
    token.mint(token, 100 * AMOUNT, sender=op)
    token.execute(token, 0, token.approve.encode_input(mk, 2**256 - 1), sender=op)
    token.execute(mk, 0, mk.deposit.encode_input(token, AMOUNT), sender=op)
    assert mk.balanceOf(token, token) == AMOUNT
    return token


def _assert_blocked(attacker):
    assert attacker.reentered()
    assert not attacker.lastSuccess()
    assert attacker.lastResult() == REENTRANT_CALL_SELECTOR


def _assert_books(env, token, users):
    mk = env.mk
    held = sum(mk.balanceOf(u, token) + mk.escrowedOf(u, token) for u in users)
    assert token.balanceOf(mk) == held


@pytest.mark.parametrize("inner", ["withdraw", "deposit"])
def test_reentrancy_erc20_during_withdraw(env, evil, inner):
    """transfer() out of withdraw re-enters withdraw (drain) or deposit (double credit)."""
    mk, op = env.mk, env.deployer
    half = AMOUNT // 2
    evil.arm(mk, getattr(mk, inner).encode_input(evil, half), sender=op)
    wallet = evil.balanceOf(evil)
    evil.execute(mk, 0, mk.withdraw.encode_input(evil, half), sender=op)
    _assert_blocked(evil)
    assert mk.balanceOf(evil, evil) == AMOUNT - half
    assert evil.balanceOf(evil) == wallet + half
    _assert_books(env, evil, [evil])


@pytest.mark.parametrize("inner", ["deposit", "withdraw", "createSessionFromWallet"])
def test_reentrancy_erc20_during_deposit(env, evil, inner):
    """transferFrom() inside deposit re-enters while the credit is not yet backed."""
    mk, op = env.mk, env.deployer
    if inner == "createSessionFromWallet":
        data = mk.createSessionFromWallet.encode_input(*_session_args(env, evil))
    else:
        data = getattr(mk, inner).encode_input(evil, AMOUNT)
    evil.arm(mk, data, sender=op)
    evil.execute(mk, 0, mk.deposit.encode_input(evil, AMOUNT), sender=op)
    _assert_blocked(evil)
    assert mk.balanceOf(evil, evil) == 2 * AMOUNT
    assert mk.escrowedOf(evil, evil) == 0
    assert mk.sessionCount() == 0
    _assert_books(env, evil, [evil])


def test_reentrancy_erc20_during_create_session_from_wallet(env, evil):
    """transferFrom() inside createSessionFromWallet re-enters it to open a second
    session on the same, not yet pulled, funds."""
    mk, op = env.mk, env.deployer
    args = _session_args(env, evil, deposit=3 * AMOUNT)
    evil.arm(mk, mk.createSessionFromWallet.encode_input(*args), sender=op)
    evil.execute(mk, 0, mk.createSessionFromWallet.encode_input(*args), sender=op)
    _assert_blocked(evil)
    assert mk.sessionCount() == 1
    assert mk.escrowedOf(evil, evil) == 3 * AMOUNT
    assert mk.balanceOf(evil, evil) == 0
    _assert_books(env, evil, [evil])


def test_reentrancy_erc20_during_host_payout(env, evil, session_key):
    """transfer() inside a host's earnings payout re-enters HostEarnings.withdraw."""
    mk, op, e = env.mk, env.deployer, env.earnings
    evil.mint(env.alice, AMOUNT, sender=op)
    evil.approve(mk, AMOUNT, sender=env.alice)
    args = _session_args(env, evil, session_key.address)
    tx = mk.createSessionFromWallet(*args, sender=env.alice)
    sid = int(tx.decode_logs(mk.SessionCreated)[0].sessionId)
    mk.settleWithReceipt(*sign(env, session_key, sid, 1000), sender=env.host)
    owed = e.balanceOf(env.host, evil)
    evil.arm(e, e.withdraw.encode_input(evil), sender=op)
    e.withdraw(evil, sender=env.host)
    _assert_blocked(evil)  # HostEarnings' guard (the token re-enters as itself)
    assert evil.balanceOf(env.host) == owed
    assert e.balanceOf(env.host, evil) == 0


# ------------------------------------------------------------ ETH receivers


@pytest.fixture
def evil_host(env, project):
    """A ReentrantEthReceiver registered as a host."""
    op = env.deployer
    rx = op.deploy(project.ReentrantEthReceiver)
    register_contract_host(env, rx, op)
    return rx


def _earn_eth(env, host_contract, session_key, used=10_000):
    mk, op = env.mk, env.deployer
    sid = open_eth(env, host=host_contract, key=session_key)
    receipt = sign(env, session_key, sid, used)
    host_contract.execute(mk, 0, mk.settleWithReceipt.encode_input(*receipt), sender=op)
    return used * ETH_PRICE * 9 // 10


def test_reentrancy_eth_receiver_during_withdraw(env, project):
    mk, op = env.mk, env.deployer
    rx = op.deploy(project.ReentrantEthReceiver)
    rx.execute(mk, 10**16, mk.deposit.encode_input(ZERO, 10**16), value=10**16, sender=op)
    rx.arm(mk, mk.withdraw.encode_input(ZERO, 4 * 10**15), sender=op)
    rx.execute(mk, 0, mk.withdraw.encode_input(ZERO, 4 * 10**15), sender=op)
    _assert_blocked(rx)
    assert rx.balance == 4 * 10**15
    assert mk.balanceOf(rx, ZERO) == 6 * 10**15
    assert mk.balance == 6 * 10**15


@pytest.mark.parametrize("inner", ["earnings.withdraw", "earnings.withdrawMany", "mk.withdraw"])
def test_reentrancy_eth_receiver_during_host_withdraw(env, evil_host, session_key, inner):
    """A host contract re-enters from receive() while HostEarnings pays it out."""
    mk, e, op = env.mk, env.earnings, env.deployer
    owed = _earn_eth(env, evil_host, session_key)
    # give it a marketplace balance too, so re-entering mk.withdraw has something to take
    evil_host.execute(mk, 10**15, mk.deposit.encode_input(ZERO, 10**15), value=10**15, sender=op)
    data = {
        "earnings.withdraw": (e, e.withdraw.encode_input(ZERO)),
        "earnings.withdrawMany": (e, e.withdrawMany.encode_input([ZERO])),
        "mk.withdraw": (mk, mk.withdraw.encode_input(ZERO, 10**15)),
    }[inner]
    evil_host.arm(*data, sender=op)
    held = mk.balance
    evil_host.execute(e, 0, e.withdraw.encode_input(ZERO), sender=op)
    _assert_blocked(evil_host)
    assert evil_host.balance == owed
    assert e.balanceOf(evil_host, ZERO) == 0
    assert mk.balanceOf(evil_host, ZERO) == 10**15
    assert mk.balance == held - owed


def test_reverting_host_keeps_its_earnings(env, project, session_key):
    """A host that refuses ETH cannot withdraw, but loses nothing and can later."""
    mk, e, op = env.mk, env.earnings, env.deployer
    rx = op.deploy(project.RevertingEthReceiver)
    register_contract_host(env, rx, op)
    owed = _earn_eth(env, rx, session_key)
    with reverts(mk.EthTransferFailed, to=rx.address, amount=owed):
        rx.execute(e, 0, e.withdraw.encode_input(ZERO), sender=op)
    assert e.balanceOf(rx, ZERO) == owed
    rx.setRefuse(False, sender=op)
    rx.execute(e, 0, e.withdraw.encode_input(ZERO), sender=op)
    assert rx.balance == owed


def test_reverting_treasury_recipient_keeps_fees(env, project, session_key):
    mk, t = env.mk, env.treasury
    rx = env.deployer.deploy(project.RevertingEthReceiver)
    sid = open_eth(env, key=session_key)
    mk.settleWithReceipt(*sign(env, session_key, sid, 10_000), sender=env.host)
    fee = t.balanceOf(ZERO)
    with reverts(mk.EthTransferFailed, to=rx.address, amount=fee):
        t.withdraw(ZERO, rx, fee, sender=env.treasurer)
    assert t.balanceOf(ZERO) == fee


def test_reverting_client_cannot_block_settlement(env, project, session_key):
    """Nothing is pushed to a client: a depositor that refuses ETH cannot stop its
    session from settling; its refund waits in its balance."""
    mk, op = env.mk, env.deployer
    rx = op.deploy(project.RevertingEthReceiver)
    args = [env.host, MODEL_ID, ZERO, ETH_DEPOSIT, ETH_PRICE, DURATION, PROOF_INTERVAL]
    data = mk.createSessionFromWallet.encode_input(*args, session_key.address)
    rx.execute(mk, ETH_DEPOSIT, data, value=ETH_DEPOSIT, sender=op)
    sid = mk.sessionCount()
    mk.settleWithReceipt(*sign(env, session_key, sid, 100), sender=env.host)
    assert mk.getSession(sid).status == Status.SETTLED
    refund = ETH_DEPOSIT - 100 * ETH_PRICE
    assert mk.balanceOf(rx, ZERO) == refund
    with reverts(mk.EthTransferFailed, to=rx.address, amount=refund):
        rx.execute(mk, 0, mk.withdraw.encode_input(ZERO, refund), sender=op)


# ------------------------------------------------------------- odd tokens


def test_fee_on_transfer_token_refused(env, project):
    mk, op = env.mk, env.deployer
    fot = op.deploy(project.FeeOnTransferToken)
    _accept(env, fot)
    fot.mint(env.alice, 100 * AMOUNT, sender=op)
    fot.approve(mk, 2**256 - 1, sender=env.alice)
    with reverts(
        mk.UnsupportedToken, token=fot.address, expected=AMOUNT, received=AMOUNT * 99 // 100
    ):
        mk.deposit(fot, AMOUNT, sender=env.alice)
    with reverts(
        mk.UnsupportedToken,
        token=fot.address,
        expected=USDC_MIN_DEPOSIT,
        received=USDC_MIN_DEPOSIT * 99 // 100,
    ):
        mk.createSessionFromWallet(*_session_args(env, fot), sender=env.alice)
    assert mk.balanceOf(env.alice, fot) == 0
    assert fot.balanceOf(mk) == 0
    assert mk.sessionCount() == 0


def test_no_return_value_token_works(env, project, session_key):
    """A USDT-like token (transfer/transferFrom return nothing) goes through the whole
    lifecycle via SafeERC20."""
    mk, e, t, op = env.mk, env.earnings, env.treasury, env.deployer
    usdt = op.deploy(project.NoReturnToken)
    _accept(env, usdt)
    usdt.mint(env.alice, 100 * AMOUNT, sender=op)
    usdt.approve(mk, 2**256 - 1, sender=env.alice)

    mk.deposit(usdt, AMOUNT, sender=env.alice)
    tx = mk.createSessionFromWallet(
        *_session_args(env, usdt, session_key.address, deposit=AMOUNT + USDC_MIN_DEPOSIT),
        sender=env.alice,
    )
    sid = int(tx.decode_logs(mk.SessionCreated)[0].sessionId)
    assert usdt.balanceOf(mk) == AMOUNT + USDC_MIN_DEPOSIT
    mk.settleWithReceipt(*sign(env, session_key, sid, 1000), sender=env.host)
    e.withdraw(usdt, sender=env.host)
    t.withdraw(usdt, env.treasurer, t.balanceOf(usdt), sender=env.treasurer)
    mk.withdraw(usdt, mk.balanceOf(env.alice, usdt), sender=env.alice)
    payment = 1000 * PRICE
    assert usdt.balanceOf(env.host) == payment - payment // 10
    assert usdt.balanceOf(env.treasurer) == payment // 10
    assert usdt.balanceOf(env.alice) == 100 * AMOUNT - payment
    assert usdt.balanceOf(mk) == 0


def test_no_return_value_token_failure_is_not_silent(env, project):
    """Without allowance the token reverts; SafeERC20 passes the failure on."""
    mk, op = env.mk, env.deployer
    usdt = op.deploy(project.NoReturnToken)
    _accept(env, usdt)
    usdt.mint(env.alice, AMOUNT, sender=op)
    with ape.reverts("allowance"):
        mk.deposit(usdt, AMOUNT, sender=env.alice)
    assert mk.balanceOf(env.alice, usdt) == 0
