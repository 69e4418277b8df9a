"""FabstirSDK: the entry point (the reference's FabstirSDKCore).

    sdk = FabstirSDK(SDKConfig(rpc_url="http://127.0.0.1:8545", chain_id=31337))
    sdk.authenticate("0x<private key>")
    payments = sdk.get_payment_manager()

Read-only calls (balances, models, hosts, sessions, treasury figures) work
before `authenticate`; anything that signs raises SDKError(AUTH_REQUIRED).
The chain managers are synchronous (web3 over HTTP); SessionManager,
StorageManager and WebSocketClient are asyncio-based.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address

from fabstir.chain.client import ChainClient, RetryPolicy
from fabstir.chain.transactions import TxSender, fee_policy_for_chain
from fabstir.protocol.receipts import Eip712Domain, same_address
from fabstir.sdk._base import ZERO_ADDRESS, Token, check_address, translate_errors
from fabstir.sdk.allowances import AllowanceBook
from fabstir.sdk.config import CONTRACT_NAMES, SDKConfig, canonical_contract_name
from fabstir.sdk.constants import ETH_DECIMALS
from fabstir.sdk.errors import SDKError, SDKErrorCode

if TYPE_CHECKING:
    from fabstir.chain.deployments import Deployment
    from fabstir.sdk.host import HostManager
    from fabstir.sdk.model import ModelManager
    from fabstir.sdk.payment import PaymentManager
    from fabstir.sdk.session import SessionManager
    from fabstir.sdk.session_job import SessionJobManager
    from fabstir.sdk.storage import StorageManager
    from fabstir.sdk.treasury import TreasuryManager

log = logging.getLogger("fabstir.sdk")

#: Contracts the JobMarketplace names on chain (getter per deployment name).
_MARKETPLACE_GETTERS: Final[Mapping[str, str]] = {
    "NodeRegistry": "nodeRegistry",
    "ModelRegistry": "modelRegistry",
    "ProofSystem": "proofSystem",
    "HostEarnings": "hostEarnings",
    "Treasury": "treasury",
}

_ETH_NAMES: Final = frozenset({"eth", "native", ZERO_ADDRESS.lower()})


class FabstirSDK:
    """The SDK: configuration, the signer and the managers.

    `config` is an SDKConfig, a mapping with the reference's keys
    (`{"rpcUrl": ..., "contractAddresses": {"jobMarketplace": ...}}`) or None
    (environment and defaults); keyword overrides replace single fields.
    """

    def __init__(
        self, config: SDKConfig | Mapping[str, Any] | None = None, **overrides: Any
    ) -> None:
        self.config: SDKConfig = SDKConfig.from_value(config, **overrides)
        self._lock = threading.RLock()
        self._deployment: Deployment | None = None
        self._deployment_error: str | None = None
        self._addresses: dict[str, str] = {}
        self._load_addresses()
        self._client: ChainClient | None = None
        self._chain_checked = False
        self._account: LocalAccount | None = None
        self._sender: TxSender | None = None
        #: Token pulls in flight from this signer (concurrent approvals stay exact).
        self.allowances = AllowanceBook()
        self._managers: dict[str, Any] = {}
        self._tokens: dict[str, Token] = {}
        #: JobMarketplace address -> its immutable maxDuration() (seconds).
        self._max_durations: dict[str, int] = {}
        self._configure_logging()

    # --- configuration -------------------------------------------------------

    def _configure_logging(self) -> None:
        level = self.config.logging_level()
        if level is None:
            return
        logger = logging.getLogger("fabstir")
        logger.setLevel(level)
        if level <= logging.DEBUG and not logger.handlers and not logging.getLogger().handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")
            )
            logger.addHandler(handler)

    def _load_addresses(self) -> None:
        if self.config.use_deployment_file:
            from fabstir.chain.deployments import DeploymentError, load_deployment

            try:
                self._deployment = load_deployment(
                    self.config.chain_id, self.config.deployments_dir
                )
            except (DeploymentError, OSError, ValueError, KeyError, TypeError) as exc:
                self._deployment_error = str(exc)
            else:
                for name, address in self._deployment.addresses.items():
                    try:
                        canonical = canonical_contract_name(name)
                    except SDKError:
                        if self._deployment.token(name) is not None:
                            continue  # a payment token: get_token(symbol) reads the table
                        raise
                    self._addresses[canonical] = to_checksum_address(address)
        self._addresses.update(self.config.contract_addresses)

    @property
    def deployment(self) -> Deployment | None:
        """The deployments/<chainId>.json record in use, if one was found."""
        return self._deployment

    def start_block(self) -> int:
        """First block event scans look at: config.start_block, else the deployment's first block."""
        if self.config.start_block is not None:
            return self.config.start_block
        if self._deployment is not None and "JobMarketplace" not in self.config.contract_addresses:
            return self._deployment.first_block
        return 0

    # --- chain -----------------------------------------------------------------

    @property
    def chain(self) -> ChainClient:
        """The web3 client (checked once to serve `config.chain_id`)."""
        with self._lock:
            if self._client is None:
                self._client = ChainClient(
                    self.config.resolved_rpc_url(),
                    dict(self._addresses),
                    timeout=self.config.rpc_timeout,
                    retry=RetryPolicy(attempts=self.config.rpc_retries),
                )
            client = self._client
            if not self._chain_checked:
                with translate_errors("eth_chainId"):
                    actual = client.chain_id
                if actual != self.config.chain_id:
                    raise SDKError(
                        SDKErrorCode.NETWORK_ERROR,
                        f"the RPC at {client.rpc_url} serves chain {actual}, but the SDK is "
                        f"configured for chain {self.config.chain_id}; fix rpc_url or chain_id",
                        {"expected": self.config.chain_id, "actual": actual},
                    )
                self._chain_checked = True
            return client

    def get_contract_address(self, name: str) -> str:
        """Checksummed address of a contract by deployment name (JobMarketplace,
        USDC, ...) or the reference's key (jobMarketplace, usdcToken, ...).

        Contracts not configured are discovered from the JobMarketplace on
        chain; SDKError(CONTRACT_NOT_CONFIGURED) when that is impossible.
        """
        canonical = canonical_contract_name(name)
        with self._lock:
            if canonical in self._addresses:
                return self._addresses[canonical]
            address = self._discover(canonical)
            self._addresses[canonical] = address
            if self._client is not None:
                self._client.addresses[canonical] = to_checksum_address(address)
            return address

    def _discover(self, name: str) -> str:
        where = (
            f"no deployment file ({self._deployment_error})"
            if self._deployment_error
            else "not in the deployment file"
        )
        if name == "JobMarketplace" or "JobMarketplace" not in self._addresses:
            raise SDKError(
                SDKErrorCode.CONTRACT_NOT_CONFIGURED,
                f"no address for {name} on chain {self.config.chain_id}: {where}; pass "
                f"contract_addresses={{'{name}': '0x...'}} (at least the JobMarketplace)",
                {"contract": name},
            )
        market = self.chain.contract("JobMarketplace", self._addresses["JobMarketplace"])
        if name in _MARKETPLACE_GETTERS:
            fn = getattr(market.functions, _MARKETPLACE_GETTERS[name])()
        elif name == "FABToken":
            nodes = self.chain.contract("NodeRegistry", self.get_contract_address("NodeRegistry"))
            fn = nodes.functions.fabToken()
        else:
            raise SDKError(
                SDKErrorCode.CONTRACT_NOT_CONFIGURED,
                f"no address for {name} on chain {self.config.chain_id}: {where}, and the "
                f"marketplace cannot name it; pass contract_addresses={{'{name}': '0x...'}}",
                {"contract": name},
            )
        with translate_errors(f"discover {name}"):
            address = to_checksum_address(self.chain.call(fn, f"discover {name}"))
        log.debug("discovered %s at %s from the JobMarketplace", name, address)
        return address

    def _contract(self, name: str) -> Any:
        canonical = canonical_contract_name(name)
        address = self.get_contract_address(canonical)
        client = self.chain
        client.addresses.setdefault(canonical, to_checksum_address(address))
        return client.contract(canonical)

    def contract_addresses(self) -> dict[str, str]:
        """Every contract address, discovering what is not configured."""
        return {name: self.get_contract_address(name) for name in CONTRACT_NAMES}

    def receipt_domain(self) -> Eip712Domain:
        """The EIP-712 domain receipts are signed on: this chain and its JobMarketplace."""
        return Eip712Domain(self.config.chain_id, self.get_contract_address("JobMarketplace"))

    def payment_tokens(self) -> list[Token]:
        """The tokens the marketplace accepts, in its order (the chain's coin first):
        the deployment record's token table, else read from the marketplace."""
        if self._deployment is not None and self._deployment.tokens:
            return [
                Token(to_checksum_address(t.address), t.symbol, t.decimals)
                for t in self._deployment.tokens
            ]
        market = self._contract("JobMarketplace")
        with translate_errors("JobMarketplace.tokens"):
            addresses = self.chain.call(market.functions.tokens(), "tokens")
        return [self._token(str(a)) for a in addresses]

    def _table_token(self, key: str) -> Token | None:
        """A row of the deployment's token table by symbol or address, or None."""
        for t in self._deployment.tokens if self._deployment is not None else ():
            if key in (t.symbol.lower(), t.address.lower()):
                return Token(to_checksum_address(t.address), t.symbol, t.decimals)
        return None

    def _token(self, token: str | None) -> Token:
        key = "usdc" if token is None else str(token).strip().lower()
        # The deployment's token table names every payment token: symbol, address and
        # decimals, no chain call needed.
        listed = self._table_token(key)
        if listed is not None:
            return listed
        if key in _ETH_NAMES:
            return Token(ZERO_ADDRESS, "ETH", ETH_DECIMALS)
        if key in ("usdc", "usdctoken"):
            address = self.get_contract_address("USDC")
        elif key in ("fab", "fabtoken"):
            address = self.get_contract_address("FABToken")
        else:
            address = check_address(token, "token")
        with self._lock:
            cached = self._tokens.get(address)
        if cached is not None:
            return cached
        erc20 = self.chain.contract("USDC", address)
        with translate_errors(f"read token {address}"):
            code = self.chain.w3.eth.get_code(to_checksum_address(address))
            if not code:
                raise SDKError(
                    SDKErrorCode.INVALID_ADDRESS,
                    f"token {address} has no contract code on chain {self.config.chain_id}; "
                    "use a payment token's symbol (as the deployment lists them) or a token "
                    "contract address",
                    {"token": address},
                )
            decimals = int(self.chain.call(erc20.functions.decimals(), "decimals"))
            try:
                symbol = str(self.chain.call(erc20.functions.symbol(), "symbol"))
            except Exception:  # symbol() is optional in ERC-20
                symbol = address[:10]
        resolved = Token(address, symbol, decimals)
        with self._lock:
            self._tokens[address] = resolved
        return resolved

    def _max_session_duration(self) -> int:
        """The longest session the deployed JobMarketplace accepts (`maxDuration()`,
        seconds: the unbonding period minus the settlement window, at most 30 days).
        Immutable per deployment, so read once per SDK and marketplace."""
        market = self._contract("JobMarketplace")
        address = str(market.address)
        with self._lock:
            cached = self._max_durations.get(address)
        if cached is not None:
            return cached
        with translate_errors("maxDuration"):
            longest = int(self.chain.call(market.functions.maxDuration(), "maxDuration"))
        with self._lock:
            self._max_durations[address] = longest
        return longest

    def get_token(self, token: str | None = None) -> Token:
        """A token by symbol ("USDC", "ETH", any symbol of the deployment's token
        table, "FAB") or address, with its decimals: from the table, else read from
        the token contract (ETH: 18)."""
        return self._token(token)

    # --- authentication ------------------------------------------------------

    def authenticate(self, private_key_or_signer: Any, *, signer: Any = None) -> str:
        """Use a private key (0x-hex or 32 bytes) or an eth-account LocalAccount
        for everything that signs. Returns the signer's address.

        The reference's `authenticate('signer', {signer})` form works as
        `authenticate("signer", signer=account)`. Raises SDKError:
        INVALID_SIGNER for a malformed key or an object that cannot sign,
        AUTH_FAILED when a signer's `address` is not its key's address.
        """
        source = signer if private_key_or_signer == "signer" else private_key_or_signer
        if source is None:
            raise SDKError(
                SDKErrorCode.INVALID_SIGNER, "authenticate needs a private key or a signer"
            )
        account = _account_from(source)
        with self._lock:
            self._account = account
            self._sender = None
            self._managers.pop("storage", None)
        log.info("authenticated as %s", account.address)
        return str(account.address)

    @property
    def is_authenticated(self) -> bool:
        """True once `authenticate` succeeded."""
        return self._account is not None

    @property
    def address(self) -> str | None:
        """The authenticated address, or None."""
        return None if self._account is None else str(self._account.address)

    @property
    def signer(self) -> LocalAccount | None:
        """The authenticated account (signs transactions, storage keys), or None."""
        return self._account

    def _require_sender(self, what: str = "this action") -> TxSender:
        with self._lock:
            if self._account is None:
                raise SDKError(
                    SDKErrorCode.AUTH_REQUIRED,
                    f"{what} needs a signer: call sdk.authenticate(private_key) first",
                    {"action": what},
                )
            if self._sender is None:
                self._sender = TxSender(
                    self.chain,
                    self._account.key,
                    receipt_timeout=self.config.receipt_timeout,
                    fees=fee_policy_for_chain(self.config.chain_id),
                )
            return self._sender

    def require_signer(self, what: str = "this action") -> LocalAccount:
        """The authenticated account, or SDKError(AUTH_REQUIRED)."""
        if self._account is None:
            raise SDKError(
                SDKErrorCode.AUTH_REQUIRED,
                f"{what} needs a signer: call sdk.authenticate(private_key) first",
                {"action": what},
            )
        return self._account

    # --- managers --------------------------------------------------------------

    def _manager(self, key: str, factory: Any) -> Any:
        with self._lock:
            if key not in self._managers:
                self._managers[key] = factory(self)
            return self._managers[key]

    def get_payment_manager(self) -> PaymentManager:
        """USDC/ETH session jobs, balances, deposit/withdraw of the in-contract balance."""
        from fabstir.sdk.payment import PaymentManager

        manager: PaymentManager = self._manager("payment", PaymentManager)
        return manager

    def get_model_manager(self) -> ModelManager:
        """Model ids, approval, details, validation and file-hash checks."""
        from fabstir.sdk.model import ModelManager

        manager: ModelManager = self._manager("model", ModelManager)
        return manager

    def get_host_manager(self) -> HostManager:
        """Host registration, discovery, updates, earnings (the reference's HostManagerEnhanced)."""
        from fabstir.sdk.host import HostManager

        manager: HostManager = self._manager("host", HostManager)
        return manager

    def get_host_manager_enhanced(self) -> HostManager:
        """The reference's name for `get_host_manager`."""
        return self.get_host_manager()

    def get_treasury_manager(self) -> TreasuryManager:
        """Fee figures and treasurer withdrawals."""
        from fabstir.sdk.treasury import TreasuryManager

        manager: TreasuryManager = self._manager("treasury", TreasuryManager)
        return manager

    def get_session_job_manager(self) -> SessionJobManager:
        """The direct JobMarketplace calls (create, checkpoint, close, settle, read)."""
        from fabstir.sdk.session_job import SessionJobManager

        manager: SessionJobManager = self._manager("session_job", SessionJobManager)
        return manager

    def get_session_manager(self) -> SessionManager:
        """LLM sessions: start, prompt (streaming), receipts, complete, history."""
        from fabstir.sdk.session import SessionManager

        manager: SessionManager = self._manager("session", SessionManager)
        return manager

    def get_storage_manager(self) -> StorageManager:
        """Encrypted, content-addressed storage for the authenticated wallet
        (the key is derived from a signature of this wallet's key).

        Raises SDKError(AUTH_REQUIRED) before authenticate.
        """
        from fabstir.sdk.storage import StorageManager

        account = self.require_signer("get_storage_manager")
        with self._lock:
            manager = self._managers.get("storage")
            if manager is None:
                manager = StorageManager.from_private_key(
                    account.key, self.config.storage_location()
                )
                self._managers["storage"] = manager
        result: StorageManager = manager
        return result

    def __repr__(self) -> str:
        return (
            f"FabstirSDK(chain_id={self.config.chain_id}, "
            f"address={self.address or 'unauthenticated'})"
        )


def _account_from(source: Any) -> LocalAccount:
    if isinstance(source, LocalAccount):
        return source
    if isinstance(source, str | bytes | bytearray):
        raw: Any = source
    else:
        raw = getattr(source, "key", None) or getattr(source, "private_key", None)
        if raw is None:
            raise SDKError(
                SDKErrorCode.INVALID_SIGNER,
                f"cannot sign with a {type(source).__name__}: pass a private key or an "
                "eth-account LocalAccount (Account.from_key(...))",
            )
    try:
        account: LocalAccount = Account.from_key(raw)
    except Exception:
        # Never echo the key: it may be a real one with a typo.
        raise SDKError(
            SDKErrorCode.INVALID_SIGNER, "private key must be 32 bytes (0x + 64 hex digits)"
        ) from None
    claimed = getattr(source, "address", None)
    if isinstance(claimed, str) and not same_address(claimed, account.address):
        raise SDKError(
            SDKErrorCode.AUTH_FAILED,
            f"signer claims address {claimed} but its key is {account.address}",
            {"claimed": claimed, "actual": account.address},
        )
    return account
