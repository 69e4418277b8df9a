"""Publishing the contracts' sources to a block explorer (Base Sepolia's basescan,
any Etherscan-compatible API): the standard-JSON verification payload per contract.

The payload is exactly what ape-solidity compiled (same source unit names, same
settings), so the explorer's compile reproduces the deployed bytecode, metadata
hash included. Building it needs the ape project (the deploy has it anyway); the
live submission is one HTTP POST per contract (`publish`), with the API key taken
from a file or the environment, never the command line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Etherscan-compatible API of Base Sepolia (basescan).
BASE_SEPOLIA_API = "https://api-sepolia.basescan.org/api"
ENV_API_KEY = "FABSTIR_EXPLORER_API_KEY"
ENV_API_KEY_FILE = "FABSTIR_EXPLORER_API_KEY_FILE"


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
    """$FABSTIR_EXPLORER_API_KEY_FILE (a file holding the key) or $FABSTIR_EXPLORER_API_KEY."""
    path = os.environ.get(ENV_API_KEY_FILE)
    if path:
        return Path(path).read_text().strip()
    key = os.environ.get(ENV_API_KEY, "").strip()
    if not key:
        raise SourceVerifyError(f"set ${ENV_API_KEY_FILE} (a file with the key) or ${ENV_API_KEY}")
    return key


def publish(payload: dict[str, str], api_url: str = BASE_SEPOLIA_API, timeout: float = 30.0) -> str:
    """Submit one payload; returns the explorer's GUID to poll (`checkverifystatus`)."""
    import requests

    reply = requests.post(api_url, data=payload, timeout=timeout).json()
    if str(reply.get("status")) != "1":
        raise SourceVerifyError(
            f"{payload['contractname']}: explorer refused: {reply.get('result')}"
        )
    return str(reply["result"])
