"""The CLI without a deployed marketplace: help, offline model commands, usage errors
(exit 2) vs user errors (exit 1), `chain up|status|down`, and the console script."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import pytest
from support.cli import invoke, ok, ok_json, run, usage_error, user_error

from fabstir import __version__, models
from fabstir.chain.local import LocalChain, free_port

GROUPS = ["chain", "deployments", "models", "host", "session", "treasury"]
COMMANDS = [
    ["chain", "up"],
    ["chain", "down"],
    ["chain", "status"],
    ["deploy"],
    ["deployments", "show"],
    ["models", "list"],
    ["models", "fetch"],
    ["models", "id"],
    ["models", "approve"],
    ["models", "validate"],
    ["host", "register"],
    ["host", "update"],
    ["host", "status"],
    ["host", "list"],
    ["host", "withdraw"],
    ["host", "unregister"],
    ["session", "start"],
    ["session", "chat"],
    ["session", "send"],
    ["session", "history"],
    ["session", "pause"],
    ["session", "resume"],
    ["session", "close"],
    ["session", "status"],
    ["session", "list"],
    ["balance"],
    ["deposit"],
    ["withdraw"],
    ["treasury", "info"],
    ["treasury", "withdraw"],
]


@pytest.fixture
def empty_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A FABSTIR_HOME with no chain in it, and no network configured."""
    monkeypatch.setenv("FABSTIR_HOME", str(tmp_path))
    monkeypatch.setenv("FABSTIR_DEPLOYMENTS_DIR", str(tmp_path / "deployments"))
    for name in ("FABSTIR_RPC_URL", "FABSTIR_NETWORK", "FABSTIR_ACCOUNT", "FABSTIR_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_main_help_explains_itself() -> None:
    out = ok(invoke("--help")).stdout
    for word in ("chain up", "deploy", "--network", "--account", "--json", "Exit status"):
        assert word in out
    for group in [*GROUPS, "balance", "deposit", "withdraw"]:
        assert group in out


@pytest.mark.parametrize("group", GROUPS)
def test_group_help_has_examples(group: str) -> None:
    out = ok(invoke(group, "--help")).stdout
    assert "Examples:" in out and f"fabstir {group}" in out


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command: list[str]) -> None:
    out = ok(invoke(*command, "-h")).stdout
    assert out.startswith("Usage: ")


def test_version() -> None:
    assert __version__ in ok(invoke("--version")).stdout


def test_models_list_and_id() -> None:
    entry = models.find()
    assert entry.key in ok(invoke("models", "list")).stdout
    listed = ok_json(invoke("models", "list", "--json"))
    assert [m["key"] for m in listed] == [e.key for e in models.load_catalogue()]
    assert listed[0]["model_id"] == entry.model_id
    by_key = ok_json(invoke("--json", "models", "id", entry.key))
    by_name = ok_json(invoke("models", "id", entry.repo, entry.file, "--json"))
    assert by_key == by_name == {"model_id": entry.model_id, "repo": entry.repo, "file": entry.file}
    assert ok(invoke("models", "id", entry.repo, entry.file)).stdout.strip() == entry.model_id


def test_models_bad_input_is_a_user_error() -> None:
    user_error(invoke("models", "id", "no-such-model"), "not in the catalogue")
    user_error(invoke("models", "id", "not-a-repo", "file.gguf"), "owner/name")
    usage_error(invoke("models", "id"), "Missing argument")


def test_usage_errors_exit_2(empty_home: Path) -> None:
    usage_error(invoke("--network", "mainnet", "balance"), "not a network")
    usage_error(invoke("balance", "--network", "ftp://x"), "not a network")
    usage_error(invoke("balance", "--account", "test:x"), "test:N")
    key = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
    usage_error(invoke("deposit", "1", "--account", key), "secrets never")
    usage_error(invoke("deposit", "1", "--account", "0x" + "ab" * 20), "cannot sign")
    usage_error(invoke("deposit"), "Missing argument")
    usage_error(invoke("no-such-command"), "No such command")
    usage_error(invoke("session", "send", "zero", "hi"), "SESSION_ID")
    usage_error(invoke("chain", "up", "--port", "70000"), "--port")
    usage_error(invoke("treasury", "withdraw"), "AMOUNT or --all")


def test_no_local_chain_is_a_user_error(empty_home: Path) -> None:
    user_error(invoke("balance", "0x" + "11" * 20), "no local chain", "fabstir chain up")
    user_error(invoke("--json", "treasury", "info"), "no local chain")


def test_unreachable_network_is_a_user_error(empty_home: Path) -> None:
    port = free_port()
    user_error(
        invoke("balance", "0x" + "11" * 20, "--network", f"http://127.0.0.1:{port}"),
        "cannot reach",
        "Connection refused",
    )


