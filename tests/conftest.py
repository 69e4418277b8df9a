"""Shared fixtures for every contract suite: the role accounts, the deployed system and
factories (one style, as yearn-vaults-v3's conftest: fixtures for who, fixtures for what
is deployed, and fixtures returning callables for what tests create).

``system`` is the whole marketplace as ``ape run deploy`` deploys it on a local chain
(``deploy_system`` with the default parameters, the accounts below in its roles); a
suite's conftest sets up its own actors on it (models, hosts, funds). The registry
suites use ``deployment`` instead: the two registries alone, with an EOA standing in for
the marketplace.

Layout of the named accounts (ape's funded test accounts, fixed mnemonic):

    admin / deployer      accounts[0]  DEFAULT_ADMIN_ROLE everywhere, holds all FAB
    curator               accounts[1]  ModelRegistry.CURATOR_ROLE
    slasher               accounts[2]  NodeRegistry.SLASHER_ROLE
    treasury              accounts[3]  treasury multisig (fee recipient; in ``system``
                                       the Treasury's TREASURER_ROLE)
    marketplace_account   accounts[4]  NodeRegistry.MARKETPLACE_ROLE until the real
                                       JobMarketplace is deployed by its own suite
    hosts                 accounts[5:8]  (``host`` is hosts[0])
    clients               accounts[8:10] + one generated account (``client`` is clients[0])
    outsider              a generated account with ETH but no role and no tokens

Deployments are session scoped: they run once per ``ape test`` run and ape's
isolation snapshots/reverts anvil around every test, so each test starts from
exactly this state and whatever it does is undone afterwards. Session fixtures
first used late in a run force ape to "rebase" (re-snapshot), so a suite
should pull ``deployment`` in up front::

    pytestmark = pytest.mark.usefixtures("deployment")

What a suite sets up on ``system`` (its models, hosts, funded clients) is MODULE
scoped. ``ape test tests`` runs every suite in one session on one anvil, and ape
reverts the module snapshot after a module's last test, so each module starts from the
bare ``system`` whatever ran before it. A session-scoped fixture that writes to
``system`` would instead stay for the rest of the run: the next suite would find its
hosts already registered (``AlreadyRegistered``), its models already added and its
session ids taken. (ape's package isolation is no way out: with pytest 8 a
package-scoped plugin fixture lives as long as the session, so it never reverts
between folders.) Worker processes and threads that read the chain are started per
test, inside the module's state, never in a fixture of wider scope than the actors
they serve.

Helpers ``add_model``, ``fund_fab`` and ``register_host`` (on the registries of
``deployment``) and ``add_system_model``, ``register_system_host``, ``fund_client`` and
``open_session`` (on ``system``) are plain callables returned by fixtures, so they can
be used inside tests and inside other fixtures.
``reverts`` is a strict ``ape.reverts`` (see ``_strict_reverts`` for why).

The constants below document the deployed parameters. Do not ``from conftest
import`` them in a test module: other folders have their own conftest.py and
pytest keeps only the last one loaded under the name ``conftest``. Read the
values from the contracts (``node_registry.minStake()``) or restate them.
"""

import contextlib
import re
from types import SimpleNamespace

import ape
import pytest
from ape.exceptions import CustomError
from eth_abi import decode
from eth_utils import keccak
from hexbytes import HexBytes

from fabstir.chain.params import DeployParams
from fabstir.chain.system import Roles, deploy_system

FAB = 10**18
"""One FAB (18 decimals)."""
USDC = 10**6
"""One USDC (6 decimals)."""
FAB_SUPPLY = 10**9 * FAB
MIN_STAKE = 1_000 * FAB
UNBONDING_PERIOD = 7 * 24 * 3600
MAX_SLASH_BPS = 5000
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
ETH = ZERO_ADDRESS
"""Payment-token address meaning native ETH."""

# The API reference's model: its id is the test vector of the ModelRegistry.
TINY_VICUNA_REPO = "CohereForAI/TinyVicuna-1B-32k-GGUF"
TINY_VICUNA_FILE = "tiny-vicuna-1b.q4_k_m.gguf"
TINY_VICUNA_ID = HexBytes("0x0b75a2061e70e736924a30c0a327db7ab719402129f76f631adbd7b7a5a5bced")
TINY_VICUNA_SHA256 = bytes.fromhex("aa" * 32)  # placeholder hash: any non-zero value
TINY_VICUNA_SIZE = 667_814_368

