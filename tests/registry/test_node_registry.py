"""NodeRegistry: registration, updates, two-step exit, slashing, discovery, reputation.

Every test starts from the shared deployment: TinyVicuna approved, no host
registered. ``register_host`` funds a host with exactly its stake and registers
it serving TinyVicuna at USDC 200 / ETH 1 gwei per token.
"""

import pytest
from eth_utils import keccak

pytestmark = pytest.mark.usefixtures("deployment")

# Local copies: `from conftest import` is ambiguous once other folders have a conftest.py.
# test_constructor_state checks them against the deployed registry.
FAB = 10**18
MIN_STAKE = 1_000 * FAB
UNBONDING_PERIOD = 7 * 24 * 3600
MAX_SLASH_BPS = 5000
HALF_STAKE = MIN_STAKE * MAX_SLASH_BPS // 10_000
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
ETH = ZERO_ADDRESS
# Added and approved by the ``tiny_vicuna`` fixture (index 0).
TINY_VICUNA_ID = keccak(text="CohereForAI/TinyVicuna-1B-32k-GGUF/tiny-vicuna-1b.q4_k_m.gguf")

# What the ``registered`` host publishes.
API_URL = "wss://host.example:8443"
HOST_METADATA = '{"hardware":"1x H100","location":"eu","maxConcurrent":4}'
USDC_MIN_PRICE = 200
ETH_MIN_PRICE = 10**9

# NodeRegistry.Status
NONE, ACTIVE, UNBONDING = 0, 1, 2
MAX_MODELS = 32
MAX_URL = 512
MAX_METADATA = 4096
UINT128_MAX = 2**128 - 1


@pytest.fixture
def registered(register_host, host, usdc, tiny_vicuna):
    """``host`` registered with MIN_STAKE serving TinyVicuna; returns the receipt."""
    return register_host(
        host,
        stake=MIN_STAKE,
        models=[tiny_vicuna],
        prices={usdc.address: USDC_MIN_PRICE, ETH: ETH_MIN_PRICE},
        api_url=API_URL,
        metadata=HOST_METADATA,
    )


@pytest.fixture
def other_model(add_model):
    """A second approved model."""
    return add_model("TheBloke/Llama-2-7B-GGUF", "llama-2-7b.Q4_K_M.gguf")


def raw_register(
    node_registry,
    host,
    *,
    stake=MIN_STAKE,
    url=API_URL,
    metadata="{}",
    models=(TINY_VICUNA_ID,),
    tokens=(),
    prices=(),
):
    """Call register directly (no funding): validation runs before the FAB transfer."""
    return node_registry.register(
        stake, url, metadata, list(models), list(tokens), list(prices), sender=host
    )


def unregister_and_get_end(node_registry, host):
    receipt = node_registry.unregister(sender=host)
    return node_registry.HostUnregistered.from_receipt(receipt)[0].unbondingEndsAt


# --------------------------------------------------------------- deployment


def test_constructor_state(node_registry, fab, model_registry):
    assert node_registry.fabToken() == fab.address
    assert node_registry.modelRegistry() == model_registry.address
    assert node_registry.minStake() == MIN_STAKE
    assert node_registry.unbondingPeriod() == UNBONDING_PERIOD
    assert node_registry.maxSlashBps() == MAX_SLASH_BPS
    assert node_registry.totalSlashed() == 0
    assert node_registry.activeHosts() == []


@pytest.mark.parametrize("zero_arg", [0, 1, 2])
def test_constructor_rejects_zero_addresses(project, admin, fab, model_registry, zero_arg, reverts):
    args = [admin, fab, model_registry, MIN_STAKE, UNBONDING_PERIOD, MAX_SLASH_BPS]
    args[zero_arg] = ZERO_ADDRESS
    with reverts(project.NodeRegistry.ZeroAddress):
        project.NodeRegistry.deploy(*args, sender=admin)


def test_constructor_rejects_zero_min_stake(project, admin, fab, model_registry, reverts):
    with reverts(project.NodeRegistry.ZeroAmount):
        project.NodeRegistry.deploy(
            admin, fab, model_registry, 0, UNBONDING_PERIOD, MAX_SLASH_BPS, sender=admin
        )


