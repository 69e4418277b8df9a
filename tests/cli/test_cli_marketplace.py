"""The CLI against a marketplace deployed and seeded through `fabstir deploy --seed`:
deployments, models on chain, balances, host registration, treasury, accounts (test,
ape keystore, key file), live-network refusals and confirmation."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from support.cli import (
    CLIENT,
    HOST,
    REPO,
    address_of,
    invoke,
    ok,
    ok_json,
    run,
    run_json,
    test_key,
    usage_error,
    user_error,
)

from fabstir import models
from fabstir.chain.local import ChainInfo, LocalChain, free_port

pytestmark = pytest.mark.usefixtures("deployed")

NEW_HOST = 7


@pytest.fixture(scope="module")
def deployed(local_chain: ChainInfo) -> dict[str, Any]:
    """Here step by step: `deploy` (nothing seeded), the curator's `models approve`
    (real transactions), then `deploy --seed` (reuses the deployment, funds accounts)."""
    first: dict[str, Any] = run_json("deploy")
    assert first["reused"] is False and first["transactions"] > 0 and first["seeded"] == []
    assert ok_json(invoke("models", "list", "--on-chain", "--json")) == []
    approve = ok_json(invoke("models", "approve", "--account", "test:0", "--json"))
    assert set(approve["transactions"]) == {"added", "approved"}
    seeded: dict[str, Any] = run_json("deploy", "--seed")
    assert seeded["reused"] is True and seeded["transactions"] == 0
    assert seeded["contracts"] == first["contracts"]
    assert any("minted" in line for line in seeded["seeded"])
    assert not any("approved model" in line for line in seeded["seeded"])
    return seeded


@pytest.fixture(scope="module")
def live_chain(cli_home: Path) -> Iterator[ChainInfo]:
    """An anvil with Base Sepolia's chain id: the CLI must treat it as live."""
    lc = LocalChain(cli_home / "live-chain")
    info = lc.up(port=free_port(), chain_id=84532, persist=False)
    yield info
    lc.down()


def test_deployments_show(deployed: dict[str, Any]) -> None:
    data = ok_json(invoke("deployments", "show", "--json"))
    assert data["complete"] is True and data["chain_id"] == 31337
    assert data["contracts"] == deployed["contracts"]
    human = ok(invoke("deployments", "show")).stdout
    assert deployed["contracts"]["JobMarketplace"] in human
    user_error(invoke("deployments", "show", "--chain-id", "5"), "no deployment recorded")


def test_models_on_chain() -> None:
    entry = models.find()
    listed = ok_json(invoke("models", "list", "--on-chain", "--json"))
    assert [m["model_id"] for m in listed] == [entry.model_id]
    assert listed[0]["catalogue_key"] == entry.key
    approve = ok_json(invoke("models", "approve", "--account", "test:0", "--json"))
    assert approve == {
        "key": entry.key,
        "model_id": entry.model_id,
        "approved": True,
        "transactions": {},
    }
    user_error(invoke("models", "approve", "--account", "test:3"), "lacks CURATOR_ROLE")
    user_error(invoke("models", "approve", "nope", "--account", "test:0"), "not in the catalogue")


def test_models_validate(tmp_path: Path) -> None:
    entry = models.find()
    data = ok_json(invoke("models", "validate", "--json"))
    assert data["valid"] is True and data["approved"] is True
    if models.local_path(entry).is_file():
        assert data["hash_matches"] is True
    wrong = tmp_path / "wrong.gguf"
    wrong.write_bytes(b"not the model")
    result = invoke("models", "validate", "--file", str(wrong), "--json")
    user_error(result, "not valid", "sha256")
    assert json.loads(result.stdout)["hash_matches"] is False


