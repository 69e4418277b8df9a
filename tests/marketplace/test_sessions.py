"""Opening sessions: createSession / createSessionFromWallet, every check, escrow math, views."""

from __future__ import annotations

import pytest
from support.marketplace import (
    DEPOSIT,
    DURATION,
    ETH_DEPOSIT,
    ETH_PRICE,
    HOST_USDC_MIN_PRICE,
    MAX_TOKENS,
    MODEL_ID,
    OTHER_MODEL_ID,
    PRICE,
    PROOF_INTERVAL,
    SETTLEMENT_WINDOW,
    USDC_MIN_DEPOSIT,
    USDC_UNIT,
    ZERO,
    Status,
    fees,
    open_usdc,
    sign,
)
from support.reverts import reverts, view_reverts

DAY = 24 * 3600


def _args(env, **kw):
    a = {
        "host": env.host,
        "model": MODEL_ID,
        "token": env.usdc,
        "deposit": DEPOSIT,
        "price": PRICE,
        "duration": DURATION,
        "interval": PROOF_INTERVAL,
        "key": ZERO,
    }
    a.update(kw)
    return [
        a[k] for k in ("host", "model", "token", "deposit", "price", "duration", "interval", "key")
    ]


# ------------------------------------------------------------ success paths


def test_create_session_from_balance(env, session_key, chain):
    mk, usdc, alice = env.mk, env.usdc, env.alice
    mk.deposit(usdc, 3 * USDC_UNIT, sender=alice)
    deposit = DEPOSIT + PRICE - 1  # not a whole number of tokens' worth
    tx = mk.createSession(*_args(env, deposit=deposit, key=session_key.address), sender=alice)
    (log,) = tx.decode_logs(mk.SessionCreated)
    sid = log.sessionId
    assert sid == 1 == mk.sessionCount()
    now = chain.blocks[-1].timestamp
    # escrow = floor(deposit / price) * price; the remainder stays in the balance
    assert log.deposit == DEPOSIT
    assert mk.escrowedOf(alice, usdc) == DEPOSIT
    assert mk.balanceOf(alice, usdc) == 3 * USDC_UNIT - DEPOSIT
    assert usdc.balanceOf(mk) == 3 * USDC_UNIT  # nothing moved
    assert (log.depositor, log.host, log.token) == (alice.address, env.host.address, usdc.address)
    assert log.modelId == MODEL_ID
    assert (log.pricePerToken, log.endsAt, log.proofInterval) == (PRICE, now + DURATION, 100)
    assert log.sessionKey == session_key.address

    s = mk.getSession(sid)
    assert s.id == sid
    assert s.depositor == alice.address
    assert s.host == env.host.address
    assert s.sessionKey == session_key.address
    assert s.token == usdc.address
    assert s.modelId == MODEL_ID
    assert s.pricePerToken == PRICE
    assert s.deposit == DEPOSIT
    assert s.maxTokens == MAX_TOKENS
    assert s.tokensUsed == 0
    assert s.endsAt == now + DURATION
    assert s.finalizeAfter == now + DURATION + SETTLEMENT_WINDOW
    assert s.proofInterval == PROOF_INTERVAL
    assert s.status == Status.ACTIVE
    assert mk.remainingBudget(sid) == (MAX_TOKENS, DEPOSIT)


def test_session_key_defaults_to_depositor(env):
    sid = open_usdc(env)
    assert env.mk.getSession(sid).sessionKey == env.alice.address


def test_create_session_other_model_and_host(env):
    sid = open_usdc(env, env.bob, host=env.host2, model=OTHER_MODEL_ID)
    s = env.mk.getSession(sid)
    assert (s.host, s.modelId, s.depositor) == (env.host2.address, OTHER_MODEL_ID, env.bob.address)


def test_from_wallet_pulls_only_the_missing_part(env):
    mk, usdc, alice = env.mk, env.usdc, env.alice
    mk.deposit(usdc, 300_000, sender=alice)
    wallet = usdc.balanceOf(alice)
    tx = mk.createSessionFromWallet(*_args(env), sender=alice)
    assert usdc.balanceOf(alice) == wallet - (DEPOSIT - 300_000)
    assert mk.balanceOf(alice, usdc) == 0
    assert mk.escrowedOf(alice, usdc) == DEPOSIT
    assert usdc.balanceOf(mk) == DEPOSIT
    (dep,) = tx.decode_logs(mk.Deposited)
    assert (dep.user, dep.token, dep.amount) == (alice.address, usdc.address, DEPOSIT - 300_000)


