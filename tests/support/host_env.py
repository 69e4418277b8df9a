"""The host suite's chain environment: the deployed system, its actors and the
standard session terms, and `open_session` to start a session on chain."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from support import anvil
from support.accounts import test_key
from web3 import Web3

from fabstir.protocol.receipts import Eip712Domain
from fabstir.sdk.config import SDKConfig
from fabstir.sdk.sdk import FabstirSDK

USDC_UNIT = 10**6

#: ape test account of `HostEnv.client` (funded and with a marketplace deposit).
CLIENT_ACCOUNT = 8


FEE_BPS = 1000


PRICE = 200  # 0.0002 USDC per token


DEPOSIT = 1_000_000  # 1 USDC -> 5000 tokens


PROOF_INTERVAL = 50


HOST_MIN_PRICE = 100


OTHER_MODEL = ("CohereForAI/TinyVicuna-1B-32k-GGUF", "tiny-vicuna-1b.q4_k_m.gguf")


@dataclass
class Opened:
    session_id: int
    key: LocalAccount  # the session key (signs receipts)
    depositor: Any
    deposit: int
    price: int
    proof_interval: int


@dataclass
class HostEnv:
    system: Any
    deployer: Any
    curator: Any
    host: Any
    host_key: LocalAccount
    other_host: Any
    client: Any
    client2: Any
    model_id: bytes
    other_model_id: bytes
    rpc_url: str
    addresses: dict[str, str]
    chain: Any
    #: The root conftest's ``open_session`` factory (bound to the same system).
    opener: Callable[..., int]
    _keys: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def mk(self) -> Any:
        return self.system.marketplace

    @property
    def usdc(self) -> Any:
        return self.system.usdc

    def new_key(self) -> LocalAccount:
        return Account.from_key(keccak(text=f"host-suite session key {next(self._keys)}"))

    def open_session(
        self,
        *,
        deposit: int = DEPOSIT,
        price: int = PRICE,
        proof_interval: int = PROOF_INTERVAL,
        duration: int = 3600,
        depositor: Any = None,
        host: Any = None,
        model_id: bytes | None = None,
        key: LocalAccount | None = None,
    ) -> Opened:
        depositor = depositor or self.client
        key = key or self.new_key()
        sid = self.opener(
            depositor,
            host or self.host,
            model_id or self.model_id,
            deposit,
            price,
            duration=duration,
            proof_interval=proof_interval,
            signer=key.address,
        )
        return Opened(sid, key, depositor, deposit, price, proof_interval)

    @property
    def domain(self) -> Eip712Domain:
        return Eip712Domain(int(self.chain.chain_id), self.mk.address)

    def session(self, session_id: int) -> Any:
        return self.mk.getSession(session_id)

    def earnings(self) -> int:
        return int(self.system.host_earnings.balanceOf(self.host, self.usdc))

    def fees(self) -> int:
        return int(self.system.treasury.balanceOf(self.usdc))

    def balance(self, who: Any) -> int:
        return int(self.mk.balanceOf(who, self.usdc))

    def client_sdk(
        self, account: int = CLIENT_ACCOUNT, storage: Path | None = None, **config: Any
    ) -> FabstirSDK:
        """A user's FabstirSDK on this chain (the addresses given, no deployment file),
        authenticated as ape test account `account`; `config` overrides SDKConfig
        fields (e.g. `rpc_url` through a proxy, `rpc_retries`)."""
        settings: dict[str, Any] = dict(
            rpc_url=self.rpc_url,
            chain_id=int(self.chain.chain_id),
            contract_addresses=self.addresses,
            use_deployment_file=False,
            storage_dir=storage,
        )
        settings.update(config)
        sdk = FabstirSDK(SDKConfig(**settings))
        sdk.authenticate(test_key(account))
        return sdk

    def rpc(self, method: str, *params: Any) -> Any:
        """A raw JSON-RPC call to the test anvil (evm_mine, anvil_reorg, ...)."""
        return anvil.rpc(self.rpc_url, method, *params)

    def host_nonce(self, tag: str = "latest") -> int:
        """The host's transaction count at `tag` ("pending" counts unmined ones)."""
        w3 = Web3(Web3.HTTPProvider(self.rpc_url))
        return int(w3.eth.get_transaction_count(self.host.address, tag))  # type: ignore[arg-type]


def addresses_file(path: Path, addresses: dict[str, str]) -> Path:
    path.write_text(json.dumps(addresses))
    return path