def test_balance_deposit_withdraw() -> None:
    me = address_of(CLIENT)
    before = ok_json(invoke("balance", "--account", f"test:{CLIENT}", "--json"))
    assert before["address"] == me and before["symbol"] == "USDC"
    assert before["wallet"] == "10000.0" and before["deposited"] == "0.0"
    dep = ok_json(invoke("--json", "--account", f"test:{CLIENT}", "deposit", "2.5"))
    assert dep["deposited"] == "2.5" and dep["tx_hash"].startswith("0x")
    human = ok(invoke("balance", me)).stdout
    assert "2.5" in human and "9997.5" in human
    part = ok_json(invoke("withdraw", "0.5", "--account", f"test:{CLIENT}", "--json"))
    assert part["deposited"] == "2.0"
    rest = ok(invoke("withdraw", "--account", f"test:{CLIENT}"))
    assert "withdrew 2.0 USDC" in rest.stdout
    after = ok_json(invoke("balance", me, "--json"))
    assert after["wallet"] == "10000.0" and after["deposited"] == "0.0"


def test_withdraw_to_another_address_pays_it_and_leaves_the_wallet_alone() -> None:
    acct = ("--account", f"test:{CLIENT}")
    me, payee = address_of(CLIENT), address_of(HOST)
    ok(invoke("deposit", "1.5", *acct))
    payee_before = ok_json(invoke("balance", payee, "--json"))["wallet"]
    mine_before = ok_json(invoke("balance", me, "--json"))["wallet"]
    data = ok_json(invoke("--json", "withdraw", "1", "--to", payee, *acct))
    assert data["to"] == payee and data["amount"] == "1"
    assert data["cost"]["transactions"][0]["what"] == "JobMarketplace.withdrawTo"
    payee_after = ok_json(invoke("balance", payee, "--json"))["wallet"]
    assert Decimal(payee_after) - Decimal(payee_before) == 1
    mine = ok_json(invoke("balance", me, "--json"))
    assert mine["wallet"] == mine_before and mine["deposited"] == "0.5"
    market = ok_json(invoke("deployments", "show", "--json"))["contracts"]["JobMarketplace"]
    for bad in ("0x" + "00" * 20, market, "nope"):
        user_error(invoke("withdraw", "0.5", "--to", bad, *acct), "INVALID_ADDRESS")
    assert ok_json(invoke("balance", me, "--json"))["deposited"] == "0.5"  # nothing moved
    ok(invoke("withdraw", *acct))


def test_wallet_bad_input() -> None:
    acct = ("--account", f"test:{CLIENT}")
    user_error(invoke("deposit", "abc", *acct), "INVALID_AMOUNT")
    user_error(invoke("deposit", "0", *acct), "INVALID_AMOUNT")
    user_error(invoke("deposit", "20000", *acct), "INSUFFICIENT_BALANCE")
    user_error(invoke("withdraw", "1", *acct), "INSUFFICIENT_BALANCE")
    user_error(invoke("deposit", "1", "--token", "0x" + "12" * 20, *acct), "INVALID_ADDRESS")
    user_error(invoke("balance"), "say whose")
    user_error(invoke("deposit", "1"), "this command signs")


def test_debug_shows_the_traceback() -> None:
    result = invoke("--debug", "deposit", "abc", "--account", f"test:{CLIENT}")
    assert result.exit_code == 1
    assert type(result.exception).__name__ == "SDKError"  # raised, not turned into one line
    proc = run("--debug", "deposit", "abc", "--account", f"test:{CLIENT}")
    assert proc.returncode == 1 and "Traceback" in proc.stderr


def test_host_lifecycle() -> None:
    acct = ("--account", f"test:{NEW_HOST}")
    me = address_of(NEW_HOST)
    before = ok_json(invoke("host", "status", me, "--json"))
    assert before["is_registered"] is False
    reg = ok_json(
        invoke(
            "host", "register", *acct, "--json",
            "--url", "ws://127.0.0.1:9999",
            "--price", "300",
            "--stake", "1500",
            "--metadata", '{"hardware":{"gpu":"none","vram":0,"ram":4},"location":"test"}',
        )
    )  # fmt: skip
    assert reg["host"] == me and reg["status"]["is_active"] is True
    user_error(invoke("host", "register", *acct, "--url", "ws://x:1"), "already a registered host")
    status = ok_json(invoke("host", "status", *acct, "--json"))
    assert status["api_url"] == "ws://127.0.0.1:9999" and status["stake_fab"] == "1500.0"
    assert 300 in status["min_prices"].values()
    assert status["metadata"]["location"] == "test"
    upd = ok_json(
        invoke("host", "update", *acct, "--url", "ws://127.0.0.1:9998", "--price", "250", "--json")
    )
    assert set(upd["transactions"]) == {"api_url", "min_prices"}
    human = ok(invoke("host", "status", *acct)).stdout
    assert "ws://127.0.0.1:9998" in human and "USDC 250" in human
    listed = ok_json(invoke("host", "list", "--model", models.find().key, "--json"))
    assert me in [h["address"] for h in listed]
    user_error(invoke("host", "withdraw", *acct), "INSUFFICIENT_BALANCE")
    unreg = ok_json(invoke("host", "unregister", *acct, "--json"))
    assert unreg["unbonding_ends_at"] > 0
    user_error(invoke("host", "withdraw", "--stake", *acct), "unbonding ends")
    user_error(invoke("host", "update", *acct, "--url", "ws://x:1"), "NOT_AUTHORIZED")
    usage_error(invoke("host", "update", *acct), "nothing to update")


