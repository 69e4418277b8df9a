"""A paid session driven only through the CLI, against a real host worker
(`python -m fabstir.host` with the bundled model): start, send (in-process and as a
subprocess), chat, history, pause/resume, status, list, close; then the host and
the treasury withdraw what the session paid. Each command is a fresh SDK that
resumes the session from the client state stored in FABSTIR_HOME/storage."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from support.cli import CLIENT, HOST, address_of, invoke, ok, ok_json, run, run_json, user_error

pytestmark = pytest.mark.usefixtures("worker")

ME = ("--account", f"test:{CLIENT}")


@pytest.fixture(scope="module")
def started(worker: str) -> dict[str, Any]:
    data: dict[str, Any] = ok_json(
        invoke("session", "start", *ME, "--deposit", "1.0", "--proof-interval", "50", "--json")
    )
    assert data["host"] == address_of(HOST) and data["host_url"] == worker
    assert data["deposit"] == "1.0" and data["price_per_token"] == 200
    return data


def test_start(started: dict[str, Any]) -> None:
    status = ok_json(invoke("session", "status", str(started["session_id"]), "--json"))
    assert status["status"] == "ACTIVE" and status["depositor"] == address_of(CLIENT)
    assert status["remaining_tokens"] == 5000


def test_send_streams_the_answer(started: dict[str, Any]) -> None:
    sid = str(started["session_id"])
    human = ok(invoke("session", "send", sid, "Say hello.", "--max-tokens", "12", *ME))
    assert human.stdout.strip()  # the streamed answer
    data = ok_json(
        invoke(
            "session",
            "send",
            sid,
            "-",
            "--max-tokens",
            "8",
            "--json",
            *ME,
            input="Count to three.\n",
        )
    )
    assert data["session_id"] == started["session_id"] and data["answer"]
    assert data["prompt"] == "Count to three." and data["session_tokens"] > 0


def test_send_as_a_subprocess(started: dict[str, Any]) -> None:
    data = run_json(
        "session", "send", str(started["session_id"]), "One word, please.", "--max-tokens", "6", *ME
    )
    assert data["answer"] and data["session_tokens"] > 0


def test_chat_reads_prompts_from_stdin(started: dict[str, Any]) -> None:
    sid = str(started["session_id"])
    data = ok_json(
        invoke(
            "session",
            "chat",
            sid,
            "--max-tokens",
            "6",
            "--json",
            *ME,
            input="Hi\n\nWho are you?\n/exit\nignored\n",
        )
    )
    assert [t["prompt"] for t in data["turns"]] == ["Hi", "Who are you?"]
    assert all(t["answer"] for t in data["turns"])
    human = ok(invoke("session", "chat", sid, "--max-tokens", "4", *ME, input="Bye\n"))
    assert human.stdout.strip() and "paused" in human.stderr


def test_history(started: dict[str, Any]) -> None:
    data = ok_json(invoke("session", "history", str(started["session_id"]), "--json", *ME))
    prompts = [m["content"] for m in data["messages"] if m["role"] == "user"]
    assert prompts == [
        "Say hello.",
        "Count to three.",
        "One word, please.",
        "Hi",
        "Who are you?",
        "Bye",
    ]
    assert data["status"] == "ACTIVE"
    assert data["tokens_received"] == data["last_receipt_tokens"] > 0
    assert (
        "user: Say hello."
        in ok(invoke("session", "history", str(started["session_id"]), *ME)).stdout
    )
    # The stored state is the account's: another wallet cannot read it.
    user_error(
        invoke("session", "history", str(started["session_id"]), "--account", "test:9"),
        "SESSION_NOT_FOUND",
    )


def test_pause_and_resume(started: dict[str, Any]) -> None:
    sid = str(started["session_id"])
    paused = ok_json(invoke("session", "pause", sid, "--json", *ME))
    assert paused["paused"] is True and paused["tokens_received"] > 0
    resumed = ok_json(invoke("session", "resume", sid, "--json", *ME))
    assert resumed["resumed"] is True and resumed["messages"] == 12
    assert "is live with host" in ok(invoke("session", "resume", sid, *ME)).stdout


def test_list(started: dict[str, Any]) -> None:
    mine = ok_json(invoke("session", "list", *ME, "--json"))
    assert [s["session_id"] for s in mine] == [started["session_id"]]
    served = ok_json(invoke("session", "list", "--as-host", address_of(HOST), "--json"))
    assert [s["session_id"] for s in served] == [started["session_id"]]


def test_close_settles_and_refunds(started: dict[str, Any]) -> None:
    sid = str(started["session_id"])
    before = ok_json(invoke("balance", *ME, "--json"))
    result = ok_json(invoke("session", "close", sid, "--json", *ME))
    assert result["status"] == "SETTLED" and result["settled_by_host"] is True
    assert result["tokens_used"] > 0 and result["conversation_cid"]
    cost, refund = Decimal(result["cost"]), Decimal(result["refund"])
    assert cost == Decimal(result["tokens_used"] * 200) / 10**6 and cost + refund == 1
    after = ok_json(invoke("balance", *ME, "--json"))
    assert Decimal(after["deposited"]) == Decimal(before["deposited"]) + refund
    user_error(invoke("session", "send", sid, "more?", *ME), "INVALID_SESSION_STATE")
    status = ok_json(invoke("session", "status", sid, "--json"))
    assert status["status"] == "SETTLED" and status["tokens_used"] == result["tokens_used"]


def test_host_and_treasury_withdraw(started: dict[str, Any]) -> None:
    info = ok_json(invoke("treasury", "info", "--json"))
    fees = Decimal(info["balance"])
    assert fees > 0
    earned = ok_json(invoke("host", "status", "--account", f"test:{HOST}", "--json"))
    assert Decimal(earned["earnings"]) > 0 and earned["reputation"]["sessions_settled"] == 1
    paid = ok_json(invoke("host", "withdraw", "--account", f"test:{HOST}", "--json"))
    assert Decimal(paid["amount"]) == Decimal(earned["earnings"])
    assert (Decimal(paid["amount"]) + fees) * 10 == fees * 100  # 90 % / 10 %
    proc = run("treasury", "withdraw", "--all", "--account", "test:0")
    assert proc.returncode == 0, proc.stderr
    assert f"withdrew {fees} USDC" in proc.stdout
    assert ok_json(invoke("treasury", "info", "--json"))["balance"] == "0.0"