# A host registering through ``register_host`` with no arguments gets these.
DEFAULT_API_URL = "wss://host.example:8443"
DEFAULT_HOST_METADATA = '{"hardware":"1x H100","location":"eu","maxConcurrent":4}'
DEFAULT_USDC_MIN_PRICE = 200  # 0.0002 USDC per generated token
DEFAULT_ETH_MIN_PRICE = 10**9  # 1 gwei per generated token


#: A session fixture that returns a value or callable and sends nothing at set-up. ape
#: is told (chain_isolation=False), so a test first asking for it mid-module does not
#: make ape revert and rebuild the module's fixtures (a "rebase").
_stateless = ape.fixture(scope="session", chain_isolation=False)


# ----------------------------------------------------------------- accounts


@pytest.fixture(scope="session")
def admin(accounts):
    """Deployer and DEFAULT_ADMIN_ROLE holder of every contract; holds the FAB supply."""
    return accounts[0]


@pytest.fixture(scope="session")
def deployer(admin):
    """Alias of ``admin``."""
    return admin


@pytest.fixture(scope="session")
def curator(accounts):
    return accounts[1]


@pytest.fixture(scope="session")
def slasher(accounts):
    return accounts[2]


@pytest.fixture(scope="session")
def treasury(accounts):
    """Treasury multisig stand-in (an EOA): a fee recipient."""
    return accounts[3]


@pytest.fixture(scope="session")
def marketplace_account(accounts):
    """EOA holding NodeRegistry.MARKETPLACE_ROLE, standing in for JobMarketplace."""
    return accounts[4]


def _funded_extra_account(accounts, admin):
    # Only the configured test accounts are funded by anvil; fees are zero
    # (base_fee 0) but give it ETH anyway so it can pay for value transfers.
    account = accounts.generate_test_account()
    admin.transfer(account, 100 * 10**18)
    return account


@pytest.fixture(scope="session")
def hosts(accounts):
    return [accounts[5], accounts[6], accounts[7]]


@pytest.fixture(scope="session")
def host(hosts):
    return hosts[0]


@pytest.fixture(scope="session")
def clients(accounts, admin):
    return [accounts[8], accounts[9], _funded_extra_account(accounts, admin)]


@pytest.fixture(scope="session")
def client(clients):
    return clients[0]


@pytest.fixture(scope="session")
def outsider(accounts, admin):
    """No role, no tokens: the account every access-control test calls with."""
    return _funded_extra_account(accounts, admin)


# --------------------------------------------------------------- contracts


@pytest.fixture(scope="session")
def system(project, admin, curator, slasher, treasury):
    """The whole system (fabstir.chain.system.System), deployed by ``admin`` with the
    default DeployParams: ETH and a mock USDC as payment tokens, nothing registered."""
    roles = Roles(curator=curator, slasher=slasher, treasurer=treasury)
    return deploy_system(project, admin, DeployParams(), roles)


@pytest.fixture(scope="session")
def fab(project, admin):
    """FABToken; the whole supply (1e9 FAB) belongs to ``admin``."""
    return project.FABToken.deploy(admin, FAB_SUPPLY, sender=admin)


@pytest.fixture(scope="session")
def usdc(project, admin):
    """MockUSDC (6 decimals, anyone may mint)."""
    return project.MockUSDC.deploy(sender=admin)


@pytest.fixture(scope="session")
def model_registry(project, admin, curator):
    registry = project.ModelRegistry.deploy(admin, sender=admin)
    registry.grantRole(registry.CURATOR_ROLE(), curator, sender=admin)
    return registry


@pytest.fixture(scope="session")
def node_registry(project, admin, fab, model_registry, slasher, marketplace_account):
    registry = project.NodeRegistry.deploy(
        admin, fab, model_registry, MIN_STAKE, UNBONDING_PERIOD, MAX_SLASH_BPS, sender=admin
    )
    registry.grantRole(registry.SLASHER_ROLE(), slasher, sender=admin)
    registry.grantRole(registry.MARKETPLACE_ROLE(), marketplace_account, sender=admin)
    return registry


@pytest.fixture(scope="session")
def deployment(
    admin,
    curator,
    slasher,
    treasury,
    marketplace_account,
    hosts,
    clients,
    outsider,
    fab,
    usdc,
    model_registry,
    node_registry,
    tiny_vicuna,
):
    """Everything above in one namespace; request it first so it is set up early."""
    return SimpleNamespace(
        admin=admin,
        curator=curator,
        slasher=slasher,
        treasury=treasury,
        marketplace_account=marketplace_account,
        hosts=hosts,
        clients=clients,
        outsider=outsider,
        fab=fab,
        usdc=usdc,
        model_registry=model_registry,
        node_registry=node_registry,
        tiny_vicuna=tiny_vicuna,
    )


