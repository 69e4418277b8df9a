"""The root conftest's fixtures on ``system``: the factories do what they say, and a test
module starts from the bare system whatever suites ran before it in the same
``ape test`` run.

pytest collects a folder's entries in name order, so under ``ape test tests`` this
module runs after every suite folder (host, marketplace, sdk, ...), each of which set
up its actors on ``system``. Those actors are module scoped and ape reverts them after
their module; a suite fixture made session scoped would leave them here and fail
``test_a_module_starts_from_the_bare_system``.
"""

from eth_utils import keccak

from fabstir.chain.system import ETH

USDC = 10**6
REPO, FILE = "fixture-test/Model-GGUF", "model.gguf"


def test_a_module_starts_from_the_bare_system(system, hosts, clients):
    assert system.model_registry.modelCount() == 0
    assert list(system.node_registry.activeHosts()) == []
    assert not any(system.node_registry.isActive(h) for h in hosts)
    assert system.marketplace.sessionCount() == 0
    assert all(system.usdc.balanceOf(c) == 0 for c in clients)


def test_factories_register_fund_and_open(
    system, hosts, clients, add_system_model, register_system_host, fund_client, open_session
):
    host, client = hosts[0], clients[0]
    model_id = add_system_model(REPO, FILE)
    assert model_id == keccak(text=f"{REPO}/{FILE}")
    assert system.model_registry.isApproved(model_id)
    pending = add_system_model(REPO, "pending.gguf", approve=False)
    assert system.model_registry.exists(pending) and not system.model_registry.isApproved(pending)

    stake = system.node_registry.minStake()
    register_system_host(host, [model_id], stake=stake, fund=stake + 5)
    assert system.node_registry.isActive(host)
    assert list(system.node_registry.hostModels(host)) == [model_id]
    assert system.node_registry.minPriceOf(host, system.usdc) == 200  # the default prices
    assert system.node_registry.minPriceOf(host, ETH) == 10**9
    assert system.fab.balanceOf(host) == 5  # funded `fund`, staked `stake`

    fund_client(client, 10 * USDC, deposit=4 * USDC)
    assert system.usdc.balanceOf(client) == 6 * USDC
    assert system.marketplace.balanceOf(client, system.usdc) == 4 * USDC

    first = open_session(client, host, model_id, 1 * USDC, 200, proof_interval=50)
    assert first == 1 == system.marketplace.sessionCount()
    info = system.marketplace.getSession(first)
    # No session key given: the depositor signs its own receipts.
    assert (info.depositor, info.host, info.sessionKey) == (
        client.address,
        host.address,
        client.address,
    )
    assert (info.deposit, info.pricePerToken, info.proofInterval) == (1 * USDC, 200, 50)

    key = clients[1]
    # From the wallet: the 3 USDC left in the marketplace first, the other 2 from the wallet.
    second = open_session(client, host, model_id, 5 * USDC, 250, signer=key, from_wallet=True)
    assert second == 2 and system.marketplace.getSession(second).sessionKey == key.address
    assert system.marketplace.balanceOf(client, system.usdc) == 0
    assert system.usdc.balanceOf(client) == 4 * USDC