def test_constructor_rejects_zero_unbonding_period(project, admin, fab, model_registry, reverts):
    # Audit finding 1: with no unbonding a host leaves the moment it misbehaves.
    with reverts(project.NodeRegistry.InvalidUnbondingPeriod, unbondingPeriod=0):
        project.NodeRegistry.deploy(
            admin, fab, model_registry, MIN_STAKE, 0, MAX_SLASH_BPS, sender=admin
        )
    assert (
        project.NodeRegistry.deploy(
            admin, fab, model_registry, MIN_STAKE, 1, MAX_SLASH_BPS, sender=admin
        ).unbondingPeriod()
        == 1
    )


@pytest.mark.parametrize("bps", [0, 10_001, 65_535])
def test_constructor_rejects_bad_slash_cap(project, admin, fab, model_registry, bps, reverts):
    with reverts(project.NodeRegistry.InvalidSlashCap, maxSlashBps=bps):
        project.NodeRegistry.deploy(
            admin, fab, model_registry, MIN_STAKE, UNBONDING_PERIOD, bps, sender=admin
        )


@pytest.mark.parametrize("bps", [1, 10_000])
def test_constructor_accepts_slash_cap_bounds(project, admin, fab, model_registry, bps):
    registry = project.NodeRegistry.deploy(
        admin, fab, model_registry, MIN_STAKE, UNBONDING_PERIOD, bps, sender=admin
    )
    assert registry.maxSlashBps() == bps


# ------------------------------------------------------------- registration


def test_register_success(node_registry, fab, usdc, host, registered, chain):
    receipt = registered
    assert receipt.events.filter(node_registry.HostRegistered) == [
        node_registry.HostRegistered(
            host=host,
            stake=MIN_STAKE,
            apiUrl=API_URL,
            metadata=HOST_METADATA,
            models=[TINY_VICUNA_ID],
        )
    ]
    assert receipt.events.filter(node_registry.MinPriceSet) == [
        node_registry.MinPriceSet(host=host, token=usdc, minPrice=USDC_MIN_PRICE),
        node_registry.MinPriceSet(host=host, token=ETH, minPrice=ETH_MIN_PRICE),
    ]
    # The stake moved from the host into the registry.
    assert receipt.events.filter(fab.Transfer) == [fab.Transfer(host, node_registry, MIN_STAKE)]
    assert fab.balanceOf(host) == 0
    assert fab.balanceOf(node_registry) == MIN_STAKE

    record = node_registry.getHost(host)
    assert record.stake == MIN_STAKE
    assert record.registeredAt == chain.blocks[receipt.block_number].timestamp
    assert record.unbondingEndsAt == 0
    assert record.status == ACTIVE
    assert record.apiUrl == API_URL
    assert record.metadata == HOST_METADATA
    assert node_registry.isActive(host)
    assert node_registry.activeHosts() == [host]
    assert node_registry.hostModels(host) == [TINY_VICUNA_ID]
    assert node_registry.hostsForModel(TINY_VICUNA_ID) == [host]
    assert node_registry.hostServesModel(host, TINY_VICUNA_ID)
    assert node_registry.minPriceOf(host, usdc) == USDC_MIN_PRICE
    assert node_registry.minPriceOf(host, ETH) == ETH_MIN_PRICE


def test_register_above_min_stake_and_boundaries(node_registry, register_host, host, add_model):
    # 32 models, the longest URL and metadata are all accepted; no tokens is fine too.
    models = [add_model(f"org/m{i}", "f.gguf") for i in range(MAX_MODELS)]
    register_host(
        host,
        stake=MIN_STAKE + 1,
        models=models,
        prices={},
        api_url="u" * MAX_URL,
        metadata="m" * MAX_METADATA,
    )
    record = node_registry.getHost(host)
    assert record.stake == MIN_STAKE + 1
    assert len(record.apiUrl) == MAX_URL
    assert len(node_registry.hostModels(host)) == MAX_MODELS


def test_register_empty_metadata_allowed(node_registry, register_host, host):
    register_host(host, metadata="")
    assert node_registry.getHost(host).metadata == ""


def test_register_several_hosts(node_registry, register_host, hosts, other_model):
    register_host(hosts[0])
    register_host(hosts[1], models=[TINY_VICUNA_ID, other_model])
    register_host(hosts[2], models=[other_model])
    assert set(node_registry.activeHosts()) == {h.address for h in hosts}
    assert set(node_registry.hostsForModel(TINY_VICUNA_ID)) == {hosts[0].address, hosts[1].address}
    assert set(node_registry.hostsForModel(other_model)) == {hosts[1].address, hosts[2].address}


