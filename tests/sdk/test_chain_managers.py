"""The SDK's chain managers end to end on a fresh real deployment (see conftest.py).

Every error test also checks that nothing was sent: the account's nonce is
unchanged, i.e. the SDK refused before signing.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from eth_account import Account

from fabstir.chain.deployments import ContractRecord, Deployment, TokenRecord, write_deployment
from fabstir.protocol.receipts import sign_receipt
from fabstir.sdk.errors import SDKError, SDKErrorCode
from fabstir.sdk.sdk import FabstirSDK
from fabstir.sdk.types import (
    HostMetadata,
    HostRegistryStatus,
    ModelSpec,
    ModelStatus,
    ReceiptOutcome,
    SessionStatus,
    SettleItem,
)

pytestmark = pytest.mark.usefixtures("env")

MakeSdk = Callable[..., FabstirSDK]
ETH = "0x" + "00" * 20
CONFIG = {"pricePerToken": 200, "duration": 3600, "proofInterval": 100}
MODEL_B_CONTENT = b"pretend this is a gguf file\n" * 100


@contextlib.contextmanager
def refused(code: SDKErrorCode, *accounts: Any, match: str | None = None) -> Iterator[Any]:
    """The block must raise SDKError(code) and send no transaction from `accounts`."""
    import ape

    w3 = ape.chain.provider.web3
    before = [w3.eth.get_transaction_count(a.address) for a in accounts]
    with pytest.raises(SDKError) as info:
        yield info
    assert info.value.code is code, f"expected {code}, got {info.value!r}"
    if match is not None:
        assert match in info.value.message, info.value.message
    after = [w3.eth.get_transaction_count(a.address) for a in accounts]
    assert before == after, "a transaction was sent"


def receipt(env: SimpleNamespace, key: Any, session_id: int, tokens: int, tag: int = 0) -> Any:
    pk = key.private_key if hasattr(key, "private_key") else key.key
    return sign_receipt(pk, env.domain, session_id, tokens, hashlib.sha256(bytes([tag])).digest())


def open_session(make_sdk: MakeSdk, env: SimpleNamespace, host: Any = None, **kw: Any) -> Any:
    sdk = make_sdk(env.alice)
    return sdk.get_payment_manager().create_session_job_with_usdc(
        (host or env.host1).address, kw.pop("amount", "1.0"), CONFIG, **kw
    )


# --- configuration and authentication ---------------------------------------------------


def test_addresses_come_from_the_deployment_file(env: SimpleNamespace, tmp_path: Path) -> None:
    records = {n: ContractRecord(address=a, block=1) for n, a in env.addresses.items()}
    write_deployment(
        Deployment(env.chain_id, "local", env.deployer.address, records, {}, {}), tmp_path
    )
    sdk = FabstirSDK(rpc_url=env.rpc_url, chain_id=env.chain_id, deployments_dir=tmp_path)
    assert sdk.get_contract_address("jobMarketplace") == env.addresses["JobMarketplace"]
    assert sdk.get_contract_address("usdcToken") == env.addresses["USDC"]
    assert sdk.get_contract_address("fab_token") == env.addresses["FABToken"]
    assert sdk.start_block() == 1
    assert sdk.get_model_manager().is_model_approved(env.model_a)


def test_payment_tokens_come_from_the_record_else_the_marketplace(
    env: SimpleNamespace, make_sdk: MakeSdk, tmp_path: Path
) -> None:
    usdc = env.addresses["USDC"]
    # No deployment file: the marketplace's tokens(), each token's symbol() and decimals().
    read = make_sdk().payment_tokens()
    assert [(t.address, t.symbol, t.decimals) for t in read] == [
        (ETH, "ETH", 18),
        (usdc, "USDC", 6),
    ]
    # A record with the token table: the SDK takes symbols and decimals from it, and a
    # symbol that is no contract name of the SDK's (here "XYZ") loads without error.
    records = {n: ContractRecord(address=a, block=1) for n, a in env.addresses.items()}
    records["XYZ"] = ContractRecord(address=usdc, block=1, contract_type="MockERC20")
    dep = Deployment(env.chain_id, "local", env.deployer.address, records, {}, {})
    dep.tokens = [
        TokenRecord("ETH", 18, ETH, mock=False, min_deposit=1),
        TokenRecord("XYZ", 6, usdc, mock=True, min_deposit=1),
    ]
    write_deployment(dep, tmp_path)
    sdk = FabstirSDK(rpc_url=env.rpc_url, chain_id=env.chain_id, deployments_dir=tmp_path)
    assert [(t.symbol, t.decimals) for t in sdk.payment_tokens()] == [("ETH", 18), ("XYZ", 6)]
    assert sdk.get_token("xyz").address == usdc and sdk.get_token(usdc).symbol == "XYZ"
    assert sdk.get_payment_manager().get_min_deposit("XYZ") == "1.0"
    with pytest.raises(SDKError) as err:
        sdk.get_token("ABC")  # neither a listed symbol nor an address
    assert err.value.code is SDKErrorCode.INVALID_ADDRESS


def test_missing_contracts_are_discovered_from_the_marketplace(env: SimpleNamespace) -> None:
    # The reference's example config: only the marketplace and USDC.
    sdk = FabstirSDK(
        {
            "rpcUrl": env.rpc_url,
            "chainId": env.chain_id,
            "contractAddresses": {
                "jobMarketplace": env.addresses["JobMarketplace"],
                "usdcToken": env.addresses["USDC"],
            },
            "useDeploymentFile": False,
        }
    )
    assert sdk.contract_addresses() == env.addresses
    assert sdk.get_host_manager().host_supports_model(env.host1.address, env.model_a)


def test_contract_not_configured_and_network_errors(env: SimpleNamespace) -> None:
    bare = FabstirSDK(rpc_url=env.rpc_url, chain_id=env.chain_id, use_deployment_file=False)
    with pytest.raises(SDKError) as info:
        bare.get_model_manager().is_model_approved(env.model_a)
    assert info.value.code is SDKErrorCode.CONTRACT_NOT_CONFIGURED
    assert "JobMarketplace" in info.value.message

    wrong_chain = FabstirSDK(rpc_url=env.rpc_url, chain_id=84532, contract_addresses=env.addresses)
    with pytest.raises(SDKError) as info:
        wrong_chain.get_model_manager().is_model_approved(env.model_a)
    assert info.value.code is SDKErrorCode.NETWORK_ERROR
    assert "serves chain 31337" in info.value.message

    down = FabstirSDK(
        rpc_url="http://127.0.0.1:9",
        chain_id=env.chain_id,
        contract_addresses=env.addresses,
        rpc_retries=1,
        rpc_timeout=2,
    )
    with pytest.raises(SDKError) as info:
        down.get_payment_manager().get_usdc_balance(env.alice.address)
    assert info.value.code is SDKErrorCode.NETWORK_ERROR


def test_authentication(env: SimpleNamespace, make_sdk: MakeSdk) -> None:
    sdk = make_sdk()
    assert not sdk.is_authenticated and sdk.address is None
    # Reads work without a signer.
    assert sdk.get_payment_manager().get_usdc_balance(env.alice.address) == "100.0"
    assert sdk.get_session_job_manager().get_session(1).status is SessionStatus.SETTLED
    # Anything that signs does not.
    for call in (
        lambda: sdk.get_payment_manager().deposit("1.0"),
        lambda: sdk.get_payment_manager().create_session_job_with_usdc(
            env.host1.address, "1.0", CONFIG
        ),
        lambda: sdk.get_payment_manager().get_usdc_balance(),
        lambda: sdk.get_host_manager().withdraw_earnings(),
        lambda: sdk.get_session_job_manager().settle(1),
        lambda: sdk.get_treasury_manager().withdraw_treasury_funds("USDC", "1"),
        lambda: sdk.get_storage_manager(),
    ):
        with pytest.raises(SDKError) as info:
            call()
        assert info.value.code is SDKErrorCode.AUTH_REQUIRED

    for bad in ("0x1234", "not a key", b"\x00" * 31, object()):
        with pytest.raises(SDKError) as info:
            sdk.authenticate(bad)
        assert info.value.code is SDKErrorCode.INVALID_SIGNER
        assert "0x1234" not in info.value.message  # never echo key material

    account = Account.from_key(env.alice.private_key)
    liar = SimpleNamespace(key=account.key, address=env.bob.address)
    with pytest.raises(SDKError) as info:
        sdk.authenticate(liar)
    assert info.value.code is SDKErrorCode.AUTH_FAILED

    assert sdk.authenticate(account) == env.alice.address
    assert sdk.authenticate("signer", signer=account) == env.alice.address
    assert sdk.get_payment_manager().get_usdc_balance() == "100.0"
    assert sdk.get_storage_manager().owner == env.alice.address


# --- payments ------------------------------------------------------------------------------


def test_usdc_session_pays_host_treasury_and_refunds(
    env: SimpleNamespace, make_sdk: MakeSdk
) -> None:
    """The reference's payment example: $1 deposit, 150 tokens at 0.0002."""
    alice, host = make_sdk(env.alice), make_sdk(env.host1)
    pay = alice.get_payment_manager()
    result = pay.create_session_job_with_usdc(env.host1.address, "1.0", CONFIG)
    assert result.approval_tx_hash is not None  # alice had no allowance
    assert result.session_id == result.job_id == 2
    assert (result.deposit, result.model_id, result.host) == ("1.0", env.model_a, env.host1.address)
    balances = pay.get_balances()
    assert (balances.wallet, balances.deposited, balances.escrowed) == ("99.0", "0.0", "1.0")

    jobs = host.get_session_job_manager()
    info = jobs.get_session(result.session_id)
    assert info.status is SessionStatus.ACTIVE and info.client == env.alice.address
    assert (info.max_tokens, info.price_per_token, info.session_key) == (
        5000,
        200,
        env.alice.address,
    )
    assert [s.session_id for s in jobs.get_sessions_of_user(env.alice.address)] == [2]
    assert [s.session_id for s in jobs.get_sessions_of_host(env.host1.address)] == [2]
    assert jobs.get_sessions_of_host(env.host3.address)[0].session_id == 1
    # Scans are split into block ranges (public RPCs cap eth_getLogs).
    chunked = make_sdk(log_block_range=2).get_session_job_manager()
    assert [s.session_id for s in chunked.get_sessions_of_user(env.alice.address)] == [2]
    assert chunked.get_sessions_of_user(env.alice.address, to_block=1) == []
    assert jobs.get_remaining_budget(2) == (5000, "1.0")

    # The host submits the client's receipt, then settles.
    r = receipt(env, env.alice, 2, 150)
    jobs.submit_checkpoint_proof(2, 150, r.signature, r.content_hash)
    assert jobs.get_session(2).tokens_used == 150
    jobs.complete_session_job(2)  # host side: settle
    assert jobs.get_session(2).status is SessionStatus.SETTLED

    hosts = host.get_host_manager()
    assert hosts.get_host_earnings() == "0.027"
    assert host.get_treasury_manager().get_treasury_balance("USDC") == "0.008"  # + host3's 0.005
    assert pay.get_deposited_balance() == "0.97"
    # To another address (a wallet that cannot receive itself); not to zero or the vault.
    for bad in ("0x" + "00" * 20, env.addresses["JobMarketplace"]):
        with refused(SDKErrorCode.INVALID_ADDRESS, env.alice):
            pay.withdraw("0.01", to=bad)
    payee = make_sdk(env.bob).get_payment_manager()
    payee_before = Decimal(payee.get_usdc_balance())
    pay.withdraw("0.01", to=env.bob.address)
    assert Decimal(payee.get_usdc_balance()) - payee_before == Decimal("0.01")
    pay.withdraw("0.96")
    assert pay.get_usdc_balance() == "99.96"
    with refused(SDKErrorCode.INSUFFICIENT_BALANCE, env.alice):
        pay.withdraw()  # nothing left

    before = Decimal(host.get_payment_manager().get_usdc_balance())
    hosts.withdraw_earnings("USDC")
    assert Decimal(host.get_payment_manager().get_usdc_balance()) - before == Decimal("0.027")
    with refused(SDKErrorCode.INSUFFICIENT_BALANCE, env.host1):
        hosts.withdraw_earnings(["USDC", "ETH"])


