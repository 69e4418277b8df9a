"""JobMarketplace as a vault: deposit, withdraw, payout, token config, pause, views."""

from __future__ import annotations

from support.marketplace import (
    ETH_MIN_DEPOSIT,
    FEE_BPS,
    SETTLEMENT_WINDOW,
    USDC_MIN_DEPOSIT,
    USDC_UNIT,
    ZERO,
    fees,
)
from support.reverts import reverts

# ----------------------------------------------------------------- deposit


def test_deposit_eth(env):
    mk, alice = env.mk, env.alice
    before = alice.balance
    tx = mk.deposit(ZERO, 10**15, value=10**15, sender=alice)
    assert mk.balanceOf(alice, ZERO) == 10**15
    assert mk.escrowedOf(alice, ZERO) == 0
    assert mk.balance == 10**15
    assert alice.balance == before - 10**15 - fees(tx)
    (log,) = tx.decode_logs(mk.Deposited)
    assert (log.user, log.token, log.amount) == (alice.address, ZERO, 10**15)


def test_deposit_usdc(env):
    mk, usdc, alice = env.mk, env.usdc, env.alice
    before = usdc.balanceOf(alice)
    tx = mk.deposit(usdc, 5 * USDC_UNIT, sender=alice)
    assert mk.balanceOf(alice, usdc) == 5 * USDC_UNIT
    assert usdc.balanceOf(mk) == 5 * USDC_UNIT
    assert usdc.balanceOf(alice) == before - 5 * USDC_UNIT
    (log,) = tx.decode_logs(mk.Deposited)
    assert (log.token, log.amount) == (usdc.address, 5 * USDC_UNIT)
    # a second deposit adds up
    mk.deposit(usdc, 1, sender=alice)
    assert mk.balanceOf(alice, usdc) == 5 * USDC_UNIT + 1


def test_deposit_eth_wrong_value_both_ways(env):
    mk, alice = env.mk, env.alice
    with reverts(mk.WrongEthValue, sent=999, expected=1000):
        mk.deposit(ZERO, 1000, value=999, sender=alice)
    with reverts(mk.WrongEthValue, sent=1001, expected=1000):
        mk.deposit(ZERO, 1000, value=1001, sender=alice)
    assert mk.balanceOf(alice, ZERO) == 0
    assert mk.balance == 0


def test_deposit_erc20_with_eth_value(env):
    mk = env.mk
    with reverts(mk.WrongEthValue, sent=1, expected=0):
        mk.deposit(env.usdc, USDC_UNIT, value=1, sender=env.alice)


def test_deposit_zero(env):
    mk = env.mk
    with reverts(mk.ZeroAmount):
        mk.deposit(ZERO, 0, sender=env.alice)
    with reverts(mk.ZeroAmount):
        mk.deposit(env.usdc, 0, sender=env.alice)


def test_deposit_unaccepted_token(env):
    mk, usdc = env.mk, env.usdc
    stranger = env.mallory.address  # any address that was never configured
    with reverts(mk.TokenNotAccepted, token=stranger):
        mk.deposit(stranger, 1, sender=env.alice)
    # a token that stopped being accepted takes no new deposits ...
    mk.deposit(usdc, 2 * USDC_UNIT, sender=env.alice)
    mk.configureToken(usdc, False, USDC_MIN_DEPOSIT, sender=env.deployer)
    with reverts(mk.TokenNotAccepted, token=usdc.address):
        mk.deposit(usdc, 1, sender=env.alice)
    # ... but what is already there can still be withdrawn
    mk.withdraw(usdc, 2 * USDC_UNIT, sender=env.alice)
    assert mk.balanceOf(env.alice, usdc) == 0


# ----------------------------------------------------------------- withdraw


def test_withdraw_zero(env):
    with reverts(env.mk.ZeroAmount):
        env.mk.withdraw(ZERO, 0, sender=env.alice)