def test_register_below_min_stake_reverts(node_registry, host, reverts):
    with reverts(node_registry.StakeBelowMinimum, stake=MIN_STAKE - 1, minStake=MIN_STAKE):
        raw_register(node_registry, host, stake=MIN_STAKE - 1)
    with reverts(node_registry.StakeBelowMinimum, stake=0, minStake=MIN_STAKE):
        raw_register(node_registry, host, stake=0)


def test_register_stake_too_large_reverts(node_registry, host, reverts):
    with reverts(node_registry.StakeTooLarge):
        raw_register(node_registry, host, stake=UINT128_MAX + 1)


def test_register_without_allowance_reverts(node_registry, fab, host, fund_fab, reverts):
    # Funded but not approved: the FAB transfer fails and nothing is recorded.
    fund_fab(host, MIN_STAKE)
    with reverts(fab.ERC20InsufficientAllowance):
        raw_register(node_registry, host)
    assert node_registry.getHost(host).status == NONE


def test_register_without_balance_reverts(node_registry, fab, host, reverts):
    fab.approve(node_registry, MIN_STAKE, sender=host)
    with reverts(fab.ERC20InsufficientBalance):
        raw_register(node_registry, host)


def test_register_url_checks(node_registry, host, reverts):
    with reverts(node_registry.EmptyApiUrl):
        raw_register(node_registry, host, url="")
    with reverts(node_registry.ApiUrlTooLong, length=MAX_URL + 1):
        raw_register(node_registry, host, url="u" * (MAX_URL + 1))


def test_register_metadata_too_long_reverts(node_registry, host, reverts):
    with reverts(node_registry.MetadataTooLong, length=MAX_METADATA + 1):
        raw_register(node_registry, host, metadata="m" * (MAX_METADATA + 1))


def test_register_model_list_checks(
    node_registry, host, model_registry, curator, add_model, reverts
):
    with reverts(node_registry.NoModels):
        raw_register(node_registry, host, models=[])
    with reverts(node_registry.DuplicateModel, modelId=TINY_VICUNA_ID):
        raw_register(node_registry, host, models=[TINY_VICUNA_ID, TINY_VICUNA_ID])
    unknown = b"\x42" * 32
    with reverts(node_registry.ModelNotApproved, modelId=unknown):
        raw_register(node_registry, host, models=[TINY_VICUNA_ID, unknown])
    pending = add_model("org/pending", "p.gguf", approve=False)
    with reverts(node_registry.ModelNotApproved, modelId=pending):
        raw_register(node_registry, host, models=[pending])
    model_registry.deactivateModel(TINY_VICUNA_ID, sender=curator)
    with reverts(node_registry.ModelNotApproved, modelId=TINY_VICUNA_ID):
        raw_register(node_registry, host)


def test_register_too_many_models_reverts(node_registry, host, reverts):
    # The count is checked before any id, so 33 copies of one id hit TooManyModels.
    with reverts(node_registry.TooManyModels, count=MAX_MODELS + 1):
        raw_register(node_registry, host, models=[TINY_VICUNA_ID] * (MAX_MODELS + 1))


def test_register_price_length_mismatch_reverts(node_registry, host, usdc, reverts):
    with reverts(node_registry.LengthMismatch):
        raw_register(node_registry, host, tokens=[usdc.address], prices=[])
    with reverts(node_registry.LengthMismatch):
        raw_register(node_registry, host, tokens=[], prices=[1])


def test_register_twice_reverts(node_registry, host, registered, reverts):
    with reverts(node_registry.AlreadyRegistered, host=host):
        raw_register(node_registry, host)
    # Still registered while unbonding.
    node_registry.unregister(sender=host)
    with reverts(node_registry.AlreadyRegistered, host=host):
        raw_register(node_registry, host)


# ------------------------------------------------------------------ updates