def test_eth_session_and_in_contract_balance(env: SimpleNamespace, make_sdk: MakeSdk) -> None:
    bob = make_sdk(env.bob)
    pay = bob.get_payment_manager()
    pay.deposit("0.0006", "ETH")
    assert pay.get_deposited_balance("ETH") == "0.0006"
    # 0.001 ETH escrow: 0.0006 from the balance, 0.0004 sent as value.
    result = pay.create_session_job_with_eth(
        env.host1.address, "0.001", {"pricePerToken": 10**9, "duration": 600, "proofInterval": 50}
    )
    assert result.deposit == "0.001" and result.approval_tx_hash is None
    eth = pay.get_balances(token="ETH")
    assert (eth.deposited, eth.escrowed) == ("0.0", "0.001")
    assert bob.get_session_job_manager().get_session(result.session_id).token == "0x" + "00" * 20

    pay.fund_sub_account(env.bob.address, env.addresses["JobMarketplace"], "0.0001", "ETH")
    pay.fund_sub_account(None, None, "0.0001", "ETH")
    assert pay.get_deposited_balance("ETH") == "0.0002"
    with refused(SDKErrorCode.NOT_AUTHORIZED, env.bob):
        pay.fund_sub_account(env.alice.address, None, "1.0")
    with refused(SDKErrorCode.INVALID_ARGUMENT, env.bob):
        pay.fund_sub_account(None, env.alice.address, "1.0")
    with refused(SDKErrorCode.INSUFFICIENT_BALANCE, env.bob):
        pay.withdraw("1.0", "ETH")
    with refused(SDKErrorCode.INSUFFICIENT_BALANCE, env.bob):
        pay.deposit("5.0", "USDC")  # bob has no USDC
    assert pay.get_min_deposit("USDC") == "1.0" and pay.get_min_deposit("ETH") == "0.0005"