def test_host_register_bad_input() -> None:
    acct = ("--account", "test:9")
    user_error(
        invoke("host", "register", *acct, "--url", "ws://h:1", "--model", "0x" + "ab" * 32),
        "MODEL_NOT_FOUND",
    )
    user_error(
        invoke("host", "register", *acct, "--url", "ws://h:1", "--stake", "1"),
        "below the registry's minimum",
    )
    user_error(
        invoke("host", "register", *acct, "--url", "ws://h:1", "--metadata", "[1]"), "JSON object"
    )
    user_error(invoke("host", "register", "--account", "test:0", "--url", "not a url"), "")


def test_treasury_info() -> None:
    info = ok_json(invoke("treasury", "info", "--json"))
    assert info["fee_bps"] == 1000 and info["balance"] == "0.0"
    assert "1000 bps" in ok(invoke("treasury", "info")).stdout
    user_error(invoke("treasury", "withdraw", "1", "--account", f"test:{CLIENT}"), "NOT_AUTHORIZED")
    user_error(invoke("treasury", "withdraw", "1", "--account", "test:0"), "INSUFFICIENT_BALANCE")


def test_session_commands_without_a_session() -> None:
    acct = ("--account", f"test:{CLIENT}")
    user_error(invoke("session", "status", "42"), "SESSION_NOT_FOUND")
    user_error(invoke("session", "send", "42", "hi", *acct), "SESSION_NOT_FOUND")
    user_error(invoke("session", "history", "42", *acct), "SESSION_NOT_FOUND")
    user_error(invoke("session", "start", "--model", "nope", *acct), "not in the catalogue")
    assert ok_json(invoke("session", "list", *acct, "--json")) == []


def test_ape_keystore_account(tmp_path: Path) -> None:
    folder = tmp_path / "ape"
    (folder / "accounts").mkdir(parents=True)
    keystore = Account.encrypt(
        bytes.fromhex(test_key(CLIENT)[2:]), "s3cret", kdf="pbkdf2", iterations=1000
    )
    (folder / "accounts" / "alice.json").write_text(json.dumps(keystore))
    env = {"APE_DATA_FOLDER": str(folder), "APE_ACCOUNTS_alice_PASSPHRASE": "s3cret"}
    data = ok_json(invoke("balance", "--account", "alice", "--json", env=env))
    assert data["address"] == address_of(CLIENT)
    prompted = invoke(
        "balance",
        "--account",
        "alice",
        "--json",
        env={"APE_DATA_FOLDER": str(folder)},
        input="s3cret\n",
    )
    assert json.loads(ok(prompted).stdout)["address"] == address_of(CLIENT)
    wrong = {**env, "APE_ACCOUNTS_alice_PASSPHRASE": "nope"}
    user_error(invoke("balance", "--account", "alice", env=wrong), "wrong passphrase")
    user_error(invoke("balance", "--account", "bob", env=env), "no ape account 'bob'")


def test_key_file_account(tmp_path: Path) -> None:
    key_file = tmp_path / "client.key"
    key_file.write_text(test_key(CLIENT)[2:] + "\n")
    data = ok_json(invoke("balance", "--json", env={"FABSTIR_KEY_FILE": str(key_file)}))
    assert data["address"] == address_of(CLIENT)