def test_from_wallet_pulls_nothing_when_balance_covers(env):
    mk, usdc, alice = env.mk, env.usdc, env.alice
    mk.deposit(usdc, 2 * DEPOSIT, sender=alice)
    wallet = usdc.balanceOf(alice)
    tx = mk.createSessionFromWallet(*_args(env), sender=alice)
    assert usdc.balanceOf(alice) == wallet
    assert mk.balanceOf(alice, usdc) == DEPOSIT
    assert not tx.decode_logs(mk.Deposited)


def test_from_wallet_floors_deposit_and_pulls_only_escrow(env):
    mk, usdc, alice = env.mk, env.usdc, env.alice
    wallet = usdc.balanceOf(alice)
    mk.createSessionFromWallet(*_args(env, deposit=DEPOSIT + 150), sender=alice)
    assert usdc.balanceOf(alice) == wallet - DEPOSIT
    assert mk.balanceOf(alice, usdc) == 0


def test_from_wallet_eth_excess_value_is_credited(env):
    mk, alice = env.mk, env.alice
    deposit = ETH_DEPOSIT + ETH_PRICE - 1  # escrow floors to ETH_DEPOSIT
    before = alice.balance
    tx = mk.createSessionFromWallet(
        *_args(env, token=ZERO, deposit=deposit, price=ETH_PRICE),
        value=ETH_DEPOSIT + 12345,
        sender=alice,
    )
    assert alice.balance == before - ETH_DEPOSIT - 12345 - fees(tx)
    assert mk.escrowedOf(alice, ZERO) == ETH_DEPOSIT
    assert mk.balanceOf(alice, ZERO) == 12345
    assert mk.balance == ETH_DEPOSIT + 12345
    (dep,) = tx.decode_logs(mk.Deposited)
    assert dep.amount == ETH_DEPOSIT + 12345
    s = mk.getSession(tx.decode_logs(mk.SessionCreated)[0].sessionId)
    assert (s.token, s.deposit, s.maxTokens) == (ZERO, ETH_DEPOSIT, ETH_DEPOSIT // ETH_PRICE)


def test_from_wallet_eth_tops_up_existing_balance(env):
    mk, alice = env.mk, env.alice
    mk.deposit(ZERO, ETH_DEPOSIT // 2, value=ETH_DEPOSIT // 2, sender=alice)
    args = _args(env, token=ZERO, deposit=ETH_DEPOSIT, price=ETH_PRICE)
    with reverts(mk.InsufficientBalance, available=ETH_DEPOSIT // 2 + 1, required=ETH_DEPOSIT):
        mk.createSessionFromWallet(*args, value=1, sender=alice)
    mk.createSessionFromWallet(*args, value=ETH_DEPOSIT // 2, sender=alice)
    assert mk.balanceOf(alice, ZERO) == 0
    assert mk.escrowedOf(alice, ZERO) == ETH_DEPOSIT


def test_from_wallet_erc20_with_eth_value(env):
    with reverts(env.mk.WrongEthValue, sent=1, expected=0):
        env.mk.createSessionFromWallet(*_args(env), value=1, sender=env.alice)


def test_from_wallet_erc20_without_allowance(env):
    mk, usdc = env.mk, env.usdc
    usdc.approve(mk, DEPOSIT - 1, sender=env.alice)
    with reverts(
        usdc.ERC20InsufficientAllowance,
        spender=mk.address,
        allowance=DEPOSIT - 1,
        needed=DEPOSIT,
    ):
        mk.createSessionFromWallet(*_args(env), sender=env.alice)
    assert mk.sessionCount() == 0


def test_create_session_insufficient_balance(env):
    mk = env.mk
    with reverts(mk.InsufficientBalance, available=0, required=DEPOSIT):
        mk.createSession(*_args(env), sender=env.alice)
    mk.deposit(env.usdc, DEPOSIT - 1, sender=env.alice)
    with reverts(mk.InsufficientBalance, available=DEPOSIT - 1, required=DEPOSIT):
        mk.createSession(*_args(env), sender=env.alice)
    # another user's deposit is not spendable
    mk.deposit(env.usdc, DEPOSIT, sender=env.bob)
    with reverts(mk.InsufficientBalance, available=DEPOSIT - 1, required=DEPOSIT):
        mk.createSession(*_args(env), sender=env.alice)
    assert mk.sessionCount() == 0


def test_boundaries_accepted(env):
    mk, alice = env.mk, env.alice
    mk.deposit(env.usdc, 100 * USDC_UNIT, sender=alice)
    # shortest and longest duration, proofInterval == deposit / price, minimum deposit
    mk.createSession(*_args(env, duration=60), sender=alice)
    mk.createSession(*_args(env, duration=mk.maxDuration()), sender=alice)
    mk.createSession(*_args(env, interval=MAX_TOKENS), sender=alice)
    mk.createSession(*_args(env, price=HOST_USDC_MIN_PRICE), sender=alice)
    assert mk.sessionCount() == 4
    assert mk.escrowedOf(alice, env.usdc) == 4 * USDC_MIN_DEPOSIT


def test_session_ids_increment(env):
    ids = [open_usdc(env) for _ in range(3)]
    assert ids == [1, 2, 3]
    assert env.mk.sessionCount() == 3


# ------------------------------------------------------ every revert path


def _deactivate(env):
    env.models.deactivateModel(MODEL_ID, sender=env.curator)


def _unregister(env):
    env.nodes.unregister(sender=env.host)


def _slash(env):
    env.nodes.slash(env.host, 1, "test", sender=env.slasher)


def _stop_usdc(env):
    env.nodes.setMinPrices([env.usdc.address], [0], sender=env.host)


def _disable_usdc(env):
    env.mk.configureToken(env.usdc, False, USDC_MIN_DEPOSIT, sender=env.deployer)


def _pause(env):
    env.mk.pause(sender=env.deployer)


# (id, setup, argument overrides, error name, error inputs) - addresses as attribute names
CASES = [
    ("token-unknown", None, {"token": "mallory"}, "TokenNotAccepted", {"token": "mallory"}),
    ("token-disabled", _disable_usdc, {}, "TokenNotAccepted", {"token": "usdc"}),
    ("price-zero", None, {"price": 0}, "InvalidPrice", {"pricePerToken": 0}),
    ("price-over-uint64", None, {"price": 2**64}, "InvalidPrice", {"pricePerToken": 2**64}),
    ("duration-low", None, {"duration": 59}, "InvalidDuration", {"duration": 59}),
    (
        "duration-high",
        None,
        {"duration": 30 * DAY + 1},
        "InvalidDuration",
        {"duration": 30 * DAY + 1},
    ),
    ("interval-zero", None, {"interval": 0}, "InvalidProofInterval", {"proofInterval": 0}),
    (
        "interval-over-uint24",
        None,
        {"interval": 2**24},
        "InvalidProofInterval",
        {"proofInterval": 2**24},
    ),
    (
        "deposit-below-interval",
        None,
        {"interval": MAX_TOKENS + 1},
        "DepositBelowProofInterval",
        {"maxTokens": MAX_TOKENS, "proofInterval": MAX_TOKENS + 1},
    ),
    (
        "deposit-too-large",
        None,
        {"price": 100, "deposit": 100 * 2**40},
        "DepositTooLarge",
        {"deposit": 100 * 2**40},
    ),
    (
        "deposit-below-minimum",
        None,
        {"deposit": USDC_MIN_DEPOSIT - 1, "price": 100},
        "DepositBelowMinimum",
        {"deposit": USDC_MIN_DEPOSIT - 100, "minDeposit": USDC_MIN_DEPOSIT},
    ),
    (
        # the minimum applies to the escrow after flooring, not to the deposit asked
        "escrow-floors-below-minimum",
        None,
        {"deposit": USDC_MIN_DEPOSIT + 150, "price": 300},
        "DepositBelowMinimum",
        {"deposit": 999_900, "minDeposit": USDC_MIN_DEPOSIT},
    ),
    ("self-session", None, {"sender": "host"}, "SelfSession", {}),
    # the host must never hold the key that signs its receipts
    ("session-key-is-host", None, {"key": "host"}, "SessionKeyIsHost", {}),
    ("host-unregistered", None, {"host": "mallory"}, "HostNotActive", {"host": "mallory"}),
    ("host-unbonding", _unregister, {}, "HostNotActive", {"host": "host"}),
    ("host-slashed-below-min", _slash, {}, "HostNotActive", {"host": "host"}),
    ("model-deactivated", _deactivate, {}, "ModelNotApproved", {"modelId": MODEL_ID}),
    (
        "model-unknown",
        None,
        {"model": b"\x01" * 32},
        "ModelNotApproved",
        {"modelId": b"\x01" * 32},
    ),
    (
        "host-does-not-serve",
        None,
        {"model": OTHER_MODEL_ID},
        "HostDoesNotServeModel",
        {"host": "host", "modelId": OTHER_MODEL_ID},
    ),
    (
        "host-stopped-token",
        _stop_usdc,
        {},
        "HostDoesNotAcceptToken",
        {"host": "host", "token": "usdc"},
    ),
    (
        "price-below-host-min",
        None,
        {"price": HOST_USDC_MIN_PRICE - 1, "deposit": 10 * DEPOSIT},
        "PriceBelowHostMinimum",
        {"pricePerToken": HOST_USDC_MIN_PRICE - 1, "minPrice": HOST_USDC_MIN_PRICE},
    ),
    ("paused", _pause, {}, "EnforcedPause", {}),
]


def _resolve(env, value):
    return getattr(env, value) if isinstance(value, str) else value


@pytest.mark.parametrize("from_wallet", [False, True], ids=["balance", "wallet"])
@pytest.mark.parametrize(
    ("setup", "overrides", "error", "inputs"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_create_session_reverts(env, from_wallet, setup, overrides, error, inputs):
    mk = env.mk
    mk.deposit(env.usdc, 10 * USDC_UNIT, sender=env.alice)
    mk.deposit(env.usdc, 10 * USDC_UNIT, sender=env.host)
    if setup:
        setup(env)
    overrides = dict(overrides)
    sender = _resolve(env, overrides.pop("sender", "alice"))
    args = _args(env, **{k: _resolve(env, v) for k, v in overrides.items()})
    fn = mk.createSessionFromWallet if from_wallet else mk.createSession
    with reverts(getattr(mk, error), **{k: _resolve(env, v) for k, v in inputs.items()}):
        fn(*args, sender=sender)
    assert mk.sessionCount() == 0
    assert mk.escrowedOf(sender, env.usdc) == 0


def test_slashed_host_active_again_after_top_up(env):
    _slash(env)
    env.nodes.addStake(1, sender=env.host)
    assert env.mk.getSession(open_usdc(env)).host == env.host.address


def test_unpause_allows_new_sessions(env):
    _pause(env)
    env.mk.unpause(sender=env.deployer)
    open_usdc(env)


# ------------------------------------------------------------------ views


def test_get_session_unknown(env):
    mk = env.mk
    view_reverts(mk.getSession, [0], mk.UnknownSession, sessionId=0)
    view_reverts(mk.getSession, [1], mk.UnknownSession, sessionId=1)
    view_reverts(mk.remainingBudget, [7], mk.UnknownSession, sessionId=7)


def test_remaining_budget(env, session_key):
    mk = env.mk
    sid = open_usdc(env, key=session_key)
    assert mk.remainingBudget(sid) == (MAX_TOKENS, DEPOSIT)
    mk.submitCheckpoint(*sign(env, session_key, sid, 1234), sender=env.host)
    assert mk.remainingBudget(sid) == (MAX_TOKENS - 1234, (MAX_TOKENS - 1234) * PRICE)
    mk.settle(sid, sender=env.host)
    assert mk.remainingBudget(sid) == (0, 0)


def test_get_session_after_model_deactivated_and_host_gone(env):
    """The session view keeps working whatever happens to the model and the host."""
    sid = open_usdc(env)
    _deactivate(env)
    _unregister(env)
    s = env.mk.getSession(sid)
    assert (s.modelId, s.host, s.status) == (MODEL_ID, env.host.address, Status.ACTIVE)