def test_session_input_is_refused_before_sending(env: SimpleNamespace, make_sdk: MakeSdk) -> None:
    pay = make_sdk(env.alice).get_payment_manager()
    host = env.host1.address

    def create(amount: str = "1.0", provider: str = host, **kw: Any) -> Any:
        config = {**CONFIG, **kw.pop("config", {})}
        return pay.create_session_job_with_usdc(provider, amount, config, **kw)

    cases: list[tuple[SDKErrorCode, Callable[[], Any], str]] = [
        (SDKErrorCode.INVALID_ADDRESS, lambda: create(provider="0x1234"), "provider"),
        (
            SDKErrorCode.INVALID_ADDRESS,
            lambda: create(provider=host.lower()[:-1] + "G"),
            "provider",
        ),
        (SDKErrorCode.INVALID_ADDRESS, lambda: create(session_key="bob"), "session_key"),
        (SDKErrorCode.INVALID_AMOUNT, lambda: create("-1"), "negative"),
        (SDKErrorCode.INVALID_AMOUNT, lambda: create("1e3"), "exponent"),
        (SDKErrorCode.INVALID_AMOUNT, lambda: create("0.0000001"), "6 decimals"),
        (SDKErrorCode.INVALID_AMOUNT, lambda: create(config={"pricePerToken": 0}), "price"),
        (SDKErrorCode.INVALID_ARGUMENT, lambda: create(config={"duration": 10}), "duration"),
        (SDKErrorCode.INVALID_ARGUMENT, lambda: create(config={"proofIntervl": 1}), "unknown"),
        (SDKErrorCode.DEPOSIT_TOO_LOW, lambda: create("0.5"), "minimum of 1.0"),
        (
            SDKErrorCode.DEPOSIT_TOO_LOW,
            lambda: create("1.0", config={"proofInterval": 9000}),
            "proof",
        ),
        (
            SDKErrorCode.DEPOSIT_TOO_LOW,
            lambda: create(config={"pricePerToken": 150}),
            "whole tokens",
        ),
        (
            SDKErrorCode.PRICE_TOO_LOW,
            lambda: create(config={"pricePerToken": 125}),
            "minimum of 200",
        ),
        (SDKErrorCode.MODEL_NOT_FOUND, lambda: create(model_id="0x" + "11" * 32), "not registered"),
        (SDKErrorCode.MODEL_MISMATCH, lambda: create(model_id=env.model_b), "does not serve"),
        (
            SDKErrorCode.HOST_NOT_FOUND,
            lambda: create(provider=env.outsider.address),
            "not an active",
        ),
        (SDKErrorCode.INVALID_ARGUMENT, lambda: create(provider=env.alice.address), "your own"),
        (
            SDKErrorCode.INVALID_ARGUMENT,
            lambda: create(provider=env.host2.address),
            "pass model_id",
        ),
        (SDKErrorCode.INSUFFICIENT_BALANCE, lambda: create("101"), "add 1.0 USDC"),
    ]
    for code, call, text in cases:
        with refused(code, env.alice, match=text):
            call()

    # A token the marketplace does not take, and an address that is no token.
    with refused(SDKErrorCode.INVALID_ARGUMENT, env.alice, match="does not accept"):
        pay._sdk.get_session_job_manager().create_session_job(
            host, env.addresses["FABToken"], "1.0", CONFIG
        )
    with refused(SDKErrorCode.INVALID_ADDRESS, env.alice, match="no contract code"):
        pay.get_token_balance(env.outsider.address)

    # A deactivated model: the host still lists it, the registry refuses it.
    env.system.model_registry.deactivateModel(env.model_b, sender=env.curator)
    with refused(SDKErrorCode.MODEL_NOT_APPROVED, env.alice, match="deactivated"):
        create(provider=env.host2.address, model_id=env.model_b, config={"pricePerToken": 100})

    # New sessions are refused while the marketplace is paused.
    env.system.marketplace.pause(sender=env.deployer)
    with refused(SDKErrorCode.SERVICE_UNAVAILABLE, env.alice):
        create()