def test_test_accounts_refused_on_a_live_chain(live_chain: ChainInfo) -> None:
    net = ("--network", live_chain.rpc_url)
    for args in (
        ("balance",),
        ("deposit", "1"),
        ("host", "status"),
        ("session", "send", "1", "hi"),
    ):
        user_error(
            invoke(*args, *net, "--account", "test:1"),
            "test accounts are for local chains only",
            "84532",
        )
    proc = run("deploy", *net, "--account", "test:0")
    assert proc.returncode == 1 and "test accounts are for local chains only" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_live_chain_asks_before_sending(live_chain: ChainInfo, tmp_path: Path) -> None:
    key_file = tmp_path / "k"
    key_file.write_text(test_key(CLIENT))
    env = {"FABSTIR_KEY_FILE": str(key_file)}
    net = ("--network", live_chain.rpc_url)
    declined = invoke("deposit", "1", *net, env=env, input="n\n")
    assert declined.exit_code == 1
    # (the runner echoes the answer to stdout, so the prompt and the reason share a line)
    assert "chain 84532)? [y/N]:error: not confirmed; nothing was sent" in declined.stderr
    # With --yes there is no question; this chain has no marketplace, so the SDK says so.
    user_error(invoke("deposit", "1", "--yes", *net, env=env), "CONTRACT_NOT_CONFIGURED")
    user_error(invoke("deploy", "--seed", *net, env=env), "--seed is for local chains only")


def test_wrong_chain_for_base_sepolia(local_chain: ChainInfo) -> None:
    env = {"BASE_SEPOLIA_RPC_URL": local_chain.rpc_url}
    user_error(
        invoke("balance", "0x" + "11" * 20, "--network", "base-sepolia", env=env),
        "not Base Sepolia",
    )


def test_session_with_an_unreachable_host() -> None:
    """The deposit is escrowed before the host is contacted: the error names the open
    session, and `session close` ends it on chain without the host."""
    url = f"ws://127.0.0.1:{free_port()}"
    ok(invoke("host", "register", "--account", "test:6", "--url", url))
    me = ("--account", "test:9")
    line = user_error(
        invoke("session", "start", "--host", address_of(6), *me),
        "WEBSOCKET_CONNECTION_FAILED",
        "is open on chain",
    )
    found = re.search(r"session (\d+) is open on chain", line)
    assert found, line
    sid = found[1]
    assert ok_json(invoke("session", "status", sid, "--json"))["status"] == "ACTIVE"
    result = ok_json(invoke("session", "close", sid, "--settle-timeout", "0", "--json", *me))
    assert result["status"] == "CLOSING" and result["settled_by_host"] is False
    assert result["close_tx_hash"].startswith("0x") and result["tokens_used"] == 0


def test_live_deploy_shows_the_cost_and_asks(live_chain: ChainInfo, cli_home: Path) -> None:
    """On a live chain `fabstir deploy` prices every transaction and sends nothing
    unless the operator says yes (here: no)."""
    import ape
    import requests

    from fabstir.chain.params import load_params_file

    usdc = next(t.address for t in load_params_file("base-sepolia").params.tokens if t.external)
    code = ape.Project(REPO).MockUSDC.contract_type.runtime_bytecode.bytecode
    reply = requests.post(
        live_chain.rpc_url,
        json={"jsonrpc": "2.0", "id": 1, "method": "anvil_setCode", "params": [usdc, code]},
        timeout=10,
    ).json()
    assert "error" not in reply
    key_file = cli_home / "deployer.key"
    key_file.write_text(test_key(0))
    out_dir = cli_home / "live-deployments"
    env = {"FABSTIR_KEY_FILE": str(key_file), "FABSTIR_DEPLOYMENTS_DIR": str(out_dir)}
    proc = run("deploy", "--network", live_chain.rpc_url, env=env, input="n\n")
    assert proc.returncode == 1, proc.stderr
    assert "total: 12 transactions" in proc.stderr and "send these transactions?" in proc.stderr
    assert proc.stderr.strip().endswith("error: aborted by the operator; nothing was sent")
    assert proc.stdout == "" and not out_dir.exists()
