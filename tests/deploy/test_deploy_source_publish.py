"""Publishing the sources, the live step: `ExplorerClient` and `ape run publish_sources`
against a STAND-IN Etherscan-compatible API on 127.0.0.1 (tests/support/
etherscan_standin.py; Base Sepolia's basescan cannot be reached from here), with the
payloads built from a real local deployment: "Pending in queue" then "Pass -
Verified", "already verified", a failed verification, and HTTP 429 / 5xx / rate-limit
answers retried."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.etherscan_standin import EtherscanStandIn
from web3 import Web3

from fabstir.chain.deploy import DeployResult
from fabstir.chain.sourceverify import (
    ALREADY_VERIFIED,
    ENV_API_KEY,
    ENV_API_KEY_FILE,
    ENV_ETHERSCAN_API_KEY,
    VERIFIED,
    ExplorerClient,
    SourceVerifyError,
    api_key_from_environment,
    build_payloads,
)

REPO = Path(__file__).resolve().parents[2]
KEY = "STANDIN-KEY"


@pytest.fixture
def standin() -> Iterator[EtherscanStandIn]:
    server = EtherscanStandIn(api_key=KEY).start()
    yield server
    server.stop()


@pytest.fixture
def payloads(project: Any, chain: Any, deployed: DeployResult) -> dict[str, dict[str, str]]:
    w3 = Web3(Web3.HTTPProvider(chain.provider.uri))
    return dict(build_payloads(project, deployed.deployment, w3, KEY))


def _client(standin: EtherscanStandIn, **kw: Any) -> ExplorerClient:
    options: dict[str, Any] = {"poll_interval": 0.01, "base_delay": 0.01, **kw}
    return ExplorerClient(standin.url, KEY, **options)


def test_every_contract_is_submitted_then_polled_until_verified(
    standin: EtherscanStandIn,
    payloads: dict[str, dict[str, str]],
    deployed: DeployResult,
    chain: Any,
) -> None:
    w3 = Web3(Web3.HTTPProvider(chain.provider.uri))
    with _client(standin) as explorer:
        done = {name: explorer.verify(p) for name, p in payloads.items()}
    records = deployed.deployment.contracts
    assert len(done) >= 6 and all(d.status == VERIFIED and d.guid for d in done.values())
    assert {d.address for d in done.values()} == {records[n].address for n in done}
    # Each: one submission, then "Pending in queue", then "Pass - Verified".
    checks = [s for s in standin.seen if s.fields.get("action") == "checkverifystatus"]
    assert len(checks) == 2 * len(done)
    for sent in standin.submissions():
        name = next(n for n, p in payloads.items() if p["contractname"] == sent["contractname"])
        record = records[name]
        assert sent["apikey"] == KEY and sent["contractaddress"] == record.address
        assert sent["codeformat"] == "solidity-standard-json-input"
        assert "sources" in json.loads(sent["sourceCode"])
        # ABI-encoded constructor arguments: the deploying transaction's input after the code.
        tx_input = bytes(w3.eth.get_transaction(record.tx_hash)["input"])
        assert tx_input.hex().endswith(sent["constructorArguements"])
    # The USDC mock is deployed here too; a configured token (external) would be skipped.
    assert all(not records[n].external for n in done)


def test_already_verified_and_a_failed_verification(
    standin: EtherscanStandIn, payloads: dict[str, dict[str, str]]
) -> None:
    standin.already.add("JobMarketplace")
    standin.answers["ModelRegistry"] = ["Pending in queue", "Fail - Unable to verify"]
    standin.answers["NodeRegistry"] = ["Already Verified"]
    with _client(standin) as explorer:
        again = explorer.verify(payloads["JobMarketplace"])
        assert again.status == ALREADY_VERIFIED and again.guid is None
        raced = explorer.verify(payloads["NodeRegistry"])
        assert raced.status == ALREADY_VERIFIED and raced.guid
        with pytest.raises(SourceVerifyError, match="ModelRegistry: verification failed: Fail"):
            explorer.verify(payloads["ModelRegistry"])
    # A wrong key is refused at submission, without the key in the message.
    with ExplorerClient(standin.url, "WRONG", poll_interval=0.01) as wrong:
        with pytest.raises(SourceVerifyError, match="refused the submission: Invalid API Key") as e:
            wrong.verify(payloads["JobMarketplace"])
        assert "WRONG" not in str(e.value)


def test_throttling_and_server_errors_are_retried(
    standin: EtherscanStandIn, payloads: dict[str, dict[str, str]]
) -> None:
    rate_limit = json.dumps({"status": "0", "message": "NOTOK", "result": "Max rate limit reached"})
    standin.faults.extend(
        [
            (429, {"Retry-After": "1"}, "slow down"),
            (502, {}, "bad gateway"),
            (200, {}, rate_limit),
            (503, {}, "unavailable"),
        ]
    )
    with _client(standin) as explorer:
        done = explorer.verify(payloads["JobMarketplace"])
    assert done.status == VERIFIED
    answered = [s.answered for s in standin.seen]
    assert answered == [429, 502, 200, 503, 200, 200, 200]  # then submitted, pending, pass
    assert standin.seen[1].at - standin.seen[0].at >= 0.9  # Retry-After: 1 honoured
    assert len(standin.submissions()) == 5  # 4 tries refused, then the one accepted

    # An API that stays down: a bounded number of tries, one reason, no key in it.
    standin.faults.extend([(500, {}, "down")] * 3)
    failing = pytest.raises(SourceVerifyError, match=r"kept failing \(3 tries\): HTTP 500")
    with _client(standin, attempts=3) as explorer, failing as e:
        explorer.verify(payloads["JobMarketplace"])
    assert KEY not in str(e.value)


def test_api_key_from_the_etherscan_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(ENV_API_KEY_FILE, raising=False)
    monkeypatch.delenv(ENV_API_KEY, raising=False)
    monkeypatch.setenv(ENV_ETHERSCAN_API_KEY, " FROM-ENV ")
    assert api_key_from_environment() == "FROM-ENV"
    empty = tmp_path / "empty"
    empty.write_text("\n")
    monkeypatch.setenv(ENV_API_KEY_FILE, str(empty))
    with pytest.raises(SourceVerifyError, match="is empty"):
        api_key_from_environment()
    with pytest.raises(SourceVerifyError, match="empty"):
        ExplorerClient("http://127.0.0.1:1/api", "")


def test_ape_run_publish_sources_submits_and_waits(
    standin: EtherscanStandIn, chain: Any, deployed: DeployResult, out_dir: Path
) -> None:
    """The script as an operator runs it (attached to this test's anvil)."""
    standin.already.add("ProofSystem")
    ape = shutil.which("ape") or str(Path(sys.executable).with_name("ape"))
    env = {
        **os.environ,
        "APE_FOUNDRY_HOST": chain.provider.uri,
        "FABSTIR_DEPLOYMENTS_DIR": str(out_dir),
        ENV_ETHERSCAN_API_KEY: KEY,
    }
    env.pop(ENV_API_KEY_FILE, None)
    args = ["--network", "ethereum:local:foundry", "--api-url", standin.url]

    def publish() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [ape, "run", "publish_sources", *args, "--poll-interval", "0.01"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )

    proc = publish()
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    lines = [line for line in proc.stdout.splitlines() if ": " in line]
    records = deployed.deployment.contracts
    assert any(line.startswith("ProofSystem ") and ALREADY_VERIFIED in line for line in lines)
    assert any(
        line.startswith(f"JobMarketplace {records['JobMarketplace'].address}: {VERIFIED} (guid")
        for line in lines
    )
    assert KEY not in proc.stdout + proc.stderr

    # A failure is one line and exit 1.
    standin.answers["FABToken"] = ["Fail - Unable to verify"]
    failed = publish()
    assert failed.returncode == 1 and "error: " in failed.stderr
    assert "verification failed: Fail - Unable to verify" in failed.stderr
    assert "Traceback" not in failed.stderr