def test_reverts_and_approval_failures_are_decoded(env: SimpleNamespace, make_sdk: MakeSdk) -> None:
    alice = make_sdk(env.alice)
    pay = alice.get_payment_manager()
    market = alice._contract("JobMarketplace")
    # Past the SDK's checks, the chain's custom error still comes back decoded.
    with pytest.raises(SDKError) as info:
        pay._send(market.functions.withdraw(env.addresses["USDC"], 5), "raw withdraw")
    assert info.value.code is SDKErrorCode.INSUFFICIENT_BALANCE
    assert info.value.details["error"] == "InsufficientBalance"
    assert info.value.details["args"] == [0, 5]

    curator = make_sdk(env.curator)
    registry = curator._contract("ModelRegistry")
    with pytest.raises(SDKError) as info:
        curator.get_model_manager()._send(
            registry.functions.addModel("no-slash", "f.gguf", b"\x01" * 32, 1, ""), "addModel"
        )
    assert info.value.code is SDKErrorCode.TRANSACTION_FAILED
    assert "InvalidRepo" in info.value.message

    with pytest.raises(SDKError) as info:
        pay._send(market.functions.pause(), "pause")
    assert info.value.code is SDKErrorCode.NOT_AUTHORIZED
    assert info.value.details["error"] == "AccessControlUnauthorizedAccount"

    usdc = alice.get_token("USDC")
    with pytest.raises(SDKError) as info:  # OpenZeppelin refuses the zero spender
        pay._ensure_allowance(usdc, env.alice.address, "0x" + "00" * 20, 1, "test")
    assert info.value.code is SDKErrorCode.APPROVAL_FAILED
    assert "ERC20InvalidSpender" in info.value.message


