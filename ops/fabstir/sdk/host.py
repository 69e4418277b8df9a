"""HostManager: registering a GPU host, publishing its models and prices, finding
hosts, and withdrawing what hosts earn (NodeRegistry + HostEarnings).

The reference calls it HostManagerEnhanced; `sdk.get_host_manager_enhanced()`
is an alias. Reads work before authenticate; every write checks the caller
is (or can become) a host and that its input fits the registry's rules
before anything is signed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from fabstir.protocol.receipts import same_address
from fabstir.sdk._base import ManagerBase, check_address, check_bytes32, fail
from fabstir.sdk.errors import SDKErrorCode
from fabstir.sdk.model import normalise_sha256
from fabstir.sdk.types import (
    HostInfo,
    HostMetadata,
    HostRegistration,
    HostRegistryStatus,
    HostStatus,
    ModelSpec,
    Reputation,
)

# NodeRegistry constants.
MAX_MODELS_PER_HOST: Final = 32
MAX_URL_LENGTH: Final = 512
MAX_METADATA_LENGTH: Final = 4096
_URL_SCHEMES: Final = ("ws://", "wss://", "http://", "https://")


class HostManager(ManagerBase):
    """Host registration, discovery and earnings (the reference's HostManagerEnhanced)."""

    # --- reading ---------------------------------------------------------------------

    def _raw_host(self, address: str) -> tuple[int, int, int, HostRegistryStatus, str, str]:
        nodes = self._contract("NodeRegistry")
        stake, _registered, unbonding, status, url, metadata = self._call(
            nodes.functions.getHost(address), "getHost"
        )
        return (
            int(stake),
            0,
            int(unbonding),
            HostRegistryStatus(int(status)),
            str(url),
            str(metadata),
        )

    def _payment_tokens(self) -> list[str]:
        market = self._contract("JobMarketplace")
        return [str(t) for t in self._call(market.functions.tokens(), "tokens")]

    def get_host_info(self, host_address: str) -> HostInfo:
        """Everything the registry says about a host; SDKError(HOST_NOT_FOUND)
        if the address never registered."""
        host = check_address(host_address, "host_address")
        stake, _, unbonding, status, url, metadata = self._raw_host(host)
        if status == HostRegistryStatus.NONE:
            fail(SDKErrorCode.HOST_NOT_FOUND, f"{host} is not a registered host", host=host)
        return self._host_info(host, stake, unbonding, status, url, metadata)

    def _host_info(
        self,
        host: str,
        stake: int,
        unbonding: int,
        status: HostRegistryStatus,
        url: str,
        metadata: str,
    ) -> HostInfo:
        nodes = self._contract("NodeRegistry")
        models = tuple(
            "0x" + bytes(m).hex()
            for m in self._call(nodes.functions.hostModels(host), "hostModels")
        )
        active = bool(self._call(nodes.functions.isActive(host), "isActive"))
        settled, served, slashes = self._call(nodes.functions.reputationOf(host), "reputationOf")
        prices = {
            token: int(self._call(nodes.functions.minPriceOf(host, token), "minPriceOf"))
            for token in self._payment_tokens()
        }
        return HostInfo(
            address=host,
            metadata=HostMetadata.parse(metadata),
            supported_models=models,
            is_active=active,
            stake=stake,
            stake_fab=self._token("FAB").format(stake),
            reputation=Reputation(int(settled), int(served), int(slashes)),
            api_url=url,
            min_prices=prices,
            status=status,
            metadata_json=metadata,
            unbonding_ends_at=unbonding,
        )

    def find_hosts_for_model(self, model_id: str, token: str | None = "USDC") -> list[HostInfo]:
        """Active hosts serving `model_id`, cheapest first in `token`, then by
        reputation (fewer slashes, more sessions settled, more tokens served).
        Hosts that do not accept `token` come last.

        SDKError(MODEL_NOT_FOUND) for an unregistered model; an unapproved
        model has no hosts (empty list).
        """
        mid = check_bytes32(model_id, "model_id")
        if self._sdk.get_model_manager().get_model_details(mid) is None:
            fail(
                SDKErrorCode.MODEL_NOT_FOUND,
                f"model {mid} is not registered; see get_all_approved_models()",
                model_id=mid,
            )
        tok = self._token(token)
        nodes = self._contract("NodeRegistry")
        hosts = [str(h) for h in self._call(nodes.functions.hostsForModel(mid), "hostsForModel")]
        infos = [self.get_host_info(h) for h in hosts]
        return sorted(infos, key=lambda h: _rank(h, tok.address))

    def discover_all_active_hosts_with_models(self) -> list[HostInfo]:
        """Every active host with its models, prices and reputation."""
        nodes = self._contract("NodeRegistry")
        hosts = [str(h) for h in self._call(nodes.functions.activeHosts(), "activeHosts")]
        return [info for info in (self.get_host_info(h) for h in hosts) if info.is_active]

    def host_supports_model(self, host_address: str, model_id: str) -> bool:
        """Whether `host_address` is active, serves `model_id`, and the model is approved."""
        host = check_address(host_address, "host_address")
        mid = check_bytes32(model_id, "model_id")
        nodes = self._contract("NodeRegistry")
        return bool(self._call(nodes.functions.hostServesModel(host, mid), "hostServesModel"))

    def get_host_status(self, host_address: str | None = None) -> HostStatus:
        """Registration, models, metadata, earnings and reputation of a host
        (default: the signer). Unregistered addresses get is_registered False."""
        host = self._address_or_me(host_address, "host_address", "get_host_status")
        stake, _, unbonding, status, url, metadata = self._raw_host(host)
        info = self._host_info(host, stake, unbonding, status, url, metadata)
        earnings = self._earnings_by_token(host)
        usdc = self._token("USDC")
        return HostStatus(
            address=host,
            is_active=info.is_active,
            is_registered=status != HostRegistryStatus.NONE,
            supported_models=info.supported_models,
            metadata=info.metadata,
            earnings=usdc.format(earnings.get(usdc.address, 0)),
            earnings_by_token={t: self._token(t).format(v) for t, v in earnings.items()},
            reputation=info.reputation,
            stake=stake,
            api_url=url,
            status=status,
            unbonding_ends_at=unbonding,
        )

    def _earnings_by_token(self, host: str) -> dict[str, int]:
        ledger = self._contract("HostEarnings")
        return {
            token: int(
                self._call(ledger.functions.balanceOf(host, token), "HostEarnings.balanceOf")
            )
            for token in self._payment_tokens()
        }

    def get_host_earnings(self, host_address: str | None = None, token: str | None = "USDC") -> str:
        """What the host can withdraw now in `token`, human string."""
        host = self._address_or_me(host_address, "host_address", "get_host_earnings")
        tok = self._token(token)
        ledger = self._contract("HostEarnings")
        return tok.format(
            int(self._call(ledger.functions.balanceOf(host, tok.address), "balanceOf"))
        )

    def get_total_earned(self, host_address: str | None = None, token: str | None = "USDC") -> str:
        """Everything the host was ever credited in `token`, human string."""
        host = self._address_or_me(host_address, "host_address", "get_total_earned")
        tok = self._token(token)
        ledger = self._contract("HostEarnings")
        return tok.format(
            int(self._call(ledger.functions.totalEarned(host, tok.address), "totalEarned"))
        )

    # --- registering ---------------------------------------------------------------------

    def register_host_with_models(self, request: HostRegistration | Mapping[str, Any]) -> str:
        """Stake FAB and register as a host serving `supported_models` at
        `api_url`; returns the register tx hash (the FAB approval, when needed,
        is sent first).

        Raises SDKError before sending: AUTH_REQUIRED; INVALID_ARGUMENT
        (already registered, bad URL or metadata, no/duplicate/too many
        models, no price); MODEL_NOT_FOUND / MODEL_NOT_APPROVED /
        INVALID_MODEL_HASH for models; INVALID_AMOUNT (stake below the
        registry's minimum); INSUFFICIENT_BALANCE (not enough FAB).
        """
        what = "register_host_with_models"
        me = self._me(what)
        reg = HostRegistration.from_value(request)
        metadata = HostMetadata.from_value(reg.metadata)
        metadata_json = _check_metadata(metadata.to_json())
        url = _check_url(reg.api_url)
        models = self._check_models(reg.supported_models)
        tokens, prices = self._check_prices(
            reg.min_prices
            if reg.min_prices is not None
            else {"USDC": metadata.cost_per_token or 200}
        )
        _stake, _, _, status, _, _ = self._raw_host(me)
        if status == HostRegistryStatus.ACTIVE:
            fail(
                SDKErrorCode.INVALID_ARGUMENT,
                f"{me} is already a registered host; use update_host_models / update_api_url / "
                "update_metadata / set_min_prices",
            )
        if status == HostRegistryStatus.UNBONDING:
            fail(
                SDKErrorCode.INVALID_ARGUMENT,
                f"{me} is unbonding; withdraw_stake() after the unbonding period, then register again",
            )
        nodes = self._contract("NodeRegistry")
        fab = self._token("FAB")
        min_stake = int(self._call(nodes.functions.minStake(), "minStake"))
        stake = min_stake if reg.stake is None else fab.parse(reg.stake, "stake")
        if stake < min_stake:
            fail(
                SDKErrorCode.INVALID_AMOUNT,
                f"stake {fab.format(stake)} FAB is below the registry's minimum of "
                f"{fab.format(min_stake)} FAB",
                stake=stake,
                minimum=min_stake,
            )
        fn = nodes.functions.register(stake, url, metadata_json, models, tokens, prices)
        result, _ = self._pay_and_send(
            fn,
            "NodeRegistry.register",
            token=fab,
            spender=self._sdk.get_contract_address("NodeRegistry"),
            amount=stake,
            purpose=f"staking {fab.format(stake)} FAB",
        )
        return result.tx_hash

    def _check_models(self, specs: Sequence[ModelSpec | Mapping[str, Any] | str]) -> list[str]:
        if isinstance(specs, str | bytes) or not isinstance(specs, Sequence):
            fail(SDKErrorCode.INVALID_ARGUMENT, "supported_models must be a list of models")
        if not specs:
            fail(SDKErrorCode.INVALID_ARGUMENT, "a host must serve at least one model")
        if len(specs) > MAX_MODELS_PER_HOST:
            fail(
                SDKErrorCode.INVALID_ARGUMENT,
                f"a host may list at most {MAX_MODELS_PER_HOST} models, got {len(specs)}",
            )
        models = self._sdk.get_model_manager()
        ids: list[str] = []
        for spec in specs:
            expected_hash = ""
            if isinstance(spec, str):
                mid = check_bytes32(spec, "model_id")
            else:
                s = ModelSpec.from_value(spec)
                mid = models.get_model_id(s.huggingface_repo, s.file_name)
                expected_hash = s.model_hash
            info = models.require_approved(mid)
            if (
                expected_hash
                and normalise_sha256(expected_hash, "model_hash") != info.model_hash[2:]
            ):
                fail(
                    SDKErrorCode.INVALID_MODEL_HASH,
                    f"model_hash of {info.huggingface_repo}/{info.file_name} differs from the "
                    f"registry's sha256 {info.model_hash}; check the file you serve",
                    model_id=mid,
                )
            if mid in ids:
                fail(SDKErrorCode.INVALID_ARGUMENT, f"model {mid} is listed twice")
            ids.append(mid)
        return ids

    def _check_prices(self, prices: Mapping[str, int]) -> tuple[list[str], list[int]]:
        if not isinstance(prices, Mapping) or not prices:
            fail(
                SDKErrorCode.INVALID_ARGUMENT,
                'min_prices must map payment tokens to prices, e.g. {"USDC": 200}',
            )
        tokens: list[str] = []
        values: list[int] = []
        for key, price in prices.items():
            address = self._token(key).address
            if isinstance(price, bool) or not isinstance(price, int) or price < 0:
                fail(
                    SDKErrorCode.INVALID_AMOUNT,
                    f"minimum price for {key} must be a non-negative int (smallest units per "
                    f"token; 0 stops accepting it), got {price!r}",
                )
            if address in tokens:
                fail(SDKErrorCode.INVALID_ARGUMENT, f"token {key} is priced twice")
            tokens.append(address)
            values.append(int(price))
        return tokens, values

    # --- updating (the host itself) ---------------------------------------------------------

    def _require_active_host(self, what: str) -> str:
        me = self._me(what)
        _stake, _, unbonding, status, _, _ = self._raw_host(me)
        if status == HostRegistryStatus.NONE:
            fail(
                SDKErrorCode.NOT_AUTHORIZED,
                f"{what} is for hosts; {me} is not registered (register_host_with_models first)",
            )
        if status == HostRegistryStatus.UNBONDING:
            fail(
                SDKErrorCode.NOT_AUTHORIZED,
                f"{me} has unregistered (unbonding until {unbonding}); {what} needs an active host",
            )
        return me

    def update_host_models(self, new_models: Sequence[ModelSpec | Mapping[str, Any] | str]) -> str:
        """Replace the models this host serves; returns the tx hash."""
        self._require_active_host("update_host_models")
        ids = self._check_models(new_models)
        nodes = self._contract("NodeRegistry")
        return self._send(nodes.functions.updateModels(ids), "NodeRegistry.updateModels").tx_hash

    def update_api_url(self, api_url: str) -> str:
        """Change the endpoint clients connect to; returns the tx hash."""
        self._require_active_host("update_api_url")
        url = _check_url(api_url)
        nodes = self._contract("NodeRegistry")
        return self._send(nodes.functions.updateApiUrl(url), "NodeRegistry.updateApiUrl").tx_hash

    def update_metadata(self, metadata: HostMetadata | Mapping[str, Any] | str) -> str:
        """Replace the host's metadata JSON; returns the tx hash."""
        self._require_active_host("update_metadata")
        text = _check_metadata(HostMetadata.from_value(metadata).to_json())
        nodes = self._contract("NodeRegistry")
        return self._send(
            nodes.functions.updateMetadata(text), "NodeRegistry.updateMetadata"
        ).tx_hash

    def set_min_prices(self, prices: Mapping[str, int]) -> str:
        """Set minimum prices per payment token ("USDC"/"ETH"/address -> smallest
        units per generated token; 0 stops accepting that token)."""
        self._require_active_host("set_min_prices")
        tokens, values = self._check_prices(prices)
        nodes = self._contract("NodeRegistry")
        return self._send(
            nodes.functions.setMinPrices(tokens, values), "NodeRegistry.setMinPrices"
        ).tx_hash

    def add_stake(self, amount: str) -> str:
        """Add `amount` FAB to the stake (approving the registry first if needed)."""
        self._require_active_host("add_stake")
        fab = self._token("FAB")
        value = fab.parse(amount)
        if value == 0:
            fail(SDKErrorCode.INVALID_AMOUNT, "amount must be more than 0")
        nodes = self._contract("NodeRegistry")
        result, _ = self._pay_and_send(
            nodes.functions.addStake(value),
            "NodeRegistry.addStake",
            token=fab,
            spender=self._sdk.get_contract_address("NodeRegistry"),
            amount=value,
            purpose="add_stake",
        )
        return result.tx_hash

    # --- leaving and earnings -----------------------------------------------------------------

    def unregister_host(self) -> str:
        """Stop taking new sessions now; the stake unbonds (withdraw_stake later)."""
        self._require_active_host("unregister_host")
        nodes = self._contract("NodeRegistry")
        return self._send(nodes.functions.unregister(), "NodeRegistry.unregister").tx_hash

    def withdraw_stake(self) -> str:
        """Take the stake back after the unbonding period; returns the tx hash.

        Raises SDKError: NOT_AUTHORIZED if the signer is not a host,
        INVALID_ARGUMENT if it has not unregistered or unbonding is not over
        (the message says when it is).
        """
        what = "withdraw_stake"
        me = self._me(what)
        _stake, _, ends_at, status, _, _ = self._raw_host(me)
        if status == HostRegistryStatus.NONE:
            fail(SDKErrorCode.NOT_AUTHORIZED, f"{me} is not a host; there is no stake to withdraw")
        if status == HostRegistryStatus.ACTIVE:
            fail(
                SDKErrorCode.INVALID_ARGUMENT,
                "call unregister_host() first, then wait for unbonding",
            )
        now = self._sdk.chain.block_timestamp()
        if now < ends_at:
            fail(
                SDKErrorCode.INVALID_ARGUMENT,
                f"unbonding ends at {ends_at} (unix time, in {ends_at - now} s); withdraw after that",
                unbonding_ends_at=ends_at,
            )
        nodes = self._contract("NodeRegistry")
        return self._send(nodes.functions.withdrawStake(), "NodeRegistry.withdrawStake").tx_hash

    def withdraw_earnings(
        self, token_address: str | Sequence[str] | None = "USDC", to: str | None = None
    ) -> str:
        """Withdraw everything the host is owed in one token, or in each of a list
        of tokens (one withdrawMany transaction); returns the tx hash. With `to`
        (one token only), pay it to that address instead (HostEarnings.withdrawTo:
        for a host address that cannot receive, e.g. one the token blocklists).

        Raises SDKError before sending: NOT_AUTHORIZED when the signer is not a
        host and nothing was ever credited to it; INSUFFICIENT_BALANCE when
        nothing is owed now in the token(s); INVALID_ADDRESS for a `to` that is
        malformed, zero or the marketplace (its vault keeps no books for it);
        INVALID_ARGUMENT for `to` with a list of tokens.
        """
        what = "withdraw_earnings"
        me = self._me(what)
        recipient = None if to is None else check_address(to, "to")
        if recipient is not None:
            if not (token_address is None or isinstance(token_address, str)):
                fail(SDKErrorCode.INVALID_ARGUMENT, "withdraw_earnings to= takes one token")
            vault = self._sdk.get_contract_address("JobMarketplace")
            if int(recipient, 16) == 0 or same_address(recipient, vault):
                fail(SDKErrorCode.INVALID_ADDRESS, f"cannot withdraw earnings to {recipient}")
        specs: list[str | None]
        many = False
        if token_address is None or isinstance(token_address, str):
            specs = [token_address]
        else:
            specs, many = list(token_address), True
        if not specs:
            fail(SDKErrorCode.INVALID_ARGUMENT, "withdraw_earnings needs at least one token")
        tokens = [self._token(t) for t in specs]
        ledger = self._contract("HostEarnings")
        owed = {
            t.address: int(self._call(ledger.functions.balanceOf(me, t.address), "balanceOf"))
            for t in tokens
        }
        if not any(owed.values()):
            _stake, _, _, status, _, _ = self._raw_host(me)
            ever = sum(
                int(self._call(ledger.functions.totalEarned(me, t.address), "totalEarned"))
                for t in tokens
            )
            if status == HostRegistryStatus.NONE and ever == 0:
                fail(
                    SDKErrorCode.NOT_AUTHORIZED,
                    f"{me} is not a host and has no earnings; withdraw_earnings is for hosts "
                    "(clients use get_payment_manager().withdraw())",
                )
            fail(
                SDKErrorCode.INSUFFICIENT_BALANCE,
                f"nothing to withdraw in {', '.join(t.symbol for t in tokens)}",
            )
        if recipient is not None:
            tok = tokens[0]
            fn = ledger.functions.withdrawTo(tok.address, recipient, owed[tok.address])
            return self._send(fn, f"HostEarnings.withdrawTo {tok.symbol} {recipient}").tx_hash
        if not many:
            fn = ledger.functions.withdraw(tokens[0].address)
            return self._send(fn, f"HostEarnings.withdraw {tokens[0].symbol}").tx_hash
        payable = [address for address, value in owed.items() if value]
        return self._send(
            ledger.functions.withdrawMany(payable), "HostEarnings.withdrawMany"
        ).tx_hash


def _rank(host: HostInfo, token: str) -> tuple[int, int, int, int, int, str]:
    price = host.min_prices.get(token, 0)
    rep = host.reputation
    return (
        0 if price > 0 else 1,
        price,
        rep.slashes,
        -rep.sessions_settled,
        -rep.tokens_served,
        host.address.lower(),
    )


def _check_url(url: Any) -> str:
    if not isinstance(url, str) or not url:
        fail(
            SDKErrorCode.INVALID_ARGUMENT,
            "api_url is required: the host worker's ws(s):// or http(s):// URL",
        )
    if not url.startswith(_URL_SCHEMES):
        fail(
            SDKErrorCode.INVALID_ARGUMENT,
            f"api_url must start with ws://, wss://, http:// or https://: {url!r}",
        )
    if len(url.encode("utf-8")) > MAX_URL_LENGTH:
        fail(SDKErrorCode.INVALID_ARGUMENT, f"api_url is longer than {MAX_URL_LENGTH} bytes")
    return url


def _check_metadata(text: str) -> str:
    if len(text.encode("utf-8")) > MAX_METADATA_LENGTH:
        fail(
            SDKErrorCode.INVALID_ARGUMENT,
            f"host metadata JSON is longer than {MAX_METADATA_LENGTH} bytes; shorten it",
        )
    return text


__all__ = ["HostManager"]