# ----------------------------------------------------------------- helpers


def _raw_revert_data(exc):
    """Revert data of an error ape did not decode, or None.

    Two shapes reach us undecoded: a constructor revert ("0x<data>") and a
    reverting eth_call, where anvil words it "custom error 0x<selector>: <args>"
    with the args as text when they happen to be valid UTF-8, else as hex.
    """
    message = str(exc.revert_message or "")
    if re.fullmatch(r"0x(?:[0-9a-fA-F]{2})*", message):
        return bytes.fromhex(message[2:])
    match = re.fullmatch(r"custom error 0x([0-9a-fA-F]{8})(?:: ?(.*))?", message, re.S)
    if not match:
        return None
    selector, args = bytes.fromhex(match[1]), match[2] or ""
    if re.fullmatch(r"(?:[0-9a-fA-F]{64})*", args):
        return selector + bytes.fromhex(args)
    return selector + args.encode("utf-8")


@contextlib.contextmanager
def _strict_reverts(error, **inputs):
    """ape.reverts(error, **inputs), closing the holes ape leaves open.

    ape.reverts passes on ANY revert it could not decode (a revert in a
    constructor, or in a view call: anvil reports those as text) and silently
    skips input names the error does not have. Here the error must be exactly
    ``error`` (by selector) and every named input must exist and match.
    """
    with ape.reverts(error, **inputs) as info:
        yield info
    exc = info.value
    abi = error.abi
    if isinstance(exc, CustomError):
        assert exc.abi.selector == abi.selector, f"expected {abi.selector}, got {exc!r}"
        actual = exc.inputs
    else:
        data = _raw_revert_data(exc)
        assert data is not None, f"expected {abi.selector}, got undecodable revert: {exc}"
        assert data[:4] == keccak(text=abi.selector)[:4], f"expected {abi.selector}, got {exc}"
        values = decode([i.canonical_type for i in abi.inputs], data[4:])
        actual = {i.name: v for i, v in zip(abi.inputs, values, strict=True)}
    for name, expected in inputs.items():
        assert name in actual, f"{abi.name} has no input {name!r}"
        assert actual[name] == expected, (
            f"{abi.name}.{name}: expected {expected!r}, got {actual[name]!r}"
        )


def _add_model(registry, curator, repo, file, sha256, size, metadata, approve):
    receipt = registry.addModel(repo, file, sha256, size, metadata, sender=curator)
    # Take the id from the event, i.e. what the contract computed on add.
    model_id = registry.ModelAdded.from_receipt(receipt)[0].modelId
    if approve:
        registry.approveModel(model_id, sender=curator)
    return model_id


def _stake_and_register(fab, node_registry, host, allowance, stake, models, prices, api_url, meta):
    # ``host`` already holds the FAB; ``prices`` maps token -> min price, in chain order.
    fab.approve(node_registry, allowance, sender=host)
    return node_registry.register(
        stake,
        api_url,
        meta,
        list(models),
        list(prices.keys()),
        list(prices.values()),
        sender=host,
    )


@_stateless
def reverts():
    """Strict ``ape.reverts``: ``with reverts(contract.ErrorName, arg=value): ...``.

    Fails unless the call reverts with exactly that custom error (also for
    reverts ape cannot decode, such as in a constructor) and the given inputs.
    """
    return _strict_reverts


@pytest.fixture(scope="session")
def add_model(model_registry, curator):
    """``add_model(repo, file, *, approve=True, sha256=..., size=..., metadata=...) -> id``.

    Adds a model as the curator and (by default) approves it. Returns the
    model id as HexBytes.
    """

    def _add(
        repo,
        file,
        *,
        approve=True,
        sha256=TINY_VICUNA_SHA256,
        size=TINY_VICUNA_SIZE,
        metadata='{"quant":"q4_k_m"}',
    ):
        return _add_model(model_registry, curator, repo, file, sha256, size, metadata, approve)

    return _add


@pytest.fixture(scope="session")
def tiny_vicuna(add_model):
    """Id of the TinyVicuna model, added and approved (the default model hosts serve)."""
    return add_model(TINY_VICUNA_REPO, TINY_VICUNA_FILE)


@pytest.fixture(scope="session")
def fund_fab(fab, admin):
    """``fund_fab(account, amount)``: transfer FAB from the admin's supply."""

    def _fund(account, amount):
        fab.transfer(account, amount, sender=admin)

    return _fund