def test_network_that_is_not_an_rpc_is_a_user_error(empty_home: Path) -> None:
    """A URL that answers HTTP but not JSON-RPC (here a real server that says 404 to
    everything) gets a one-line reason naming eth_chainId, not a traceback."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        user_error(
            invoke("balance", "0x" + "11" * 20, "--network", url), "did not answer eth_chainId"
        )
    finally:
        server.shutdown()
        server.server_close()


def test_chain_up_status_down(empty_home: Path) -> None:
    state_dir = empty_home / "mychain"
    port = free_port()
    try:
        up = ok_json(
            invoke("chain", "up", "--port", str(port), "--state-dir", str(state_dir), "--json")
        )
        assert up["running"] and up["port"] == port and up["chain_id"] == 31337
        assert up["rpc_url"] == f"http://127.0.0.1:{port}" and not up["already_running"]
        again = ok(invoke("chain", "up", "--state-dir", str(state_dir)))
        assert "already running" in again.stdout and up["rpc_url"] in again.stdout
        status = ok_json(invoke("--json", "chain", "status", "--state-dir", str(state_dir)))
        assert status["running"] and status["block"] == 0 and status["pid"] == up["pid"]
        human = ok(invoke("chain", "status", "--state-dir", str(state_dir))).stdout
        assert human.startswith("running: http://127.0.0.1:")
        down = ok_json(invoke("chain", "down", "--state-dir", str(state_dir), "--json"))
        assert down["stopped"] is True
        assert ok_json(invoke("chain", "status", "--state-dir", str(state_dir), "--json")) == {
            "running": False,
            "state_dir": str(state_dir),
        }
        assert (
            "no chain running" in ok(invoke("chain", "down", "--state-dir", str(state_dir))).stdout
        )
    finally:
        LocalChain(state_dir).down()


def test_chain_default_state_dir_is_fabstir_home(empty_home: Path) -> None:
    try:
        up = ok_json(invoke("chain", "up", "--json"))
        assert up["state_dir"] == str(empty_home / "chain")
        # `--network local` now finds it; nothing is deployed there yet.
        user_error(invoke("balance", "0x" + "11" * 20), "CONTRACT_NOT_CONFIGURED", "fabstir deploy")
    finally:
        LocalChain(empty_home / "chain").down()


def test_key_file_errors(empty_home: Path) -> None:
    bad = empty_home / "key"
    bad.write_text("not a key\n")
    chain = LocalChain(empty_home / "chain")
    chain.up(port=free_port(), persist=False)
    try:
        user_error(invoke("deposit", "1", env={"FABSTIR_KEY_FILE": str(bad)}), "32-byte hex")
        missing = str(empty_home / "missing")
        user_error(invoke("deposit", "1", env={"FABSTIR_KEY_FILE": missing}), "cannot read")
        user_error(invoke("deposit", "1"), "--account")
    finally:
        chain.down()


def test_console_script_subprocess(empty_home: Path) -> None:
    proc = run("--json", "models", "list")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["key"] == models.find().key
    bad = run("balance", "--network", "nowhere")
    assert bad.returncode == 2 and "not a network" in bad.stderr
    missing = run("balance", "0x" + "11" * 20)
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.strip().startswith("error: no local chain")
    assert len(missing.stderr.strip().splitlines()) == 1
    debug = run("--debug", "balance", "0x" + "11" * 20)
    assert debug.returncode == 1


def test_models_fetch_verifies_the_cached_file() -> None:
    entry = models.find()
    if not models.local_path(entry).is_file():
        pytest.skip("bundled model not fetched (fetching needs the network)")
    data = ok_json(invoke("models", "fetch", entry.key, "--json"))
    assert data["cached"] is True and data["sha256"] == entry.sha256
    assert data["path"] == str(models.local_path(entry))
    assert "sha256 verified" in ok(invoke("models", "fetch")).stdout


def test_short_hash_as_explorers_show_it() -> None:
    from fabstir.cli.output import short_hash

    assert short_hash("0x1234" + "00" * 29 + "abcd") == "0x1234…abcd"
    assert short_hash("0x12345678") == "0x12345678"  # nothing to gain


def test_demo_transaction_table_fits_80_columns() -> None:
    """The demo's transaction table shows shortened hashes, one line per transaction."""
    import io

    from rich.console import Console

    from fabstir.cli.demo import print_report
    from fabstir.demo import DemoReport, Tx

    tx_hash = "0x" + "ab" * 30 + "cdef"
    report = DemoReport(
        chain_id=31337,
        session_id=1,
        transactions=[Tx("createSessionFromWallet", tx_hash, 150_000)] * 3,
        books={"checks": {"tokens conserved": True}},
    )
    buf = io.StringIO()
    print_report(report, Console(file=buf, width=80, highlight=False))
    lines = buf.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    rows = [line for line in lines if "createSessionFromWallet" in line]
    assert len(rows) == 3 and all("0xabab…cdef" in row for row in rows)


def test_table_is_plain_text_padded_to_fit() -> None:
    """`table` (rich.table underneath): header, dashed rule, two spaces between columns,
    cells never wrapped however long, no markup or colour codes, None as '-'."""
    from fabstir.cli.output import table

    address = "0x" + "ab" * 20
    text = table(
        ["contract", "address", "block"],
        [("JobMarketplace", address, 12), ("[bold]FAB[/]", None, [True, False])],
    )
    assert text.splitlines() == [
        "contract        address                                     block",
        "--------------- ------------------------------------------- -------",
        f"JobMarketplace  {address}  12",
        "[bold]FAB[/]    -                                           yes, no",
    ]
    assert table(["id"], []) == "id\n--"
