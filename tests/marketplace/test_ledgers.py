"""HostEarnings and Treasury ledgers, and the deploy-time checks of all three contracts."""

from __future__ import annotations

from support.marketplace import (
    ETH_DEPOSIT,
    ETH_MIN_DEPOSIT,
    ETH_PRICE,
    FEE_BPS,
    MODEL_ID,
    SETTLEMENT_WINDOW,
    ZERO,
    deploy_marketplace,
    domain_of,
    fees,
    open_eth,
    open_usdc,
    sign,
)
from support.reverts import deploy_reverts, reverts

DAY = 24 * 3600


def _earn(env, session_key, *, used=1000, eth_used=0):
    """Settle one USDC (and optionally one ETH) session for env.host."""
    sid = open_usdc(env, key=session_key)
    env.mk.settleWithReceipt(*sign(env, session_key, sid, used), sender=env.host)
    if eth_used:
        e = open_eth(env, key=session_key)
        env.mk.settleWithReceipt(*sign(env, session_key, e, eth_used), sender=env.host)


# ---------------------------------------------------------------- HostEarnings


def test_host_earnings_credit_only_by_marketplace(env):
    e = env.earnings
    for caller in (env.host, env.deployer, env.alice):
        with reverts(e.OnlyMarketplace):
            e.credit(caller, env.usdc, 1, sender=caller)
    assert e.marketplace() == env.mk.address


def test_host_earnings_nothing_to_withdraw(env, session_key):
    e = env.earnings
    with reverts(e.NothingToWithdraw, token=env.usdc.address):
        e.withdraw(env.usdc, sender=env.host)
    with reverts(e.NothingToWithdraw, token=ZERO):
        e.withdraw(ZERO, sender=env.host)
    _earn(env, session_key)
    e.withdraw(env.usdc, sender=env.host)
    with reverts(e.NothingToWithdraw, token=env.usdc.address):
        e.withdraw(env.usdc, sender=env.host)
    # another host's earnings are not reachable
    with reverts(e.NothingToWithdraw, token=env.usdc.address):
        e.withdraw(env.usdc, sender=env.host2)


def test_host_earnings_withdraw_usdc(env, session_key):
    e, usdc, host = env.earnings, env.usdc, env.host
    _earn(env, session_key, used=1000)
    owed = 1000 * 200 * 9 // 10
    assert e.balanceOf(host, usdc) == e.totalEarned(host, usdc) == owed
    wallet, held = usdc.balanceOf(host), usdc.balanceOf(env.mk)
    tx = e.withdraw(usdc, sender=host)
    assert usdc.balanceOf(host) == wallet + owed
    assert usdc.balanceOf(env.mk) == held - owed
    assert e.balanceOf(host, usdc) == 0
    assert e.totalEarned(host, usdc) == owed  # history stays
    (log,) = tx.decode_logs(e.EarningsWithdrawn)
    assert (log.host, log.token, log.amount) == (host.address, usdc.address, owed)


def test_host_earnings_withdraw_eth(env, session_key):
    e, host = env.earnings, env.host
    _earn(env, session_key, used=1, eth_used=5000)
    owed = 5000 * ETH_PRICE * 9 // 10
    before = host.balance
    tx = e.withdraw(ZERO, sender=host)
    assert host.balance == before + owed - fees(tx)
    assert env.mk.balance == ETH_DEPOSIT - owed  # the refund and the fee stay
    assert e.balanceOf(host, ZERO) == 0


def test_host_earnings_withdraw_many(env, session_key):
    e, usdc, host = env.earnings, env.usdc, env.host
    _earn(env, session_key, used=1000, eth_used=5000)
    owed_usdc, owed_eth = 1000 * 200 * 9 // 10, 5000 * ETH_PRICE * 9 // 10
    wallet_usdc, wallet_eth = usdc.balanceOf(host), host.balance
    tokens = [usdc.address, ZERO, env.fab.address, usdc.address]  # nothing owed / repeated
    assert e.withdrawMany.call(tokens, sender=host) == [owed_usdc, owed_eth, 0, 0]
    tx = e.withdrawMany(tokens, sender=host)
    assert usdc.balanceOf(host) == wallet_usdc + owed_usdc
    assert host.balance == wallet_eth + owed_eth - fees(tx)
    assert len(tx.decode_logs(e.EarningsWithdrawn)) == 2
    assert e.balanceOf(host, usdc) == e.balanceOf(host, ZERO) == 0
    # nothing owed anywhere: an empty result, not a revert
    assert e.withdrawMany.call(tokens, sender=host) == [0, 0, 0, 0]