# --- models -----------------------------------------------------------------------------------


def test_model_manager(env: SimpleNamespace, make_sdk: MakeSdk, tmp_path: Path) -> None:
    models = make_sdk().get_model_manager()
    assert (
        models.get_model_id("CohereForAI/TinyVicuna-1B-32k-GGUF", "tiny-vicuna-1b.q4_k_m.gguf")
        == env.model_a
    )
    for repo, file in (("no-slash", "f"), ("a/b/c", "f"), ("a/b", "dir/f"), ("a/b", "")):
        with pytest.raises(SDKError) as info:
            models.get_model_id(repo, file)
        assert info.value.code is SDKErrorCode.INVALID_ARGUMENT

    assert models.is_model_approved(env.model_a)
    assert not models.is_model_approved(env.model_pending)
    assert not models.is_model_approved("0x" + "22" * 32)
    with pytest.raises(SDKError) as info:
        models.is_model_approved("0x1234")
    assert info.value.code is SDKErrorCode.INVALID_ARGUMENT

    a = models.get_model_details(env.model_a)
    assert a is not None
    assert (a.huggingface_repo, a.file_name, a.size, a.approved) == (
        "CohereForAI/TinyVicuna-1B-32k-GGUF",
        "tiny-vicuna-1b.q4_k_m.gguf",
        1234,
        True,
    )
    assert a.metadata == {"name": "TinyVicuna"}
    pending = models.get_model_details(env.model_pending)
    assert pending is not None and pending.status is ModelStatus.PENDING
    assert pending.metadata == "not json"
    assert models.get_model_details("0x" + "22" * 32) is None
    assert [m.id for m in models.get_all_approved_models()] == [env.model_a, env.model_b]

    with pytest.raises(SDKError) as info:
        models.require_approved(env.model_pending)
    assert info.value.code is SDKErrorCode.MODEL_NOT_APPROVED
    with pytest.raises(SDKError) as info:
        models.require_approved("0x" + "22" * 32)
    assert info.value.code is SDKErrorCode.MODEL_NOT_FOUND

    sha_b = hashlib.sha256(MODEL_B_CONTENT).hexdigest()
    spec = {"huggingfaceRepo": "TheBloke/Llama-2-7B-Chat-GGUF",
            "fileName": "llama-2-7b-chat.Q4_K_M.gguf", "modelHash": "0x" + sha_b}  # fmt: skip
    ok = models.validate_model(spec, MODEL_B_CONTENT)
    assert (ok.is_valid, ok.is_approved, ok.hash_matches, ok.errors) == (True, True, True, ())
    path = tmp_path / "model.gguf"
    path.write_bytes(MODEL_B_CONTENT + b"x")
    bad = models.validate_model(ModelSpec.from_value(spec), path)
    assert (bad.is_valid, bad.hash_matches) == (False, False)
    wrong = models.validate_model({**spec, "modelHash": "ab" * 32})
    assert not wrong.is_valid and wrong.hash_matches is None and "differs" in wrong.errors[0]
    unapproved = models.validate_model(ModelSpec("pending/Model-GGUF", "pending.gguf"))
    assert (unapproved.is_valid, unapproved.is_approved) == (False, False)
    unknown = models.validate_model(ModelSpec("x/y", "z.gguf"))
    assert not unknown.is_valid and "not registered" in unknown.errors[0]
    assert not models.validate_model(ModelSpec("bad", "z")).is_valid

    assert models.verify_model_hash(MODEL_B_CONTENT, sha_b)
    assert models.verify_model_hash(path, hashlib.sha256(path.read_bytes()).digest())
    assert not models.verify_model_hash(path, "0x" + sha_b)
    with pytest.raises(SDKError) as info:
        models.verify_model_hash(path, "0x1234")
    assert info.value.code is SDKErrorCode.INVALID_MODEL_HASH
    with pytest.raises(SDKError) as info:
        models.verify_model_hash(tmp_path / "missing.gguf", sha_b)
    assert info.value.code is SDKErrorCode.INVALID_ARGUMENT


# --- hosts ------------------------------------------------------------------------------------


