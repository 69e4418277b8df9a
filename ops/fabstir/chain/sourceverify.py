"""Publishing the contracts' sources to a block explorer (Base Sepolia's basescan,
any Etherscan-compatible API): the standard-JSON verification payload per contract,
and the live submission.

The payload is exactly what ape-solidity compiled (same source unit names, same
settings), so the explorer's compile reproduces the deployed bytecode, metadata
hash included. Building it needs the ape project (the deploy has it anyway). The
constructor arguments are the ABI-encoded bytes that follow the creation code in
the deploying transaction the deployment record names (its `tx_hash`), so they
are what the chain actually ran, not a re-encoding that could drift.

The live step (`ExplorerClient.verify`): POST `module=contract
action=verifysourcecode`, which answers a GUID, then poll `action=checkverifystatus`
with it until "Pass - Verified" (or "Already Verified"); "Pending in queue" means
poll again. HTTP 429 (honouring Retry-After), 5xx, transport errors and the
explorer's own "rate limit" answers are retried with backoff; anything else the
explorer refuses is one SourceVerifyError naming the contract. The API key comes
from a file or the environment, never the command line, and never appears in an
error message.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Final

import httpx

#: Etherscan-compatible API of Base Sepolia (basescan).
BASE_SEPOLIA_API = "https://api-sepolia.basescan.org/api"
ENV_API_KEY = "FABSTIR_EXPLORER_API_KEY"
ENV_API_KEY_FILE = "FABSTIR_EXPLORER_API_KEY_FILE"
#: The same key under Etherscan's name (either variable works; the file wins).
ENV_ETHERSCAN_API_KEY = "FABSTIR_ETHERSCAN_API_KEY"

#: checkverifystatus answers (Etherscan's wording, which basescan shares).
PENDING: Final = "Pending in queue"
VERIFIED: Final = "Pass - Verified"
ALREADY_VERIFIED: Final = "Already Verified"


class SourceVerifyError(Exception):
    """The payload cannot be built (unknown contract, no compiled artifact) or the
    explorer refused it."""


@dataclass(frozen=True)
class StandardInput:
    contract: str
    #: "contracts/JobMarketplace.sol:JobMarketplace", as explorers want it.
    fully_qualified_name: str
    #: "v0.8.28+commit.7893614a"
    compiler_version: str
    #: the solc standard-JSON input (language, sources with content, settings)
    input: dict[str, Any]


def standard_input(project: Any, contract: str) -> StandardInput:
    """The standard-JSON input ape-solidity compiles `contract` with."""
    import ape

    try:
        contract_type = project.contracts[contract]
    except KeyError:
        raise SourceVerifyError(f"no compiled contract {contract!r} in the project") from None
    source_id = contract_type.source_id
    compiler = ape.compilers.registered_compilers[".sol"]
    by_version = compiler.get_standard_input_json([project.path / source_id], project=project)
    if len(by_version) != 1:
        raise SourceVerifyError(
            f"{contract}: expected one compiler version, got {list(by_version)}"
        )
    version, data = next(iter(by_version.items()))
    sources = {
        name: {"content": entry["content"]}
        for name, entry in data["sources"].items()
        if "content" in entry
    }
    if len(sources) != len(data["sources"]):
        raise SourceVerifyError(f"{contract}: a source has no content to publish")
    settings = dict(data["settings"])
    # Explorers compile for bytecode and metadata only; the selection does not change either.
    settings["outputSelection"] = {"*": {"*": ["abi", "evm.bytecode.object", "metadata"]}}
    return StandardInput(
        contract=contract,
        fully_qualified_name=f"{source_id}:{contract}",
        compiler_version=f"v{version}",
        input={
            "language": data.get("language", "Solidity"),
            "sources": sources,
            "settings": settings,
        },
    )


def constructor_arguments(creation_input: bytes, deployment_bytecode: bytes) -> bytes:
    """The ABI-encoded constructor arguments: what follows the creation code in the
    deploying transaction's input."""
    if not creation_input.startswith(deployment_bytecode):
        raise SourceVerifyError("the deploying transaction does not start with the compiled code")
    return creation_input[len(deployment_bytecode) :]


def verification_payload(
    std: StandardInput, address: str, constructor_args: bytes, api_key: str
) -> dict[str, str]:
    """The form an Etherscan-compatible `verifysourcecode` call takes."""
    return {
        "apikey": api_key,
        "module": "contract",
        "action": "verifysourcecode",
        "contractaddress": address,
        "sourceCode": json.dumps(std.input, separators=(",", ":")),
        "codeformat": "solidity-standard-json-input",
        "contractname": std.fully_qualified_name,
        "compilerversion": std.compiler_version,
        # Etherscan's own spelling of the field.
        "constructorArguements": constructor_args.hex(),
    }


def api_key_from_environment() -> str:
    """$FABSTIR_EXPLORER_API_KEY_FILE (a file holding the key), else
    $FABSTIR_ETHERSCAN_API_KEY or $FABSTIR_EXPLORER_API_KEY."""
    path = os.environ.get(ENV_API_KEY_FILE)
    if path:
        key = Path(path).expanduser().read_text().strip()
        if not key:
            raise SourceVerifyError(f"${ENV_API_KEY_FILE} ({path}) is empty")
        return key
    key = (os.environ.get(ENV_ETHERSCAN_API_KEY) or os.environ.get(ENV_API_KEY, "")).strip()
    if not key:
        raise SourceVerifyError(
            f"set ${ENV_API_KEY_FILE} (a file with the key), ${ENV_ETHERSCAN_API_KEY} "
            f"or ${ENV_API_KEY}"
        )
    return key