def test_withdraw_insufficient(env):
    mk, alice = env.mk, env.alice
    with reverts(mk.InsufficientBalance, available=0, required=1):
        mk.withdraw(ZERO, 1, sender=alice)
    mk.deposit(env.usdc, 100, sender=alice)
    with reverts(mk.InsufficientBalance, available=100, required=101):
        mk.withdraw(env.usdc, 101, sender=alice)
    # another user's balance is not reachable
    with reverts(mk.InsufficientBalance, available=0, required=100):
        mk.withdraw(env.usdc, 100, sender=env.mallory)


def test_withdraw_eth(env):
    mk, alice = env.mk, env.alice
    mk.deposit(ZERO, 10**16, value=10**16, sender=alice)
    before = alice.balance
    tx = mk.withdraw(ZERO, 4 * 10**15, sender=alice)
    assert alice.balance == before + 4 * 10**15 - fees(tx)
    assert mk.balanceOf(alice, ZERO) == 6 * 10**15
    assert mk.balance == 6 * 10**15
    (log,) = tx.decode_logs(mk.Withdrawn)
    assert (log.user, log.token, log.amount) == (alice.address, ZERO, 4 * 10**15)


def test_withdraw_usdc_all(env):
    mk, usdc, alice = env.mk, env.usdc, env.alice
    before = usdc.balanceOf(alice)
    mk.deposit(usdc, 3 * USDC_UNIT, sender=alice)
    mk.withdraw(usdc, 3 * USDC_UNIT, sender=alice)
    assert usdc.balanceOf(alice) == before
    assert mk.balanceOf(alice, usdc) == 0
    assert usdc.balanceOf(mk) == 0


def test_withdraw_eth_to_reverting_receiver_loses_nothing(env, project):
    mk = env.mk
    op = env.deployer
    rx = op.deploy(project.RevertingEthReceiver)
    data = mk.deposit.encode_input(ZERO, 10**15)
    rx.execute(mk, 10**15, data, value=10**15, sender=op)
    assert mk.balanceOf(rx, ZERO) == 10**15

    with reverts(mk.EthTransferFailed, to=rx.address, amount=10**15):
        rx.execute(mk, 0, mk.withdraw.encode_input(ZERO, 10**15), sender=op)
    assert mk.balanceOf(rx, ZERO) == 10**15
    assert mk.balance == 10**15

    rx.setRefuse(False, sender=op)
    rx.execute(mk, 0, mk.withdraw.encode_input(ZERO, 10**15), sender=op)
    assert mk.balanceOf(rx, ZERO) == 0
    assert rx.balance == 10**15


# ------------------------------------------------------------------- payout


def test_payout_only_by_ledgers(env):
    mk = env.mk
    mk.deposit(ZERO, 10**15, value=10**15, sender=env.alice)
    for caller in (env.alice, env.deployer, env.host, env.treasurer):
        with reverts(mk.OnlyLedger):
            mk.payout(ZERO, caller, 1, sender=caller)
    assert mk.balance == 10**15


# ------------------------------------------------------------------ admin


def test_configure_token_role_and_effect(env, project):
    mk, d = env.mk, env.deployer
    token = d.deploy(project.MockUSDC)
    with reverts(
        mk.AccessControlUnauthorizedAccount,
        account=env.mallory.address,
        neededRole=mk.TOKEN_ADMIN_ROLE(),
    ):
        mk.configureToken(token, True, 5, sender=env.mallory)

    tx = mk.configureToken(token, True, 5, sender=d)
    (log,) = tx.decode_logs(mk.TokenConfigured)
    assert (log.token, log.accepted, log.minDeposit, log.index) == (token.address, True, 5, 2)
    assert mk.tokens() == [ZERO, env.usdc.address, token.address]
    cfg = mk.tokenConfig(token)
    assert (cfg.accepted, cfg.index, cfg.minDeposit) == (True, 2, 5)

    # reconfiguring keeps the index and does not grow the list
    mk.configureToken(token, False, 7, sender=d)
    cfg = mk.tokenConfig(token)
    assert (cfg.accepted, cfg.index, cfg.minDeposit) == (False, 2, 7)
    assert len(mk.tokens()) == 3
    # ETH too
    mk.configureToken(ZERO, True, 1, sender=d)
    assert mk.tokenConfig(ZERO).index == 0
    assert mk.tokenConfig(ZERO).minDeposit == 1
    assert len(mk.tokens()) == 3


