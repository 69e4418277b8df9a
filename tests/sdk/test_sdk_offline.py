"""The SDK's configuration, types, error mapping and environment detection: no chain.

Runs under plain pytest too: python -m pytest -p no:ape_test tests/sdk/test_sdk_offline.py
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from fabstir.chain.client import ChainError
from fabstir.chain.deployments import ContractRecord, Deployment, write_deployment
from fabstir.sdk._base import chain_error_to_sdk, check_address
from fabstir.sdk.config import SDKConfig, canonical_contract_name
from fabstir.sdk.environment import EnvironmentDetector
from fabstir.sdk.errors import SDKError, SDKErrorCode
from fabstir.sdk.sdk import FabstirSDK
from fabstir.sdk.types import (
    HostMetadata,
    HostRegistration,
    ModelSpec,
    Reputation,
    SessionConfig,
    SessionInfo,
    SessionStatus,
)

KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
ADDR = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
MARKET = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
USDC_ADDR = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("FABSTIR_RPC_URL", "FABSTIR_CHAIN_ID", "FABSTIR_STORAGE_URL", "FABSTIR_SDK_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    # No test may pick up the repository's deployments/ by accident.
    monkeypatch.setenv("FABSTIR_DEPLOYMENTS_DIR", str(tmp_path / "no-deployments"))


def code_of(call: Any) -> SDKErrorCode:
    with pytest.raises(SDKError) as info:
        call()
    return info.value.code


# --- config ------------------------------------------------------------------------------


def test_config_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    config = SDKConfig()
    assert config.chain_id == 84532
    assert config.resolved_rpc_url() == "https://sepolia.base.org"
    assert config.logging_level() is None and config.storage_location() is None
    assert SDKConfig(chain_id=31337).resolved_rpc_url() == "http://127.0.0.1:8545"
    assert code_of(lambda: SDKConfig(chain_id=5).resolved_rpc_url()) is SDKErrorCode.NETWORK_ERROR

    monkeypatch.setenv("FABSTIR_RPC_URL", "http://rpc.example:8545")
    monkeypatch.setenv("FABSTIR_CHAIN_ID", "31337")
    monkeypatch.setenv("FABSTIR_STORAGE_URL", "http://127.0.0.1:5001")
    monkeypatch.setenv("FABSTIR_SDK_DEBUG", "true")
    env = SDKConfig.from_env()
    assert (env.rpc_url, env.chain_id, env.storage_url, env.debug) == (
        "http://rpc.example:8545",
        31337,
        "http://127.0.0.1:5001",
        True,
    )
    assert SDKConfig().logging_level() == logging.DEBUG  # env debug applies to any config
    monkeypatch.setenv("FABSTIR_CHAIN_ID", "base")
    assert code_of(SDKConfig.from_env) is SDKErrorCode.INVALID_ARGUMENT


def test_config_from_reference_mapping(tmp_path: Path) -> None:
    config = SDKConfig.from_value(
        {
            "rpcUrl": "http://127.0.0.1:8545",
            "chainId": 31337,
            "contractAddresses": {"jobMarketplace": MARKET.lower(), "usdcToken": USDC_ADDR},
            "s5Config": {"portalUrl": "http://127.0.0.1:5001", "seedPhrase": "ignored"},
            "logLevel": "verbose",
        }
    )
    assert config.contract_addresses == {"JobMarketplace": MARKET, "USDC": USDC_ADDR}
    assert config.storage_url == "http://127.0.0.1:5001"
    assert config.logging_level() == logging.DEBUG
    assert SDKConfig(storage_dir=tmp_path).storage_location() == tmp_path
    assert SDKConfig(log_level="warn").logging_level() == logging.WARNING
    assert SDKConfig(log_level=15).logging_level() == 15
    assert SDKConfig.from_value(config, chain_id=1).chain_id == 1

    bad: list[tuple[SDKErrorCode, Any]] = [
        (SDKErrorCode.INVALID_ARGUMENT, lambda: SDKConfig.from_value({"rpcURL_typo": 1})),
        (SDKErrorCode.INVALID_ARGUMENT, lambda: SDKConfig(rpc_url="ws://x")),
        (SDKErrorCode.INVALID_ARGUMENT, lambda: SDKConfig(chain_id=0)),
        (SDKErrorCode.INVALID_ARGUMENT, lambda: SDKConfig(log_level="loud")),
        (SDKErrorCode.INVALID_ARGUMENT, lambda: SDKConfig(rpc_retries=0)),
        (SDKErrorCode.INVALID_ARGUMENT, lambda: SDKConfig(contract_addresses={"Oracle": MARKET})),
        (SDKErrorCode.INVALID_ADDRESS, lambda: SDKConfig(contract_addresses={"usdc": "0x12"})),
        (
            SDKErrorCode.INVALID_ADDRESS,
            lambda: SDKConfig(contract_addresses={"usdc": USDC_ADDR.replace("e", "E", 1)}),
        ),
        (SDKErrorCode.INVALID_ARGUMENT, lambda: SDKConfig.from_value(42)),  # type: ignore[arg-type]
    ]
    for code, call in bad:
        assert code_of(call) is code
    assert canonical_contract_name("host_earnings") == "HostEarnings"
    assert canonical_contract_name("fabToken") == "FABToken"


def test_sdk_without_a_chain(tmp_path: Path) -> None:
    sdk = FabstirSDK(chain_id=31337, contract_addresses={"jobMarketplace": MARKET})
    assert sdk.get_contract_address("JobMarketplace") == MARKET
    assert sdk.deployment is None and sdk.start_block() == 0
    assert not sdk.is_authenticated
    assert code_of(sdk.get_storage_manager) is SDKErrorCode.AUTH_REQUIRED
    assert code_of(lambda: sdk.require_signer("x")) is SDKErrorCode.AUTH_REQUIRED
    assert sdk.get_host_manager_enhanced() is sdk.get_host_manager()
    assert sdk.get_payment_manager() is sdk.get_payment_manager()
    assert sdk.authenticate(KEY) == ADDR and sdk.address == ADDR
    assert repr(sdk) == f"FabstirSDK(chain_id=31337, address={ADDR})"
    storage = FabstirSDK(
        chain_id=31337, storage_dir=tmp_path, contract_addresses={"jobMarketplace": MARKET}
    )
    storage.authenticate(Account.from_key(KEY))
    assert storage.get_storage_manager().owner == ADDR
    domain = sdk.receipt_domain()
    assert (domain.chain_id, domain.verifying_contract) == (31337, MARKET)

    from fabstir.sdk.session import SessionManager

    assert isinstance(sdk.get_session_manager(), SessionManager)
    assert sdk.get_session_manager() is sdk.get_session_manager()


def test_sdk_reads_the_deployment_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = {
        "JobMarketplace": ContractRecord(address=MARKET, block=7),
        "USDC": ContractRecord(address=USDC_ADDR, block=3),
    }
    write_deployment(Deployment(31337, "local", ADDR, records, {}, {}), tmp_path)
    sdk = FabstirSDK(chain_id=31337, deployments_dir=tmp_path)
    assert sdk.get_contract_address("usdcToken") == USDC_ADDR
    assert sdk.start_block() == 3
    monkeypatch.setenv("FABSTIR_DEPLOYMENTS_DIR", str(tmp_path))
    assert FabstirSDK(chain_id=31337).get_contract_address("jobMarketplace") == MARKET
    # An explicit marketplace overrides the file and scans start at 0.
    other = "0x" + "12" * 20
    sdk = FabstirSDK(chain_id=31337, contract_addresses={"JobMarketplace": other})
    assert sdk.get_contract_address("JobMarketplace") == other and sdk.start_block() == 0
    # No file for the chain: a clear error naming what to pass.
    with pytest.raises(SDKError) as info:
        FabstirSDK(chain_id=84532).get_contract_address("JobMarketplace")
    assert info.value.code is SDKErrorCode.CONTRACT_NOT_CONFIGURED
    assert "no deployment file" in info.value.message


def test_debug_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    logger = logging.getLogger("fabstir")
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setenv("FABSTIR_SDK_DEBUG", "1")
    FabstirSDK(chain_id=31337)
    assert logger.level == logging.DEBUG


# --- types -------------------------------------------------------------------------------


def test_session_config() -> None:
    config = SessionConfig.from_value(
        {"depositAmount": "2.5", "pricePerToken": 300, "duration": 60, "proofInterval": 10}
    )
    assert config == SessionConfig("2.5", 300, 60, 10)
    assert SessionConfig.from_value(config, deposit_amount="3") == SessionConfig("3", 300, 60, 10)
    assert SessionConfig.from_value({}) == SessionConfig()
    assert SessionConfig().deposit_amount == "1.0" and SessionConfig().proof_interval == 100
    assert code_of(lambda: SessionConfig(deposit_amount=1)) is SDKErrorCode.INVALID_AMOUNT  # type: ignore[arg-type]
    assert code_of(lambda: SessionConfig(price_per_token=-1)) is SDKErrorCode.INVALID_AMOUNT
    assert code_of(lambda: SessionConfig(price_per_token=True)) is SDKErrorCode.INVALID_AMOUNT
    assert code_of(lambda: SessionConfig(duration=0)) is SDKErrorCode.INVALID_ARGUMENT
    assert code_of(lambda: SessionConfig.from_value([1])) is SDKErrorCode.INVALID_ARGUMENT  # type: ignore[arg-type]


def test_host_types() -> None:
    meta = HostMetadata.from_value(
        {
            "hardware": {"gpu": "RTX 4090", "vram": 24, "ram": 64},
            "capabilities": ["streaming", "batch"],
            "location": "us-east",
            "maxConcurrent": 5,
            "costPerToken": 150,
            "operator": "me",
        }
    )
    assert meta.hardware.vram == 24 and meta.extra == {"operator": "me"}
    assert HostMetadata.from_value(meta.to_json()) == meta
    assert '"maxConcurrent":5' in meta.to_json()
    assert HostMetadata.parse('{"hardware":"1x H100","location":"eu"}').location == "eu"
    assert HostMetadata.parse("not json").extra == {"raw": "not json"}
    assert HostMetadata.parse("[1]").extra == {"raw": "[1]"}
    for bad in ({"capabilities": "x"}, {"hardware": 1}, {"maxConcurrent": -1}, "[", 5):
        assert code_of(lambda b=bad: HostMetadata.from_value(b)) is SDKErrorCode.INVALID_ARGUMENT

    reg = HostRegistration.from_value(
        {"metadata": meta, "supportedModels": ["0x" + "00" * 32], "apiUrl": "wss://h"}
    )
    assert reg.api_url == "wss://h" and reg.stake is None
    assert (
        code_of(lambda: HostRegistration.from_value({"metadata": {}}))
        is SDKErrorCode.INVALID_ARGUMENT
    )
    spec = ModelSpec.from_value({"huggingfaceRepo": "a/b", "fileName": "c", "modelHash": "0x"})
    assert spec == ModelSpec("a/b", "c", "0x")
    assert (
        code_of(lambda: ModelSpec.from_value({"huggingfaceRepo": 1}))
        is SDKErrorCode.INVALID_ARGUMENT
    )
    assert Reputation(5, 100, 1).score == -5


def test_session_info_properties() -> None:
    info = SessionInfo(
        3, ADDR, MARKET, ADDR, USDC_ADDR, "0x" + "00" * 32, 200, 10**6, "1.0", 5000, 100, 0, 0, 100,
        SessionStatus.CLOSING,
    )  # fmt: skip
    assert (info.job_id, info.client, info.provider) == (3, ADDR, MARKET)
    assert info.is_open and info.tokens_remaining == 4900


def test_chain_errors_map_to_codes() -> None:
    cases = {
        "InsufficientBalance": SDKErrorCode.INSUFFICIENT_BALANCE,
        "UnknownSession": SDKErrorCode.SESSION_NOT_FOUND,
        "PriceBelowHostMinimum": SDKErrorCode.PRICE_TOO_LOW,
        "ModelNotApproved": SDKErrorCode.MODEL_NOT_APPROVED,
        "NotSessionHost": SDKErrorCode.NOT_AUTHORIZED,
        "InvalidReceiptSigner": SDKErrorCode.PROOF_VERIFICATION_FAILED,
        "SomethingNew": SDKErrorCode.TRANSACTION_FAILED,
    }
    for name, code in cases.items():
        err = chain_error_to_sdk(ChainError(name, (1, b"\x01")), "act")
        assert err.code is code and name in err.message
        assert err.details == {"error": name, "args": [1, "0x01"], "action": "act"}
    with pytest.raises(SDKError, match="checksum"):
        check_address(ADDR.replace("f", "F", 1))


# --- environment -------------------------------------------------------------------------


def test_environment_detector(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    caps = EnvironmentDetector().get_capabilities()
    assert caps.environment == "python" and not caps.has_p2p and caps.has_file_system
    assert caps.has_websockets
    assert caps.has_llama_cpp == (importlib.util.find_spec("llama_cpp") is not None)
    if caps.has_llama_cpp:
        assert caps.llama_cpp_version
    assert caps.can_host == (caps.has_llama_cpp and caps.has_websockets)
    assert caps.to_dict()["python_version"] == caps.python_version
    assert not EnvironmentDetector().is_importable("no_such_module_xyz")

    # A stand-in nvidia-smi on PATH: its output is what the detector reports.
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3'\necho 'NVIDIA H100 80GB HBM3'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    detector = EnvironmentDetector()
    assert detector.has_gpu() and detector.gpus() == ("NVIDIA H100 80GB HBM3",) * 2
    fake.write_text("#!/bin/sh\nexit 9\n")
    assert not EnvironmentDetector().has_gpu()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert EnvironmentDetector().gpus() == ()