@pytest.fixture(scope="session")
def register_host(node_registry, fab, fund_fab, tiny_vicuna, usdc):
    """``register_host(host, stake=MIN_STAKE, models=None, prices=None, ...) -> receipt``.

    Funds ``host`` with exactly ``stake`` FAB, approves the NodeRegistry and
    registers. ``models`` defaults to [TinyVicuna]; ``prices`` is a dict
    token-address -> min price and defaults to USDC 200 and ETH 1 gwei.
    """

    def _register(
        host,
        stake=MIN_STAKE,
        models=None,
        prices=None,
        api_url=DEFAULT_API_URL,
        metadata=DEFAULT_HOST_METADATA,
    ):
        if models is None:
            models = [tiny_vicuna]
        if prices is None:
            prices = {usdc.address: DEFAULT_USDC_MIN_PRICE, ETH: DEFAULT_ETH_MIN_PRICE}
        fund_fab(host, stake)
        return _stake_and_register(
            fab, node_registry, host, stake, stake, models, prices, api_url, metadata
        )

    return _register


# ------------------------------------------------------- factories on ``system``


@_stateless
def add_system_model(system, curator):
    """``add_system_model(repo, file, *, sha256=..., size=..., metadata="{}", approve=True)
    -> id``: adds a model to ``system``'s ModelRegistry as the curator and (by default)
    approves it. Returns the id the contract computed (HexBytes)."""

    def _add(
        repo,
        file,
        *,
        sha256=TINY_VICUNA_SHA256,
        size=TINY_VICUNA_SIZE,
        metadata="{}",
        approve=True,
    ):
        registry = system.model_registry
        return _add_model(registry, curator, repo, file, sha256, size, metadata, approve)

    return _add


@_stateless
def register_system_host(system, admin):
    """``register_system_host(host, models, prices=None, *, stake=MIN_STAKE, fund=None,
    api_url=..., metadata=...) -> receipt``: registers ``host`` on ``system``'s
    NodeRegistry.

    The admin sends it ``fund`` FAB (default: exactly ``stake``) and the host approves
    that much before staking ``stake``. ``prices`` maps token address -> min price per
    token (default: USDC 200, ETH 1 gwei); the order of the dict is the order on chain.
    """

    def _register(
        host,
        models,
        prices=None,
        *,
        stake=MIN_STAKE,
        fund=None,
        api_url=DEFAULT_API_URL,
        metadata=DEFAULT_HOST_METADATA,
    ):
        if prices is None:
            prices = {system.usdc.address: DEFAULT_USDC_MIN_PRICE, ETH: DEFAULT_ETH_MIN_PRICE}
        fund = stake if fund is None else fund
        system.fab.transfer(host, fund, sender=admin)
        return _stake_and_register(
            system.fab, system.node_registry, host, fund, stake, models, prices, api_url, metadata
        )

    return _register


@_stateless
def fund_client(system, admin):
    """``fund_client(client, amount, *, approve=True, deposit=0)``: mints ``amount`` mock
    USDC (smallest units) to ``client``; by default approves the marketplace for all of
    it (unlimited allowance) and deposits ``deposit`` of it into the marketplace."""

    def _fund(client, amount, *, approve=True, deposit=0):
        system.usdc.mint(client, amount, sender=admin)
        if approve:
            system.usdc.approve(system.marketplace, 2**256 - 1, sender=client)
        if deposit:
            system.marketplace.deposit(system.usdc, deposit, sender=client)

    return _fund


@_stateless
def open_session(system):
    """``open_session(depositor, host, model_id, deposit, price, *, token=usdc,
    duration=3600, proof_interval=100, signer=None, from_wallet=False, **tx) -> session id``.

    Opens a session on ``system``'s marketplace: from the depositor's marketplace
    balance (``createSession``), or with ``from_wallet=True`` straight from its wallet
    (``createSessionFromWallet``; ERC-20 allowance needed). ``signer`` is the receipt
    key's address (default: zero, i.e. the depositor signs its own receipts); ``tx``
    goes to the transaction (``value=`` for an ETH session from the wallet).
    """

    def _open(
        depositor,
        host,
        model_id,
        deposit,
        price,
        *,
        token=None,
        duration=3600,
        proof_interval=100,
        signer=None,
        from_wallet=False,
        **tx,
    ):
        mk = system.marketplace
        create = mk.createSessionFromWallet if from_wallet else mk.createSession
        create(
            host,
            model_id,
            system.usdc if token is None else token,
            deposit,
            price,
            duration,
            proof_interval,
            ZERO_ADDRESS if signer is None else signer,
            sender=depositor,
            **tx,
        )
        return int(mk.sessionCount())

    return _open