def test_find_hosts_ranks_by_price_then_reputation(env: SimpleNamespace, make_sdk: MakeSdk) -> None:
    hosts = make_sdk().get_host_manager()
    found = hosts.find_hosts_for_model(env.model_a)
    # host2 and host3 both ask 100; host3 has a settled session; host1 asks 200.
    assert [h.address for h in found] == [env.host3.address, env.host2.address, env.host1.address]
    top = found[0]
    assert top.reputation.sessions_settled == 1 and top.reputation.tokens_served == 500
    assert top.min_prices[env.addresses["USDC"]] == 100
    assert top.metadata.hardware.gpu == "H100" and top.metadata.location == "eu"
    assert top.is_active and top.stake_fab == "1000.0" and top.api_url.startswith("ws://")
    # In ETH all ask 1 gwei: reputation decides, then address.
    assert hosts.find_hosts_for_model(env.model_a, "ETH")[0].address == env.host3.address
    assert [h.address for h in hosts.find_hosts_for_model(env.model_b)] == [env.host2.address]
    assert hosts.find_hosts_for_model(env.model_pending) == []
    with pytest.raises(SDKError) as info:
        hosts.find_hosts_for_model("0x" + "33" * 32)
    assert info.value.code is SDKErrorCode.MODEL_NOT_FOUND

    everyone = hosts.discover_all_active_hosts_with_models()
    assert {h.address for h in everyone} == {
        env.host1.address,
        env.host2.address,
        env.host3.address,
    }
    assert hosts.host_supports_model(env.host2.address, env.model_b)
    assert not hosts.host_supports_model(env.host1.address, env.model_b)
    with pytest.raises(SDKError) as info:
        hosts.get_host_info(env.alice.address)
    assert info.value.code is SDKErrorCode.HOST_NOT_FOUND
    status = hosts.get_host_status(env.alice.address)
    assert (status.is_registered, status.is_active, status.earnings) == (False, False, "0.0")


def test_host_lifecycle(env: SimpleNamespace, make_sdk: MakeSdk, chain: Any) -> None:
    sdk = make_sdk(env.newhost)
    hosts = sdk.get_host_manager()
    sha_b = "0x" + hashlib.sha256(MODEL_B_CONTENT).hexdigest()
    spec_b = ModelSpec("TheBloke/Llama-2-7B-Chat-GGUF", "llama-2-7b-chat.Q4_K_M.gguf", sha_b)
    metadata = {
        "hardware": {"gpu": "RTX 4090", "vram": 24, "ram": 64},
        "capabilities": ["streaming"],
        "location": "us-east",
        "maxConcurrent": 5,
        "costPerToken": 150,
    }
    request = {"metadata": metadata, "supportedModels": [spec_b, env.model_a],
               "stake": "1000", "apiUrl": "wss://newhost.example"}  # fmt: skip

    bad: list[tuple[SDKErrorCode, dict[str, Any], str]] = [
        (SDKErrorCode.INVALID_AMOUNT, {"stake": "999.5"}, "minimum of 1000.0"),
        (SDKErrorCode.INVALID_AMOUNT, {"stake": "-5"}, "negative"),
        (SDKErrorCode.INSUFFICIENT_BALANCE, {"stake": "50001"}, "holds 50000.0 FAB"),
        (SDKErrorCode.MODEL_NOT_APPROVED, {"supportedModels": [env.model_pending]}, "pending"),
        (SDKErrorCode.MODEL_NOT_FOUND, {"supportedModels": ["0x" + "44" * 32]}, "not registered"),
        (
            SDKErrorCode.INVALID_MODEL_HASH,
            {
                "supportedModels": [
                    ModelSpec(spec_b.huggingface_repo, spec_b.file_name, "0x" + "ab" * 32)
                ]
            },
            "differs",
        ),
        (SDKErrorCode.INVALID_ARGUMENT, {"supportedModels": [env.model_a, env.model_a]}, "twice"),
        (SDKErrorCode.INVALID_ARGUMENT, {"supportedModels": []}, "at least one"),
        (SDKErrorCode.INVALID_ARGUMENT, {"apiUrl": "ftp://x"}, "ws://"),
        (SDKErrorCode.INVALID_ARGUMENT, {"apiUrl": ""}, "required"),
        (SDKErrorCode.INVALID_ARGUMENT, {"metadata": {"location": 5}}, "location"),
        (SDKErrorCode.INVALID_AMOUNT, {"minPrices": {"USDC": -1}}, "non-negative"),
    ]
    for code, change, text in bad:
        with refused(code, env.newhost, match=text):
            hosts.register_host_with_models({**request, **change})

    # Client-side calls of host-only actions.
    with refused(SDKErrorCode.NOT_AUTHORIZED, env.newhost, match="not registered"):
        hosts.update_api_url("wss://x.example")
    with refused(SDKErrorCode.NOT_AUTHORIZED, env.newhost, match="not a host"):
        hosts.withdraw_earnings()
    with refused(SDKErrorCode.NOT_AUTHORIZED, env.newhost):
        hosts.withdraw_stake()

    hosts.register_host_with_models(request)
    status = hosts.get_host_status()
    assert status.is_registered and status.is_active and status.status is HostRegistryStatus.ACTIVE
    assert status.supported_models == (env.model_b, env.model_a)
    assert status.metadata.hardware.gpu == "RTX 4090" and status.metadata.max_concurrent == 5
    info = hosts.get_host_info(env.newhost.address)
    assert info.min_prices[env.addresses["USDC"]] == 150  # from costPerToken
    assert sdk.get_payment_manager().get_token_balance("FAB") == "49000.0"
    with refused(SDKErrorCode.INVALID_ARGUMENT, env.newhost, match="already"):
        hosts.register_host_with_models(request)

    hosts.update_host_models([env.model_a])
    hosts.update_api_url("wss://moved.example")
    hosts.update_metadata(HostMetadata.from_value({**metadata, "location": "eu-west"}))
    hosts.set_min_prices({"USDC": 90, "ETH": 0})
    hosts.add_stake("10")
    info = hosts.get_host_info(env.newhost.address)
    assert info.supported_models == (env.model_a,) and info.api_url == "wss://moved.example"
    assert info.metadata.location == "eu-west" and info.stake_fab == "1010.0"
    assert info.min_prices == {"0x" + "00" * 20: 0, env.addresses["USDC"]: 90}
    assert hosts.find_hosts_for_model(env.model_a)[0].address == env.newhost.address
    assert hosts.find_hosts_for_model(env.model_a, "ETH")[-1].address == env.newhost.address

    with refused(SDKErrorCode.INSUFFICIENT_BALANCE, env.newhost, match="nothing to withdraw"):
        hosts.withdraw_earnings()
    with refused(SDKErrorCode.INVALID_ARGUMENT, env.newhost, match="unregister_host"):
        hosts.withdraw_stake()
    hosts.unregister_host()
    assert not hosts.host_supports_model(env.newhost.address, env.model_a)
    assert hosts.get_host_status().status is HostRegistryStatus.UNBONDING
    with refused(SDKErrorCode.NOT_AUTHORIZED, env.newhost, match="unbonding"):
        hosts.update_metadata(metadata)
    with refused(SDKErrorCode.INVALID_ARGUMENT, env.newhost, match="unbonding ends"):
        hosts.withdraw_stake()
    chain.mine(deltatime=7 * 24 * 3600 + 1)
    hosts.withdraw_stake()
    assert sdk.get_payment_manager().get_token_balance("FAB") == "50000.0"
    assert not hosts.get_host_status().is_registered