def test_update_models_replaces_list_both_ways(node_registry, host, registered, other_model):
    receipt = node_registry.updateModels([other_model], sender=host)
    assert receipt.events == [node_registry.ModelsUpdated(host=host, models=[other_model])]
    assert node_registry.hostModels(host) == [other_model]
    # Removed from the old model's hosts, added to the new one's.
    assert node_registry.hostsForModel(TINY_VICUNA_ID) == []
    assert node_registry.hostsForModel(other_model) == [host]
    assert not node_registry.hostServesModel(host, TINY_VICUNA_ID)
    assert node_registry.hostServesModel(host, other_model)

    node_registry.updateModels([TINY_VICUNA_ID, other_model], sender=host)
    assert node_registry.hostModels(host) == [TINY_VICUNA_ID, other_model]
    assert node_registry.hostsForModel(TINY_VICUNA_ID) == [host]
    assert node_registry.hostsForModel(other_model) == [host]


def test_update_models_same_list_again(node_registry, host, registered):
    # Replacing with the same ids must not trip the duplicate check.
    node_registry.updateModels([TINY_VICUNA_ID], sender=host)
    assert node_registry.hostModels(host) == [TINY_VICUNA_ID]
    assert node_registry.hostsForModel(TINY_VICUNA_ID) == [host]


def test_update_models_validation(node_registry, host, registered, other_model, reverts):
    with reverts(node_registry.NoModels):
        node_registry.updateModels([], sender=host)
    with reverts(node_registry.DuplicateModel, modelId=other_model):
        node_registry.updateModels([other_model, TINY_VICUNA_ID, other_model], sender=host)
    with reverts(node_registry.TooManyModels, count=MAX_MODELS + 1):
        node_registry.updateModels([other_model] * (MAX_MODELS + 1), sender=host)
    with reverts(node_registry.ModelNotApproved, modelId=b"\x01" * 32):
        node_registry.updateModels([b"\x01" * 32], sender=host)
    # A failed update leaves the old list intact.
    assert node_registry.hostModels(host) == [TINY_VICUNA_ID]


def test_update_api_url(node_registry, host, registered, reverts):
    receipt = node_registry.updateApiUrl("https://new.example", sender=host)
    assert receipt.events == [node_registry.ApiUrlUpdated(host=host, apiUrl="https://new.example")]
    assert node_registry.getHost(host).apiUrl == "https://new.example"
    with reverts(node_registry.EmptyApiUrl):
        node_registry.updateApiUrl("", sender=host)
    with reverts(node_registry.ApiUrlTooLong, length=MAX_URL + 1):
        node_registry.updateApiUrl("u" * (MAX_URL + 1), sender=host)


def test_update_metadata(node_registry, host, registered, reverts):
    receipt = node_registry.updateMetadata('{"gpu":"H200"}', sender=host)
    assert receipt.events == [node_registry.MetadataUpdated(host=host, metadata='{"gpu":"H200"}')]
    assert node_registry.getHost(host).metadata == '{"gpu":"H200"}'
    with reverts(node_registry.MetadataTooLong, length=MAX_METADATA + 1):
        node_registry.updateMetadata("m" * (MAX_METADATA + 1), sender=host)


def test_set_min_prices(node_registry, host, registered, usdc, reverts):
    receipt = node_registry.setMinPrices([usdc.address, ETH], [300, 0], sender=host)
    assert receipt.events == [
        node_registry.MinPriceSet(host=host, token=usdc, minPrice=300),
        node_registry.MinPriceSet(host=host, token=ETH, minPrice=0),
    ]
    assert node_registry.minPriceOf(host, usdc) == 300
    # Price 0 means the token is no longer accepted.
    assert node_registry.minPriceOf(host, ETH) == 0
    with reverts(node_registry.LengthMismatch):
        node_registry.setMinPrices([usdc.address], [1, 2], sender=host)


def test_updates_need_active_registration(node_registry, host, outsider, registered, usdc, reverts):
    def calls(account):
        return [
            lambda: node_registry.updateModels([TINY_VICUNA_ID], sender=account),
            lambda: node_registry.updateApiUrl("x", sender=account),
            lambda: node_registry.updateMetadata("x", sender=account),
            lambda: node_registry.setMinPrices([usdc.address], [1], sender=account),
            lambda: node_registry.addStake(FAB, sender=account),
            lambda: node_registry.unregister(sender=account),
        ]

    # Never registered.
    for call in calls(outsider):
        with reverts(node_registry.NotActive, host=outsider):
            call()
    # Unbonding hosts cannot change anything either (unregister twice included).
    node_registry.unregister(sender=host)
    for call in calls(host):
        with reverts(node_registry.NotActive, host=host):
            call()


# -------------------------------------------------------------------- stake


