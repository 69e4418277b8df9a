"""`kill -9` of a worker process after receipts were acknowledged: on restart nothing
signed is lost. Runs `python -m fabstir.host` as a child process against the test anvil."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.host_env import PRICE, HostEnv
from support.protocol_client import ProtocolClient, start_session
from support.waits import run, wait_until
from support.worker import WorkerProcess

pytestmark = pytest.mark.usefixtures("hostenv")


def row(db: Path, session_id: int) -> tuple[Any, ...] | None:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT state, receipt_tokens, json_extract(receipt, '$.content_hash')"
            " FROM sessions WHERE session_id = ?",
            (session_id,),
        ).fetchone()


def test_kill9_after_receipts_then_restart(
    hostenv: HostEnv, tmp_path: Path, worker_args: tuple[list[str], dict[str, str]]
) -> None:
    args, env = worker_args
    db = tmp_path / "host.db"
    proc = WorkerProcess(args, env, tmp_path / "worker.log")
    try:
        proc.start()
        a = hostenv.open_session(proof_interval=8)  # resumed by its client after the crash
        b = hostenv.open_session(proof_interval=8)  # never comes back
        prompt = "Describe a sunrise in three sentences."

        async def before_crash() -> tuple[ProtocolClient, ProtocolClient, str]:
            ca = await start_session(proc.url, a)
            reply = await ca.ask(prompt, 24, sign_every=4)
            cb = await start_session(proc.url, b)
            await cb.ask("Name two rivers.", 12)
            return ca, cb, reply.text

        ca, cb, answer = run(before_crash())
        assert ca.acked == ca.tokens > 0 and cb.acked == cb.tokens > 0
        proc.kill9()

        # Every acknowledged receipt was on disk before its ack went out.
        assert row(db, a.session_id) == ("open", ca.tokens, ca.hasher.hexdigest)
        assert row(db, b.session_id) == ("open", cb.tokens, cb.hasher.hexdigest)

        proc.start()

        async def after_restart() -> ProtocolClient:
            # The new process lost the conversation; the client hands it back.
            again = await ca.reconnect(proc.url, a, history=[prompt, answer])
            assert again.tokens == ca.tokens
            reply = await again.ask("Now in one sentence.", 12)
            assert reply.end is not None and not reply.errors
            await again.close_session()
            return again

        again = run(after_restart())
        wait_until(lambda: (row(db, a.session_id) or ("",))[0] == "settled", timeout=30)
        assert hostenv.session(a.session_id).tokensUsed == again.tokens
        assert hostenv.session(b.session_id).status == 1  # still open on chain

        # A graceful stop settles the session whose client never returned.
        assert proc.terminate() == 0
        assert row(db, b.session_id)[0] == "settled"  # type: ignore[index]
        assert hostenv.session(b.session_id).tokensUsed == cb.tokens
        log = (tmp_path / "worker.log").read_text()
        assert "Traceback" not in log
        assert f"event=session_ready session={a.session_id}" in log and "resumed=history" in log
        assert "event=final_settlement done=true" in log
        assert hostenv.earnings() >= (again.tokens + cb.tokens) * PRICE * 9 // 10
    finally:
        proc.cleanup()


def test_cli_refuses_a_model_that_does_not_match_the_registry(
    tmp_path: Path, worker_args: tuple[list[str], dict[str, str]]
) -> None:
    args, env = worker_args
    bad = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(1024))
    result = subprocess.run(
        [sys.executable, "-m", "fabstir.host", *args, "--model-path", str(bad)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 3, result.stderr
    assert "event=model_refused code=INVALID_MODEL_HASH" in result.stderr


def test_cli_needs_a_key_file(
    tmp_path: Path, worker_args: tuple[list[str], dict[str, str]]
) -> None:
    args, env = worker_args
    env = {k: v for k, v in env.items() if k != "FABSTIR_HOST_KEY_FILE"}
    result = subprocess.run(
        [sys.executable, "-m", "fabstir.host", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "FABSTIR_HOST_KEY_FILE" in result.stderr
    assert signal.SIGTERM  # the worker handles SIGTERM (see test above)