# -------------------------------------------------------------------- Treasury


def test_treasury_credit_only_by_marketplace(env):
    t = env.treasury
    for caller in (env.treasurer, env.deployer):
        with reverts(t.OnlyMarketplace):
            t.credit(env.usdc, 1, sender=caller)
    assert t.marketplace() == env.mk.address


def test_treasury_withdraw_checks(env, session_key):
    t, usdc = env.treasury, env.usdc
    _earn(env, session_key, used=1000)
    fee = 1000 * 200 // 10
    assert t.balanceOf(usdc) == t.totalCollected(usdc) == fee
    role = t.TREASURER_ROLE()
    for caller in (env.mallory, env.deployer, env.host):  # admin is not treasurer
        with reverts(t.AccessControlUnauthorizedAccount, account=caller.address, neededRole=role):
            t.withdraw(usdc, caller, 1, sender=caller)
    with reverts(t.ZeroAddress):
        t.withdraw(usdc, ZERO, 1, sender=env.treasurer)
    # Fees paid into the vault itself would be owned by nobody in its books.
    with reverts(t.InvalidRecipient, to=env.mk.address):
        t.withdraw(usdc, env.mk, 1, sender=env.treasurer)
    with reverts(t.ZeroAmount):
        t.withdraw(usdc, env.treasurer, 0, sender=env.treasurer)
    with reverts(t.InsufficientFees, requested=fee + 1, available=fee):
        t.withdraw(usdc, env.treasurer, fee + 1, sender=env.treasurer)
    with reverts(t.InsufficientFees, requested=1, available=0):
        t.withdraw(ZERO, env.treasurer, 1, sender=env.treasurer)
    assert t.balanceOf(usdc) == fee


def test_treasury_withdraw_to_address(env, session_key):
    t, usdc = env.treasury, env.usdc
    _earn(env, session_key, used=1000, eth_used=100)
    fee, eth_fee = 1000 * 200 // 10, 100 * ETH_PRICE // 10
    to = env.payee  # any address the treasurer names
    wallet = usdc.balanceOf(to)
    tx = t.withdraw(usdc, to, fee - 5, sender=env.treasurer)
    assert usdc.balanceOf(to) == wallet + fee - 5
    assert t.balanceOf(usdc) == 5
    assert t.totalCollected(usdc) == fee
    (log,) = tx.decode_logs(t.FeesWithdrawn)
    assert (log.token, log.to, log.amount, log.by) == (
        usdc.address,
        to.address,
        fee - 5,
        env.treasurer.address,
    )
    eth_before = to.balance
    t.withdraw(ZERO, to, eth_fee, sender=env.treasurer)
    assert to.balance == eth_before + eth_fee
    assert t.balanceOf(ZERO) == 0


def test_treasury_fee_view(env):
    assert env.treasury.feeBps() == FEE_BPS == env.mk.feeBps()
    mk2, _, t2 = deploy_marketplace(env, fee_bps=250)
    assert t2.feeBps() == 250 == mk2.feeBps()


def test_fee_at_cap_and_zero_fee(env, session_key):
    """The fee is whatever was fixed at deploy, up to MAX_FEE_BPS; 0 is allowed."""
    for bps in (2000, 0):
        mk2, e2, t2 = deploy_marketplace(env, fee_bps=bps)
        tx = mk2.createSessionFromWallet(
            env.host,
            MODEL_ID,
            ZERO,
            ETH_DEPOSIT,
            ETH_PRICE,
            3600,
            100,
            session_key.address,
            value=ETH_DEPOSIT,
            sender=env.alice,
        )
        sid = int(tx.decode_logs(mk2.SessionCreated)[0].sessionId)
        receipt = sign(env, session_key, sid, 999, domain=domain_of(mk2))
        mk2.settleWithReceipt(*receipt, sender=env.host)
        payment = 999 * ETH_PRICE
        assert t2.balanceOf(ZERO) == payment * bps // 10_000
        assert e2.balanceOf(env.host, ZERO) == payment - payment * bps // 10_000


