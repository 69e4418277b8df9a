"""The Base Sepolia rehearsal: the live path of `ape run deploy`, end to end.

An anvil started with Base Sepolia's chain id (84532, OP-stack mode, a block every
0.2 s so confirmations are real) stands in for the network. ape reaches it exactly as
it would reach Base Sepolia: `--network base:sepolia:node`, the URL coming from
BASE_SEPOLIA_RPC_URL through ape-config.yaml. Real Base Sepolia USDC is an existing
contract at a fixed address, so MockUSDC's runtime code (name, symbol set in storage)
is placed at that address with anvil_setCode before the deploy, and the checked-in
deployments/params/base-sepolia.json is used unchanged. Everything is written to a
temporary directory; deployments/84532.json is never touched.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from fabstir.chain.deployments import DEFAULT_DIR, load_deployment
from fabstir.chain.params import load_params_file

REPO = Path(__file__).resolve().parents[2]
USDC = next(t.address for t in load_params_file("base-sepolia").params.tokens if t.external)
MNEMONIC = "test test test test test test test test test test test junk"
CHECKED_IN = DEFAULT_DIR / "84532.json"


@dataclass
class Rehearsal:
    url: str
    out_dir: Path

    def rpc(self, method: str, *params: Any) -> Any:
        reply = requests.post(
            self.url,
            json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)},
            timeout=10,
        ).json()
        assert "error" not in reply, reply
        return reply["result"]

    def ape(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "BASE_SEPOLIA_RPC_URL": self.url,
            "FABSTIR_DEPLOYMENTS_DIR": str(self.out_dir),
        }
        ape = shutil.which("ape") or str(Path(sys.executable).with_name("ape"))
        return subprocess.run(
            [ape, "run", *args, "--network", "base:sepolia:node"],
            cwd=REPO,
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=180,
        )


def _short_string_slot(text: str) -> str:
    """Solidity storage of a string under 32 bytes: the bytes, then length * 2."""
    raw = text.encode()
    return "0x" + (raw + b"\x00" * (31 - len(raw)) + bytes([2 * len(raw)])).hex()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def rehearsal(project: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rehearsal]:
    anvil = shutil.which("anvil")
    assert anvil, "anvil is not on PATH (source tools/env.sh)"
    port = _free_port()
    proc = subprocess.Popen(
        [anvil, "--port", str(port), "--chain-id", "84532", "--optimism", "--mnemonic", MNEMONIC,
         "--block-time", "0.2", "--mixed-mining"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        r = Rehearsal(f"http://127.0.0.1:{port}", tmp_path_factory.mktemp("rehearsal"))
        for _ in range(100):
            try:
                assert int(r.rpc("eth_chainId"), 16) == 84532
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        # Circle's USDC is already on Base Sepolia: put a 6-decimal ERC20 at its address.
        r.rpc("anvil_setCode", USDC, project.MockUSDC.contract_type.runtime_bytecode.bytecode)
        r.rpc("anvil_setStorageAt", USDC, hex(3), _short_string_slot("USDC"))
        r.rpc("anvil_setStorageAt", USDC, hex(4), _short_string_slot("USDC"))
        yield r
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def checked_in_before() -> Iterator[str | None]:
    before = CHECKED_IN.read_text() if CHECKED_IN.exists() else None
    yield before
    after = CHECKED_IN.read_text() if CHECKED_IN.exists() else None
    assert after == before, "the rehearsal must never write deployments/84532.json"


@pytest.fixture(scope="module")
def rehearsed(rehearsal: Rehearsal, checked_in_before: str | None) -> tuple[Rehearsal, str]:
    # Declining the cost prompt sends nothing and writes nothing.
    declined = rehearsal.ape("deploy", "--account", "TEST::0", stdin="n\n")
    out = declined.stdout + declined.stderr
    assert declined.returncode == 1, out
    assert "total: 12 transactions" in out and "send these transactions?" in out, out
    assert "aborted by the operator; nothing was sent" in out, out
    assert (
        rehearsal.rpc(
            "eth_getTransactionCount", "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266", "latest"
        )
        == "0x0"
    )
    assert not (rehearsal.out_dir / "84532.json").exists()

    done = rehearsal.ape("deploy", "--account", "TEST::0", "--yes")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    return rehearsal, out


def test_rehearsal_deploys_with_the_live_params(rehearsed: tuple[Rehearsal, str]) -> None:
    r, out = rehearsed
    assert "network base:sepolia:node (chain 84532), params base-sepolia" in out
    assert "deploy OK: 12 transactions; wiring verified" in out
    assert "gas price: base fee" in out and "max fee" in out
    dep = load_deployment(84532, r.out_dir)
    assert dep.network == "base:sepolia:node" and dep.params_name == "base-sepolia"
    assert dep.address("USDC") == USDC and dep.contracts["USDC"].external
    assert all(not r.external for n, r in dep.contracts.items() if n != "USDC")
    assert [(t.symbol, t.mock) for t in dep.tokens] == [("ETH", False), ("USDC", False)]
    assert dep.params == load_params_file("base-sepolia").params.to_dict()
    # Every transaction was priced the EIP-1559 way the params ask for.
    for t in dep.transactions:
        tx = r.rpc("eth_getTransactionByHash", t.tx_hash)
        assert tx["type"] == "0x2" and int(tx["maxPriorityFeePerGas"], 16) == 1_000_000, t.step
    assert dep.compiler["solc_version"] == "0.8.28"


def test_rehearsal_rerun_reuses_and_sends_nothing(rehearsed: tuple[Rehearsal, str]) -> None:
    r, _ = rehearsed
    nonce = r.rpc("eth_getTransactionCount", "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266", "latest")
    before = (r.out_dir / "84532.json").read_text()
    again = r.ape("deploy", "--account", "TEST::0", "--yes")
    out = again.stdout + again.stderr
    assert again.returncode == 0, out
    assert "deploy OK: reused (nothing sent)" in out, out
    assert (
        r.rpc("eth_getTransactionCount", "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266", "latest")
        == nonce
    )
    assert (r.out_dir / "84532.json").read_text() == before


def test_seed_local_refuses_the_rehearsal_chain(rehearsed: tuple[Rehearsal, str]) -> None:
    r, _ = rehearsed
    refused = r.ape("seed_local")
    out = refused.stdout + refused.stderr
    assert refused.returncode == 1, out
    assert "seed_local refused" in out and "this is chain 84532" in out, out


def test_roles_check_on_the_rehearsal_chain(rehearsed: tuple[Rehearsal, str]) -> None:
    r, _ = rehearsed
    res = r.ape("roles", "check")
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "nothing to change" in out, out