def test_add_stake(node_registry, fab, host, registered, fund_fab):
    fund_fab(host, 5 * FAB)
    fab.approve(node_registry, 5 * FAB, sender=host)
    receipt = node_registry.addStake(5 * FAB, sender=host)
    assert receipt.events.filter(node_registry.StakeAdded) == [
        node_registry.StakeAdded(host=host, amount=5 * FAB, stake=MIN_STAKE + 5 * FAB)
    ]
    assert node_registry.getHost(host).stake == MIN_STAKE + 5 * FAB
    assert fab.balanceOf(node_registry) == MIN_STAKE + 5 * FAB
    assert fab.balanceOf(host) == 0


def test_add_stake_zero_and_too_large(node_registry, host, registered, reverts):
    with reverts(node_registry.ZeroAmount):
        node_registry.addStake(0, sender=host)
    with reverts(node_registry.StakeTooLarge):
        node_registry.addStake(UINT128_MAX - MIN_STAKE + 1, sender=host)


# --------------------------------------------------------------- exit flow


def test_unregister_stops_new_sessions_at_once(node_registry, host, registered, chain, usdc):
    receipt = node_registry.unregister(sender=host)
    ends_at = chain.blocks[receipt.block_number].timestamp + UNBONDING_PERIOD
    assert receipt.events == [node_registry.HostUnregistered(host=host, unbondingEndsAt=ends_at)]
    record = node_registry.getHost(host)
    assert record.status == UNBONDING
    assert record.unbondingEndsAt == ends_at
    assert record.stake == MIN_STAKE
    assert not node_registry.isActive(host)
    assert node_registry.activeHosts() == []
    assert node_registry.hostModels(host) == []
    assert node_registry.hostsForModel(TINY_VICUNA_ID) == []
    assert not node_registry.hostServesModel(host, TINY_VICUNA_ID)
    active, serves, approved, _, _ = node_registry.sessionTerms(host, TINY_VICUNA_ID, usdc)
    assert (active, serves, approved) == (False, False, True)


def test_withdraw_before_and_after_unbonding(node_registry, fab, host, registered, chain, reverts):
    ends_at = unregister_and_get_end(node_registry, host)

    chain.pending_timestamp = ends_at - 1
    with reverts(node_registry.UnbondingNotOver, endsAt=ends_at):
        node_registry.withdrawStake(sender=host)

    # Exactly at the end of the period the stake comes back.
    chain.pending_timestamp = ends_at
    receipt = node_registry.withdrawStake(sender=host)
    assert receipt.events.filter(node_registry.StakeWithdrawn) == [
        node_registry.StakeWithdrawn(host=host, amount=MIN_STAKE)
    ]
    assert receipt.events.filter(fab.Transfer) == [fab.Transfer(node_registry, host, MIN_STAKE)]
    assert fab.balanceOf(host) == MIN_STAKE
    assert fab.balanceOf(node_registry) == 0
    record = node_registry.getHost(host)
    assert (record.status, record.stake, record.apiUrl) == (NONE, 0, "")


def test_withdraw_returns_the_whole_stake_above_the_minimum(
    node_registry, fab, hosts, register_host, fund_fab, chain
):
    # Every other exit test leaves with exactly minStake (or a slashed stake): returning
    # only the minimum would go unnoticed there.
    host = hosts[1]
    register_host(host, stake=2 * MIN_STAKE + 7)
    fund_fab(host, 3 * FAB)
    fab.approve(node_registry, 3 * FAB, sender=host)
    node_registry.addStake(3 * FAB, sender=host)
    staked = 2 * MIN_STAKE + 7 + 3 * FAB
    assert fab.balanceOf(host) == 0
    chain.pending_timestamp = unregister_and_get_end(node_registry, host)
    receipt = node_registry.withdrawStake(sender=host)
    assert receipt.events.filter(node_registry.StakeWithdrawn) == [
        node_registry.StakeWithdrawn(host=host, amount=staked)
    ]
    assert fab.balanceOf(host) == staked
    assert fab.balanceOf(node_registry) == 0


def test_withdraw_needs_unbonding(node_registry, host, outsider, registered, chain, reverts):
    with reverts(node_registry.NotUnbonding, host=outsider):
        node_registry.withdrawStake(sender=outsider)
    with reverts(node_registry.NotUnbonding, host=host):
        node_registry.withdrawStake(sender=host)
    # And only once.
    ends_at = unregister_and_get_end(node_registry, host)
    chain.pending_timestamp = ends_at + 1
    node_registry.withdrawStake(sender=host)
    with reverts(node_registry.NotUnbonding, host=host):
        node_registry.withdrawStake(sender=host)