# ------------------------------------------------------- constructor checks


def _next_address(env, skip=0):
    d = env.deployer
    return d.get_deployment_address(d.nonce + skip)


def _node_registry(env, unbonding):
    """A NodeRegistry like env.nodes but with its own unbonding period."""
    return env.deployer.deploy(
        env.project.NodeRegistry, env.deployer, env.fab, env.models, 10**18, unbonding, 5000
    )


def _mk_args(env, **kw):
    a = {
        "admin": env.deployer.address,
        "nodes": env.nodes.address,
        "proofs": env.proofs.address,
        "earnings": env.earnings.address,
        "treasury": env.treasury.address,
        "fee": FEE_BPS,
        "window": SETTLEMENT_WINDOW,
        "eth_min": ETH_MIN_DEPOSIT,
    }
    a.update(kw)
    return list(a.values())


def test_marketplace_constructor_checks(env, project):
    d, mk = env.deployer, project.JobMarketplace
    for field in ("admin", "nodes", "proofs", "earnings", "treasury"):
        deploy_reverts(d, mk, _mk_args(env, **{field: ZERO}), mk.ZeroAddress)
    deploy_reverts(d, mk, _mk_args(env, fee=2001), mk.FeeTooHigh, 2001, 2000)
    deploy_reverts(d, mk, _mk_args(env, window=59), mk.InvalidSettlementWindow, 59)
    deploy_reverts(
        d, mk, _mk_args(env, window=7 * DAY + 1), mk.InvalidSettlementWindow, 7 * DAY + 1
    )
    # ledgers bound to another marketplace (the live one)
    deploy_reverts(d, mk, _mk_args(env), mk.LedgerNotBound, env.earnings.address)
    # earnings bound to the new marketplace's address, the treasury not
    earnings = d.deploy(project.HostEarnings, _next_address(env, 1))
    args = _mk_args(env, earnings=earnings.address)
    deploy_reverts(d, mk, args, mk.LedgerNotBound, env.treasury.address)
    # and the other way round
    treasury = d.deploy(project.Treasury, d, _next_address(env, 1))
    args = _mk_args(env, treasury=treasury.address)
    deploy_reverts(d, mk, args, mk.LedgerNotBound, env.earnings.address)


def test_marketplace_constructor_accepts_bounds(env):
    """fee == MAX_FEE_BPS and both window bounds deploy."""
    p, d = env.project, env.deployer
    # The longest window needs an unbonding period that covers it plus one shortest session.
    nodes = _node_registry(env, 7 * DAY + 60)
    for fee, window in ((2000, 60), (0, 7 * DAY)):
        address = _next_address(env, 2)
        e = d.deploy(p.HostEarnings, address)
        t = d.deploy(p.Treasury, d, address)
        mk2 = d.deploy(
            p.JobMarketplace,
            *_mk_args(env, nodes=nodes, earnings=e, treasury=t, fee=fee, window=window),
        )
        assert (mk2.feeBps(), mk2.settlementWindow()) == (fee, window)
        assert mk2.maxDuration() == 7 * DAY + 60 - window
        assert mk2.tokens() == [ZERO]
        assert mk2.tokenConfig(ZERO).minDeposit == ETH_MIN_DEPOSIT


def test_ledger_constructor_checks(env, project):
    d = env.deployer
    he, tr = project.HostEarnings, project.Treasury
    deploy_reverts(d, he, [ZERO], he.ZeroAddress)
    deploy_reverts(d, tr, [ZERO, env.mk.address], tr.ZeroAddress)
    deploy_reverts(d, tr, [d.address, ZERO], tr.ZeroAddress)
