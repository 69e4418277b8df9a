"""The explorer verification payload, checked offline: for every deployed contract the
standard-JSON input compiles (solc, as the explorer will) to exactly the creation code
that was deployed, and the constructor arguments are the rest of the deploying input."""

from __future__ import annotations

from typing import Any

import pytest
import solcx
from web3 import Web3

from fabstir.chain.sourceverify import (
    ENV_API_KEY,
    ENV_API_KEY_FILE,
    SourceVerifyError,
    api_key_from_environment,
    constructor_arguments,
    standard_input,
    verification_payload,
)


def test_payload_reproduces_every_deployed_contract(
    project: Any, chain: Any, deployed: Any
) -> None:
    dep = deployed.deployment
    w3 = Web3(Web3.HTTPProvider(chain.provider.uri))
    checked = 0
    for name, record in dep.contracts.items():
        if record.tx_hash is None:
            continue
        contract = record.contract_type or name
        std = standard_input(project, contract)
        version = std.compiler_version.removeprefix("v").split("+")[0]
        out = solcx.compile_standard(std.input, solc_version=version)
        source, cname = std.fully_qualified_name.rsplit(":", 1)
        compiled = bytes.fromhex(out["contracts"][source][cname]["evm"]["bytecode"]["object"])
        deployed_input = bytes(w3.eth.get_transaction(record.tx_hash)["input"])
        args = constructor_arguments(deployed_input, compiled)  # raises on any difference
        payload = verification_payload(std, record.address, args, "KEY")
        assert payload["contractname"].endswith(f".sol:{contract}")
        assert payload["codeformat"] == "solidity-standard-json-input"
        assert payload["compilerversion"].startswith("v0.8.")
        assert payload["constructorArguements"] == args.hex()
        checked += 1
    assert checked >= 6  # the registries, ledgers, proof system and marketplace at least


def test_bad_inputs_are_refused(
    project: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    with pytest.raises(SourceVerifyError, match="no compiled contract"):
        standard_input(project, "NoSuchContract")
    with pytest.raises(SourceVerifyError, match="does not start"):
        constructor_arguments(b"\x01\x02", b"\x03")
    monkeypatch.delenv(ENV_API_KEY, raising=False)
    monkeypatch.delenv(ENV_API_KEY_FILE, raising=False)
    with pytest.raises(SourceVerifyError, match="set"):
        api_key_from_environment()
    key_file = tmp_path / "key"
    key_file.write_text("SECRET\n")
    monkeypatch.setenv(ENV_API_KEY_FILE, str(key_file))
    assert api_key_from_environment() == "SECRET"