def test_reregister_after_exit(
    node_registry, fab, host, registered, chain, register_host, other_model
):
    ends_at = unregister_and_get_end(node_registry, host)
    chain.pending_timestamp = ends_at
    node_registry.withdrawStake(sender=host)

    register_host(host, stake=2 * MIN_STAKE, models=[other_model], api_url="wss://again")
    record = node_registry.getHost(host)
    assert (record.status, record.stake, record.unbondingEndsAt) == (ACTIVE, 2 * MIN_STAKE, 0)
    assert record.apiUrl == "wss://again"
    assert node_registry.hostModels(host) == [other_model]
    assert node_registry.hostsForModel(TINY_VICUNA_ID) == []
    assert node_registry.hostsForModel(other_model) == [host]
    assert node_registry.activeHosts() == [host]
    # The first stake came back, the second is in: 1000 + 2000 funded, 1000 left.
    assert fab.balanceOf(host) == MIN_STAKE
    assert fab.balanceOf(node_registry) == 2 * MIN_STAKE


def test_exit_clears_prices_so_reregistering_does_not_revive_them(
    node_registry, host, registered, chain, register_host, usdc
):
    assert set(node_registry.pricedTokens(host)) == {usdc.address, ETH}
    ends_at = unregister_and_get_end(node_registry, host)
    chain.pending_timestamp = ends_at
    node_registry.withdrawStake(sender=host)
    assert node_registry.pricedTokens(host) == []
    assert node_registry.minPriceOf(host, ETH) == 0

    # Back with USDC only: ETH must not be accepted at the old price.
    register_host(host, prices={usdc.address: 300})
    assert node_registry.pricedTokens(host) == [usdc.address]
    assert node_registry.minPriceOf(host, ETH) == 0
    assert node_registry.minPriceOf(host, usdc) == 300


def test_price_zero_unlists_token_and_priced_token_cap(
    node_registry, host, registered, usdc, reverts
):
    node_registry.setMinPrices([ETH], [0], sender=host)
    assert node_registry.pricedTokens(host) == [usdc.address]
    # Re-pricing a listed token does not list it twice.
    node_registry.setMinPrices([usdc.address], [500], sender=host)
    assert node_registry.pricedTokens(host) == [usdc.address]
    cap = node_registry.MAX_PRICED_TOKENS()
    fillers = [f"0x{i:040x}" for i in range(1, cap)]  # cap - 1 more: exactly full
    node_registry.setMinPrices(fillers, [1] * len(fillers), sender=host)
    assert len(node_registry.pricedTokens(host)) == cap
    with reverts(node_registry.TooManyPricedTokens):
        node_registry.setMinPrices([f"0x{cap + 5:040x}"], [1], sender=host)


# ----------------------------------------------------------------- slashing


def test_slash_active_host_burns_the_fab(
    node_registry, fab, host, registered, slasher, slasher_fab
):
    receipt = node_registry.slash(host, 100 * FAB, "bad proof", sender=slasher)
    assert receipt.events.filter(node_registry.HostSlashed) == [
        node_registry.HostSlashed(
            host=host, amount=100 * FAB, remainingStake=MIN_STAKE - 100 * FAB, reason="bad proof"
        )
    ]
    # Audit finding 5: the proceeds go to nobody. The FAB stays locked in the registry
    # (no function moves it), counted in totalSlashed.
    assert receipt.events.filter(fab.Transfer) == []
    assert fab.balanceOf(slasher) == slasher_fab
    assert fab.balanceOf(node_registry) == MIN_STAKE
    assert node_registry.totalSlashed() == 100 * FAB
    assert node_registry.getHost(host).stake == MIN_STAKE - 100 * FAB
    assert node_registry.reputationOf(host).slashes == 1


@pytest.fixture
def slasher_fab(fab, slasher):
    return fab.balanceOf(slasher)