@dataclass(frozen=True)
class Published:
    """One contract's outcome: `status` is VERIFIED or ALREADY_VERIFIED."""

    contract: str
    address: str
    status: str
    #: None when the explorer had the source already at submission.
    guid: str | None


class _Retry(Exception):
    """An answer worth asking again (throttled, server trouble), after `delay` s."""

    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.delay = delay


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date); None if absent."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _is_rate_limit(result: object) -> bool:
    # Etherscan answers its per-second limit with HTTP 200, status 0 and this text.
    return "rate limit" in str(result).lower()


class ExplorerClient:
    """An Etherscan-compatible contract-verification API (basescan for Base Sepolia).

    `attempts` bounds the tries of one request (429/5xx/transport errors/rate-limit
    answers); waits grow from `base_delay` to `max_delay`, or follow Retry-After up to
    `max_retry_after`. `poll_interval`/`poll_timeout` pace `checkverifystatus`.
    """

    def __init__(
        self,
        api_url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        attempts: int = 6,
        base_delay: float = 1.0,
        max_delay: float = 30.0,
        max_retry_after: float = 120.0,
        poll_interval: float = 5.0,
        poll_timeout: float = 600.0,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not api_key:
            raise SourceVerifyError("the explorer API key is empty")
        self.api_url = api_url
        self.attempts = max(1, attempts)
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_retry_after = max_retry_after
        self.poll_interval = poll_interval
        self.poll_timeout = poll_timeout
        self._key = api_key
        self._sleep = sleep
        self._http = httpx.Client(timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ExplorerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the API ---------------------------------------------------------------

    def submit(self, payload: dict[str, str]) -> str | None:
        """POST one `verifysourcecode` payload; the GUID to poll, or None when the
        explorer says the source is verified already."""
        name = payload.get("contractname", "?")
        form = {**payload, "apikey": self._key}
        reply = self._request(
            name, "verifysourcecode", lambda: self._http.post(self.api_url, data=form)
        )
        result = str(reply.get("result", ""))
        if str(reply.get("status")) == "1" and result:
            return result
        if "already verified" in result.lower():
            return None
        raise SourceVerifyError(f"{name}: the explorer refused the submission: {result or reply}")

    def check(self, guid: str, name: str = "?") -> str:
        """One `checkverifystatus` answer for `guid` (e.g. PENDING, VERIFIED)."""
        params = {
            "apikey": self._key,
            "module": "contract",
            "action": "checkverifystatus",
            "guid": guid,
        }
        reply = self._request(
            name, "checkverifystatus", lambda: self._http.get(self.api_url, params=params)
        )
        return str(reply.get("result", ""))

    def verify(self, payload: dict[str, str]) -> Published:
        """Submit `payload` and poll until the explorer has verified it."""
        name = payload.get("contractname", "?")
        address = payload.get("contractaddress", "?")
        guid = self.submit(payload)
        if guid is None:
            return Published(name, address, ALREADY_VERIFIED, None)
        deadline = time.monotonic() + self.poll_timeout
        while True:
            answer = self.check(guid, name)
            lowered = answer.lower()
            if lowered.startswith("pass"):
                return Published(name, address, VERIFIED, guid)
            if "already verified" in lowered:
                return Published(name, address, ALREADY_VERIFIED, guid)
            if not lowered.startswith("pending"):
                raise SourceVerifyError(f"{name}: verification failed: {answer} (guid {guid})")
            if time.monotonic() >= deadline:
                raise SourceVerifyError(
                    f"{name}: still '{answer}' after {self.poll_timeout:g} s (guid {guid}); "
                    "check the address page on the explorer, or run again"
                )
            self._sleep(self.poll_interval)

    # --- plumbing ----------------------------------------------------------------

    def _request(self, name: str, action: str, call: Callable[[], httpx.Response]) -> Any:
        last = "no answer"
        for attempt in range(1, self.attempts + 1):
            try:
                return self._answer(call())
            except _Retry as exc:
                last = str(exc)
                delay = exc.delay
            except httpx.TransportError as exc:
                # The exception's text may carry the URL and so the key: name the kind only.
                last, delay = f"{type(exc).__name__} (no answer)", None
            if attempt == self.attempts:
                break
            if delay is None:
                delay = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
            self._sleep(min(delay, self.max_retry_after))
        raise SourceVerifyError(
            f"{name}: {action}: the explorer API kept failing ({self.attempts} tries): {last}"
        )

    @staticmethod
    def _answer(response: httpx.Response) -> Any:
        code = response.status_code
        if code == 429 or code >= 500:
            raise _Retry(f"HTTP {code}", _retry_after(response.headers.get("Retry-After")))
        if code != 200:
            raise SourceVerifyError(f"the explorer API answered HTTP {code}")
        try:
            reply = response.json()
        except ValueError:
            raise _Retry("an answer that is not JSON") from None
        if not isinstance(reply, dict):
            raise _Retry("an answer that is not a JSON object")
        if str(reply.get("status")) != "1" and _is_rate_limit(reply.get("result")):
            raise _Retry(f"rate limited: {reply.get('result')}")
        return reply


def build_payloads(
    project: Any, deployment: Any, web3: Any, api_key: str
) -> Iterator[tuple[str, dict[str, str]]]:
    """(record name, verifysourcecode payload) for every contract this deployment
    deployed (configured tokens, e.g. Circle's USDC, are not ours to publish)."""
    for name, record in deployment.contracts.items():
        if record.tx_hash is None or record.external:
            continue
        std = standard_input(project, record.contract_type or name)
        compiled = project.contracts[std.contract].deployment_bytecode.to_bytes()
        args = constructor_arguments(
            bytes(web3.eth.get_transaction(record.tx_hash)["input"]), compiled
        )
        yield name, verification_payload(std, record.address, args, api_key)
