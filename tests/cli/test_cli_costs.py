"""The cost shown before the CLI sends (operator commands): L2 gas, Base's L1 data
fee and the total, in the live-network question and in --json.

Base is an 84532 anvil here whose GasPriceOracle predeploy holds the STAND-IN
contract (contracts/test/GasPriceOracleStandIn.sol; Base itself cannot be reached),
deployed to by `fabstir deploy` with the checked-in base-sepolia params. The
module's local chain (31337) has no predeploy: it says there is no L1 fee."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.base_chain import place_gas_price_oracle_stand_in, place_usdc
from support.cli import DEPLOYER, invoke, ok, ok_json, run, test_key, user_error
from web3 import Web3

from fabstir.chain.local import TEST_MNEMONIC, free_port
from fabstir.chain.params import load_params_file
from fabstir.cli.costs import NO_L1_FEE

USDC = next(t.address for t in load_params_file("base-sepolia").params.tokens if t.external)


@pytest.fixture(scope="module")
def base_chain(project: Any) -> Iterator[str]:
    """An 84532 anvil (OP-stack mode, a block every 0.2 s so confirmations come, as in
    tests/deploy/test_deploy_rehearsal.py) with the stand-in oracle and USDC; its URL."""
    anvil = shutil.which("anvil")
    assert anvil, "anvil is not on PATH (source tools/env.sh)"
    port = free_port()
    proc = subprocess.Popen(
        [anvil, "--host", "127.0.0.1", "--port", str(port), "--chain-id", "84532",
         "--optimism", "--mnemonic", TEST_MNEMONIC, "--block-time", "0.2", "--mixed-mining"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        w3 = Web3(Web3.HTTPProvider(url))
        for _ in range(100):
            if w3.is_connected():
                break
            time.sleep(0.1)
        place_gas_price_oracle_stand_in(url, project)
        place_usdc(url, project, USDC)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def base_env(base_chain: str, cli_home: Path) -> dict[str, str]:
    """The deployer's key in $FABSTIR_KEY_FILE (test accounts are refused on 84532)."""
    key_file = cli_home / "deployer.key"
    key_file.write_text(test_key(DEPLOYER))
    env = {"FABSTIR_KEY_FILE": str(key_file)}
    proc = run("--json", "deploy", "--network", base_chain, "--yes", env=env)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    return env


def _paused(net: tuple[str, ...], env: dict[str, str]) -> bool:
    market = ok_json(invoke("deployments", "show", "--json", *net, env=env))["contracts"]
    w3 = Web3(Web3.HTTPProvider(net[1]))
    abi = [{"name": "paused", "type": "function", "stateMutability": "view", "inputs": [],
            "outputs": [{"name": "", "type": "bool"}]}]  # fmt: skip
    return bool(
        w3.eth.contract(address=market["JobMarketplace"], abi=abi).functions.paused().call()
    )


def test_live_question_and_json_carry_the_l1_fee(base_chain: str, base_env: dict[str, str]) -> None:
    net = ("--network", base_chain)
    declined = invoke("admin", "pause", *net, env=base_env, input="n\n")
    assert declined.exit_code == 1
    assert "pause the marketplace (no new sessions) on" in declined.stderr
    assert "cost at most" in declined.stderr and "L1 data fee" in declined.stderr
    assert "not confirmed; nothing was sent" in declined.stderr
    assert not _paused(net, base_env)

    result = invoke("--json", "admin", "pause", *net, env=base_env, input="y\n")
    assert result.exit_code == 0, result.stderr
    assert "L1 data fee" in result.stderr  # the question, on stderr
    # (the runner echoes the answer to stdout, before the JSON)
    data = json.loads(result.stdout[result.stdout.index("{") :])
    cost = data["cost"]
    assert data["paused"] is True and cost["estimated"] is True
    assert cost["l1_fee_wei"] > 0 and cost["l1_fee_note"] is None
    assert cost["l2_fee_wei"] == cost["gas"] * cost["transactions"][0]["max_fee_per_gas_wei"]
    assert cost["total_wei"] == cost["l2_fee_wei"] + cost["l1_fee_wei"]
    assert cost["l1_fee"].endswith(" ETH") and cost["total"].endswith(" ETH")
    assert _paused(net, base_env)

    # The human result says the same; --yes skips the question.
    human = ok(invoke("admin", "unpause", "--yes", *net, env=base_env))
    assert "marketplace unpaused" in human.stdout and "L1 data fee" in human.stdout
    assert "[y/N]" not in human.stderr
    assert not _paused(net, base_env)


def test_no_l1_fee_without_the_predeploy(deployed: dict[str, Any]) -> None:
    admin = ("--account", f"test:{DEPLOYER}")
    data = ok_json(invoke("--json", "admin", "pause", *admin))
    cost = data["cost"]
    assert cost["l1_fee_wei"] == 0 and cost["l1_fee"] is None
    assert cost["l1_fee_note"] == NO_L1_FEE
    assert cost["total_wei"] == cost["l2_fee_wei"] > 0
    human = ok(invoke("admin", "unpause", *admin)).stdout
    assert NO_L1_FEE in human and "L1 data fee" not in human


def test_a_call_that_reverts_is_not_priced(deployed: dict[str, Any]) -> None:
    """finalize of an unknown session: no price, and the SDK's own reason."""
    result = invoke("--json", "session", "finalize", "999", "--account", f"test:{DEPLOYER}")
    assert result.exit_code == 1 and "SESSION_NOT_FOUND" in result.stderr
    # Arguments web3 cannot encode are not priced either; the SDK names them.
    admin = ("--account", f"test:{DEPLOYER}")
    user_error(invoke("treasury", "withdraw", "1", "--to", "nope", *admin), "INVALID_ADDRESS")
    user_error(invoke("withdraw", "abc", *admin), "INVALID_AMOUNT")


def test_withdraw_commands_carry_the_cost(base_chain: str, base_env: dict[str, str]) -> None:
    """The wallet and treasury withdrawals price their transaction the same way."""
    net = ("--network", base_chain)
    # Nothing deposited: the estimate reverts, so no price, and the SDK's own reason.
    refused = invoke("withdraw", "--yes", *net, env=base_env)
    assert refused.exit_code == 1 and "INSUFFICIENT_BALANCE" in refused.stderr
    ok(invoke("deposit", "0.001", "--token", "ETH", "--yes", *net, env=base_env))
    declined = invoke("withdraw", "--token", "ETH", *net, env=base_env, input="n\n")
    assert declined.exit_code == 1 and "L1 data fee" in declined.stderr
    data = ok_json(invoke("--json", "withdraw", "--token", "ETH", "--yes", *net, env=base_env))
    assert data["cost"]["l1_fee_wei"] > 0 and data["deposited"] in ("0", "0.0")
    assert data["cost"]["transactions"][0]["what"] == "JobMarketplace.withdraw"