def test_too_many_tokens(env, chain):
    """A session stores its token in one byte: at most 256 tokens are ever configured.
    The list's length is raised in storage (slot 6: after AccessControl's _roles,
    Pausable's _paused, _sessionCount, _sessions, _accounts and _tokenConfig)
    instead of configuring 254 real tokens."""
    mk, d = env.mk, env.deployer
    slot = "0x6"
    read = chain.provider.web3.eth.get_storage_at
    assert int.from_bytes(read(mk.address, 6), "big") == len(mk.tokens()) == 2
    set_storage = chain.provider.make_request
    set_storage("anvil_setStorageAt", [mk.address, slot, "0x" + (255).to_bytes(32, "big").hex()])
    last = "0x" + "ab" * 20
    mk.configureToken(last, True, 1, sender=d)
    assert mk.tokenConfig(last).index == 255
    with reverts(mk.TooManyTokens):
        mk.configureToken("0x" + "cd" * 20, True, 1, sender=d)
    mk.configureToken(last, False, 1, sender=d)  # known tokens can still be reconfigured


def test_pause_and_unpause_roles(env):
    mk, d, m = env.mk, env.deployer, env.mallory
    role = mk.PAUSER_ROLE()
    with reverts(mk.AccessControlUnauthorizedAccount, account=m.address, neededRole=role):
        mk.pause(sender=m)
    mk.pause(sender=d)
    assert mk.paused()
    with reverts(mk.EnforcedPause):
        mk.pause(sender=d)
    with reverts(mk.AccessControlUnauthorizedAccount, account=m.address, neededRole=role):
        mk.unpause(sender=m)
    mk.unpause(sender=d)
    assert not mk.paused()
    with reverts(mk.ExpectedPause):
        mk.unpause(sender=d)


def test_roles_granted_at_deploy(env):
    mk, d = env.mk, env.deployer
    for role in (mk.DEFAULT_ADMIN_ROLE(), mk.PAUSER_ROLE(), mk.TOKEN_ADMIN_ROLE()):
        assert mk.hasRole(role, d)
        assert not mk.hasRole(role, env.mallory)


# ------------------------------------------------------------------ views


def test_views(env):
    mk = env.mk
    assert mk.tokens() == [ZERO, env.usdc.address]
    eth = mk.tokenConfig(ZERO)
    assert (eth.accepted, eth.index, eth.minDeposit) == (True, 0, ETH_MIN_DEPOSIT)
    usdc = mk.tokenConfig(env.usdc)
    assert (usdc.accepted, usdc.index, usdc.minDeposit) == (True, 1, USDC_MIN_DEPOSIT)
    unknown = mk.tokenConfig(env.mallory)
    assert (unknown.accepted, unknown.index, unknown.minDeposit) == (False, 0, 0)
    assert mk.feeBps() == FEE_BPS
    assert mk.settlementWindow() == SETTLEMENT_WINDOW
    assert mk.sessionCount() == 0
    assert mk.nodeRegistry() == env.nodes.address
    assert mk.modelRegistry() == env.models.address
    assert mk.proofSystem() == env.proofs.address
    assert mk.hostEarnings() == env.earnings.address
    assert mk.treasury() == env.treasury.address
    assert mk.domainSeparator() == env.proofs.domainSeparator(mk)
    assert mk.domainSeparator() == env.domain.separator
    assert mk.balanceOf(env.alice, ZERO) == 0
    assert mk.escrowedOf(env.alice, ZERO) == 0