# --- session jobs ------------------------------------------------------------------------------


def test_client_close_then_finalize(env: SimpleNamespace, make_sdk: MakeSdk, chain: Any) -> None:
    session_key = Account.create()
    result = open_session(make_sdk, env, session_key=session_key.address)
    sid = result.session_id
    alice, outsider = make_sdk(env.alice), make_sdk(env.outsider)
    jobs = alice.get_session_job_manager()
    assert jobs.get_session(sid).session_key == session_key.address

    # Receipts by the depositor's own key are not this session's.
    with refused(SDKErrorCode.PROOF_VERIFICATION_FAILED, env.alice, match="not session"):
        jobs.complete_session_job(sid, receipt=receipt(env, env.alice, sid, 100))
    r = receipt(env, session_key, sid, 300)
    assert jobs.check_receipt(sid, r.tokens_used, r.content_hash, r.signature) is ReceiptOutcome.OK
    jobs.complete_session_job(sid, "bafy-not-stored-on-chain", receipt=r)  # requestCloseWithReceipt
    info = jobs.get_session(sid)
    assert (info.status, info.tokens_used) == (SessionStatus.CLOSING, 300)

    with refused(SDKErrorCode.INVALID_SESSION_STATE, env.alice, match="finalize it after"):
        jobs.request_close(sid)
    with refused(SDKErrorCode.INVALID_SESSION_STATE, env.outsider, match="can be finalized after"):
        outsider.get_session_job_manager().finalize(sid)
    chain.mine(deltatime=3601)
    outsider.get_session_job_manager().finalize(sid)
    assert jobs.get_session(sid).status is SessionStatus.SETTLED
    assert alice.get_payment_manager().get_deposited_balance() == "0.94"
    with refused(SDKErrorCode.INVALID_SESSION_STATE, env.outsider):
        outsider.get_session_job_manager().finalize(sid)