def test_slash_below_min_stake_then_top_up(
    node_registry, fab, host, registered, slasher, fund_fab, usdc
):
    node_registry.slash(host, 1, "late", sender=slasher)
    # Still registered (and listed), but no longer active for new sessions.
    assert not node_registry.isActive(host)
    assert node_registry.activeHosts() == [host]
    assert node_registry.hostsForModel(TINY_VICUNA_ID) == []
    assert not node_registry.hostServesModel(host, TINY_VICUNA_ID)
    assert node_registry.sessionTerms(host, TINY_VICUNA_ID, usdc)[0] is False

    fund_fab(host, 1)
    fab.approve(node_registry, 1, sender=host)
    node_registry.addStake(1, sender=host)
    assert node_registry.isActive(host)
    assert node_registry.hostsForModel(TINY_VICUNA_ID) == [host]
    assert node_registry.hostServesModel(host, TINY_VICUNA_ID)


def test_slash_above_cap_reverts(node_registry, host, registered, slasher, reverts):
    # Audit finding 5: one slash takes at most maxSlashBps of the current stake.
    for amount in (HALF_STAKE + 1, MIN_STAKE, MIN_STAKE + 1):
        with reverts(node_registry.SlashAboveCap, amount=amount, cap=HALF_STAKE):
            node_registry.slash(host, amount, "too much", sender=slasher)
    assert node_registry.getHost(host).stake == MIN_STAKE
    # Exactly the cap is allowed; the next cap is a fraction of what is left.
    node_registry.slash(host, HALF_STAKE, "cap", sender=slasher)
    left = MIN_STAKE - HALF_STAKE
    with reverts(node_registry.SlashAboveCap, amount=HALF_STAKE, cap=left // 2):
        node_registry.slash(host, HALF_STAKE, "again", sender=slasher)
    assert node_registry.getHost(host).stake == left
    assert node_registry.totalSlashed() == HALF_STAKE


def test_slash_zero_and_unknown_revert(node_registry, host, outsider, registered, slasher, reverts):
    with reverts(node_registry.ZeroAmount):
        node_registry.slash(host, 0, "", sender=slasher)
    with reverts(node_registry.NotRegistered, host=outsider):
        node_registry.slash(outsider, 1, "", sender=slasher)


def test_slash_during_unbonding(node_registry, fab, host, registered, slasher, chain):
    # Unregistering does not escape a slash: the stake is still there to take.
    ends_at = unregister_and_get_end(node_registry, host)
    node_registry.slash(host, 300 * FAB, "fraud", sender=slasher)
    chain.pending_timestamp = ends_at
    receipt = node_registry.withdrawStake(sender=host)
    assert receipt.events.filter(node_registry.StakeWithdrawn) == [
        node_registry.StakeWithdrawn(host=host, amount=MIN_STAKE - 300 * FAB)
    ]
    assert fab.balanceOf(host) == MIN_STAKE - 300 * FAB
    # The slashed part stays behind, burned.
    assert fab.balanceOf(node_registry) == node_registry.totalSlashed() == 300 * FAB


def test_slash_whole_stake_then_withdraw_nothing(
    project, admin, fab, model_registry, host, slasher, chain, reverts, fund_fab, tiny_vicuna
):
    # A registry whose cap is 100% (the most a deployment may allow).
    registry = project.NodeRegistry.deploy(
        admin, fab, model_registry, MIN_STAKE, UNBONDING_PERIOD, 10_000, sender=admin
    )
    registry.grantRole(registry.SLASHER_ROLE(), slasher, sender=admin)
    fund_fab(host, MIN_STAKE)
    fab.approve(registry, MIN_STAKE, sender=host)
    registry.register(MIN_STAKE, API_URL, "{}", [TINY_VICUNA_ID], [], [], sender=host)
    ends_at = unregister_and_get_end(registry, host)
    receipt = registry.slash(host, MIN_STAKE, "everything", sender=slasher)
    assert registry.HostSlashed.from_receipt(receipt)[0].remainingStake == 0
    chain.pending_timestamp = ends_at
    receipt = registry.withdrawStake(sender=host)
    # Record cleared, no token transfer for a zero amount.
    assert receipt.events == [registry.StakeWithdrawn(host=host, amount=0)]
    assert registry.getHost(host).status == NONE
    assert fab.balanceOf(registry) == registry.totalSlashed() == MIN_STAKE
    # After the exit there is nothing left to slash.
    with reverts(registry.NotRegistered, host=host):
        registry.slash(host, 1, "", sender=slasher)


def test_slash_needs_slasher_role(node_registry, host, registered, outsider, admin, reverts):
    role = node_registry.SLASHER_ROLE()
    for caller in (outsider, admin, host):
        with reverts(
            node_registry.AccessControlUnauthorizedAccount, account=caller, neededRole=role
        ):
            node_registry.slash(host, 1, "", sender=caller)


# ---------------------------------------------------------- model lifecycle


def test_deactivated_model_is_not_served(
    node_registry, model_registry, curator, host, registered, usdc
):
    model_registry.deactivateModel(TINY_VICUNA_ID, sender=curator)
    assert not node_registry.hostServesModel(host, TINY_VICUNA_ID)
    assert node_registry.hostsForModel(TINY_VICUNA_ID) == []
    # The host still lists it; sessionTerms reports the model as not approved.
    assert node_registry.hostModels(host) == [TINY_VICUNA_ID]
    assert node_registry.sessionTerms(host, TINY_VICUNA_ID, usdc) == (
        True,
        True,
        False,
        USDC_MIN_PRICE,
        0,
    )
    # Re-approval brings it back without the host doing anything.
    model_registry.approveModel(TINY_VICUNA_ID, sender=curator)
    assert node_registry.hostServesModel(host, TINY_VICUNA_ID)
    assert node_registry.hostsForModel(TINY_VICUNA_ID) == [host]


# -------------------------------------------------------------------- views


def test_session_terms(node_registry, host, registered, usdc, other_model, outsider):
    assert node_registry.sessionTerms(host, TINY_VICUNA_ID, usdc) == (
        True,
        True,
        True,
        USDC_MIN_PRICE,
        0,
    )
    assert node_registry.sessionTerms(host, TINY_VICUNA_ID, ETH) == (
        True,
        True,
        True,
        ETH_MIN_PRICE,
        0,
    )
    # Approved model (index 1) the host does not serve; a token it never priced.
    assert node_registry.sessionTerms(host, other_model, outsider) == (True, False, True, 0, 1)
    # Unknown host, unknown model.
    assert node_registry.sessionTerms(outsider, b"\x42" * 32, usdc) == (False, False, False, 0, 0)


def test_views_of_unknown_host(node_registry, outsider):
    record = node_registry.getHost(outsider)
    assert (record.status, record.stake, record.apiUrl) == (NONE, 0, "")
    assert not node_registry.isActive(outsider)
    assert node_registry.hostModels(outsider) == []
    assert node_registry.minPriceOf(outsider, ETH) == 0
    rep = node_registry.reputationOf(outsider)
    assert (rep.sessionsSettled, rep.tokensServed, rep.slashes) == (0, 0, 0)
    assert node_registry.hostsForModel(b"\x42" * 32) == []


# --------------------------------------------------------------- reputation


def test_record_settlement(node_registry, host, registered, marketplace_account):
    receipt = node_registry.recordSettlement(host, 1, 5_000, sender=marketplace_account)
    assert receipt.events == [node_registry.SettlementRecorded(host=host, sessions=1, tokens=5_000)]
    node_registry.recordSettlement(host, 2, 1_000, sender=marketplace_account)
    rep = node_registry.reputationOf(host)
    assert (rep.sessionsSettled, rep.tokensServed, rep.slashes) == (3, 6_000, 0)


def test_record_settlement_needs_marketplace_role(
    node_registry, host, registered, admin, slasher, reverts
):
    role = node_registry.MARKETPLACE_ROLE()
    for caller in (host, admin, slasher):
        with reverts(
            node_registry.AccessControlUnauthorizedAccount, account=caller, neededRole=role
        ):
            node_registry.recordSettlement(host, 1, 1, sender=caller)
    assert node_registry.reputationOf(host).sessionsSettled == 0


def test_reputation_survives_reregistration(
    node_registry, host, registered, slasher, marketplace_account, chain, register_host
):
    # Reputation is keyed by address and kept across an exit: a host cannot reset it.
    node_registry.recordSettlement(host, 1, 10, sender=marketplace_account)
    node_registry.slash(host, 1, "", sender=slasher)
    chain.pending_timestamp = unregister_and_get_end(node_registry, host)
    node_registry.withdrawStake(sender=host)
    register_host(host)
    rep = node_registry.reputationOf(host)
    assert (rep.sessionsSettled, rep.tokensServed, rep.slashes) == (1, 10, 1)