def test_session_job_errors(env: SimpleNamespace, make_sdk: MakeSdk) -> None:
    sid = open_session(make_sdk, env).session_id
    alice, host, outsider = make_sdk(env.alice), make_sdk(env.host1), make_sdk(env.outsider)
    client_jobs, host_jobs = alice.get_session_job_manager(), host.get_session_job_manager()

    with refused(SDKErrorCode.SESSION_NOT_FOUND, env.host1):
        host_jobs.settle(999)
    with refused(SDKErrorCode.INVALID_ARGUMENT, env.host1):
        host_jobs.get_session(0)
    with refused(SDKErrorCode.NOT_AUTHORIZED, env.alice, match="request_close"):
        client_jobs.settle(sid)
    with refused(SDKErrorCode.NOT_AUTHORIZED, env.host1, match="hosts use settle"):
        host_jobs.request_close(sid)
    with refused(SDKErrorCode.NOT_AUTHORIZED, env.outsider, match="neither"):
        outsider.get_session_job_manager().complete_session_job(sid)

    good = receipt(env, env.alice, sid, 200)
    with refused(SDKErrorCode.INVALID_PROOF, env.host1, match="65-byte"):
        host_jobs.submit_checkpoint_proof(sid, 200, "0x" + "00" * 64, good.content_hash)
    high_s = good.signature[:66] + format(2**256 - 1 - 10, "064x") + good.signature[-2:]
    with refused(SDKErrorCode.INVALID_PROOF, env.host1):
        host_jobs.submit_checkpoint_proof(sid, 200, high_s, good.content_hash)
    with refused(SDKErrorCode.PROOF_VERIFICATION_FAILED, env.host1):
        host_jobs.submit_checkpoint_proof(sid, 201, good.signature, good.content_hash)
    with refused(SDKErrorCode.PROOF_VERIFICATION_FAILED, env.host1):
        host_jobs.submit_receipt(receipt(env, env.bob, sid, 200))
    with refused(SDKErrorCode.SESSION_BUDGET_EXHAUSTED, env.host1, match="pays for 5000"):
        host_jobs.submit_receipt(receipt(env, env.alice, sid, 5001))
    host_jobs.submit_receipt(good)
    with refused(SDKErrorCode.STALE_RECEIPT, env.host1):
        host_jobs.submit_receipt(good)
    outcome = host_jobs.check_receipt(sid, good.tokens_used, good.content_hash, good.signature)
    assert outcome is ReceiptOutcome.STALE_RECEIPT
    # A host settling with an older receipt than recorded just settles as recorded.
    host_jobs.settle(sid, receipt=receipt(env, env.alice, sid, 100))
    assert host_jobs.get_session(sid).tokens_used == 200
    with refused(SDKErrorCode.INVALID_SESSION_STATE, env.host1, match="already settled"):
        host_jobs.settle(sid)
    with refused(SDKErrorCode.INVALID_SESSION_STATE, env.host1):
        host_jobs.submit_receipt(receipt(env, env.alice, sid, 300))


def test_settle_batch(env: SimpleNamespace, make_sdk: MakeSdk) -> None:
    s1 = open_session(make_sdk, env).session_id
    s2 = open_session(make_sdk, env).session_id
    s3 = open_session(make_sdk, env, host=env.host2, model_id=env.model_a).session_id
    host_jobs = make_sdk(env.host1).get_session_job_manager()
    with refused(SDKErrorCode.INVALID_ARGUMENT, env.host1):
        host_jobs.settle_batch([])
    with refused(SDKErrorCode.NOT_AUTHORIZED, env.host1, match="only hosts"):
        host_jobs.settle_batch([s3, 999])
    result = host_jobs.settle_batch([receipt(env, env.alice, s1, 400), SettleItem(s2), s3, 999])
    assert result.outcomes == (
        ReceiptOutcome.OK,
        ReceiptOutcome.OK,
        ReceiptOutcome.NOT_HOST,
        ReceiptOutcome.UNKNOWN_SESSION,
    )
    assert result.settled == 2
    assert host_jobs.get_session(s1).tokens_used == 400
    assert host_jobs.get_session(s3).status is SessionStatus.ACTIVE
    assert make_sdk().get_host_manager().get_host_earnings(env.host1.address) == "0.072"


# --- treasury ------------------------------------------------------------------------------


def test_treasury(env: SimpleNamespace, make_sdk: MakeSdk) -> None:
    treasurer, alice = make_sdk(env.treasurer), make_sdk(env.alice)
    info = make_sdk().get_treasury_manager().get_treasury_info()
    assert (info.fee_percentage, info.fee_bps, info.balance, info.total_collected) == (
        10.0,
        1000,
        "0.005",
        "0.005",
    )
    assert info.address == env.addresses["Treasury"]
    assert info.balances == {"0x" + "00" * 20: "0.0", env.addresses["USDC"]: "0.005"}
    eth = make_sdk().get_treasury_manager().get_treasury_info("ETH")
    assert (eth.balance, eth.token) == ("0.0", "0x" + "00" * 20)

    with refused(SDKErrorCode.NOT_AUTHORIZED, env.alice, match="TREASURER_ROLE"):
        alice.get_treasury_manager().withdraw_treasury_funds("USDC", "0.001")
    t = treasurer.get_treasury_manager()
    assert t.is_treasurer() and not t.is_treasurer(env.alice.address)
    with refused(SDKErrorCode.INSUFFICIENT_BALANCE, env.treasurer):
        t.withdraw_treasury_funds("USDC", "1.0")
    with refused(SDKErrorCode.INVALID_AMOUNT, env.treasurer):
        t.withdraw_treasury_funds("USDC", "0")
    with refused(SDKErrorCode.INVALID_ADDRESS, env.treasurer):
        t.withdraw_treasury_funds("USDC", "0.001", to="0xnope")
    t.withdraw_treasury_funds("USDC", "0.002", to=env.bob.address)
    assert alice.get_payment_manager().get_usdc_balance(env.bob.address) == "0.002"
    assert t.get_treasury_balance("USDC") == "0.003"
    assert t.get_treasury_info().total_collected == "0.005"
