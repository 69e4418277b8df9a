"""Clients that vanish, reconnect or close on chain; idle sessions; shutdown; an RPC
endpoint that goes away during settlement; a model file that is not the registered one."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import websockets
from support.client_checkpoint import resume_and_close, serve_unsigned_then_checkpoint
from support.host_env import PRICE, HostEnv
from support.protocol_client import ProtocolClient, start_session
from support.tcp_proxy import TcpProxy
from support.waits import run, wait_until
from support.worker import WorkerThread, http_get, metric

from fabstir.host.config import Limits
from fabstir.host.engines.base import ModelVerificationError
from fabstir.protocol.messages import ErrorMessage
from fabstir.sdk.errors import SDKErrorCode

pytestmark = pytest.mark.usefixtures("hostenv")

STORY = "Write a long story about a lighthouse keeper and a storm."


def settled(w: WorkerThread, session_id: int) -> Any:
    rec = w.record(session_id)
    return rec if rec is not None and rec.state == "settled" else None


async def next_error(client: ProtocolClient, timeout: float = 15.0) -> tuple[str, bool]:
    """The next error frame's code, and whether the host then closed the connection."""
    code = ""
    try:
        while True:
            msg = await client.recv(timeout)
            if isinstance(msg, ErrorMessage) and not code:
                code = msg.code
    except websockets.ConnectionClosed:
        return code, True
    except TimeoutError:
        return code, False


def test_client_vanishes_mid_stream(hostenv: HostEnv, start_worker: Any) -> None:
    w = start_worker(limits=Limits(max_tokens_per_request=200, receipt_timeout=10.0))
    opened = hostenv.open_session(proof_interval=10)
    sid = opened.session_id

    async def first() -> ProtocolClient:
        client = await start_session(w.url, opened)
        await client.ask(STORY, 200, sign_every=5, stop_after=15)
        await client.wait_ack(10)
        await client.abort()  # gone, no close frame
        return client

    client = run(first())
    assert w.worker is not None and w.worker.server is not None
    server = w.worker.server

    async def idle() -> bool:
        s = server.sessions.get(sid)
        return s is not None and s.owner is None and s.running is None

    # The generation is cancelled (well before its 200 tokens), the session stays open.
    wait_until(lambda: w.call(idle), timeout=15)
    served = metric(http_get(w.http + "/metrics")[2], "fabstir_host_tokens_served_total")
    time.sleep(0.5)
    assert metric(http_get(w.http + "/metrics")[2], "fabstir_host_tokens_served_total") == served
    assert served < 200
    rec = w.record(sid)
    assert rec.state == "open" and rec.receipt_tokens >= 10

    async def resume() -> ProtocolClient:
        again = await client.reconnect(w.url, opened)
        # Rolled back to the newest stored receipt: the unsigned tail is not charged.
        assert again.tokens == rec.receipt_tokens
        reply = await again.ask("Now summarise it in one line.", 12)
        assert reply.end is not None and not reply.errors
        await again.close_session()
        return again

    again = run(resume())
    done = wait_until(lambda: settled(w, sid))
    assert done.receipt_tokens == again.tokens
    assert hostenv.session(sid).tokensUsed == again.tokens


def test_resume_on_a_new_connection_takes_over(hostenv: HostEnv, start_worker: Any) -> None:
    w = start_worker()
    opened = hostenv.open_session()

    async def scenario() -> tuple[tuple[str, bool], int]:
        a = await start_session(w.url, opened)
        await a.ask("Hello!", 6)
        b = await a.reconnect(w.url, opened)
        kicked = await next_error(a)
        reply = await b.ask("Still there?", 6)
        assert reply.end is not None and not reply.errors
        await b.aclose()
        return kicked, b.tokens

    kicked, _ = run(scenario())
    assert kicked == ("INVALID_SESSION_STATE", True)


def test_close_requested_on_chain_settles_with_the_newest_receipt(
    hostenv: HostEnv, start_worker: Any
) -> None:
    w = start_worker(settlement_interval=0.3, chain_poll_interval=0.3)
    opened = hostenv.open_session()
    sid = opened.session_id

    async def scenario() -> tuple[int, tuple[str, bool]]:
        client = await start_session(w.url, opened)
        await client.ask("List four fruits.", 12)
        # The client closes on chain instead of telling the host (its receipt was
        # never submitted: only the host has it).
        await asyncio.to_thread(hostenv.mk.requestClose, sid, sender=hostenv.client)
        return client.tokens, await next_error(client)

    tokens, kicked = run(scenario())
    assert kicked == ("INVALID_SESSION_STATE", True)
    rec = wait_until(lambda: settled(w, sid))
    assert rec.close_reason == "client_request"
    info = hostenv.session(sid)
    assert info.status == 3 and info.tokensUsed == tokens > 0


def test_idle_session_is_settled(hostenv: HostEnv, start_worker: Any) -> None:
    w = start_worker(idle_session_timeout=1.0, settlement_interval=0.3)
    opened = hostenv.open_session()

    async def scenario() -> int:
        client = await start_session(w.url, opened)
        await client.ask("Say yes.", 6)
        await client.abort()
        return client.tokens

    tokens = run(scenario())
    rec = wait_until(lambda: settled(w, opened.session_id), timeout=20)
    assert rec.close_reason == "idle"
    assert hostenv.session(opened.session_id).tokensUsed == tokens


def test_shutdown_settles_every_open_session_in_one_batch(
    hostenv: HostEnv, start_worker: Any
) -> None:
    w = start_worker(settlement_interval=60.0)
    sessions = [hostenv.open_session() for _ in range(3)]
    earnings0 = hostenv.earnings()

    async def scenario() -> list[int]:
        clients = [await start_session(w.url, s) for s in sessions]
        for i, client in enumerate(clients):
            await client.ask(f"Give me {i + 2} words.", 8)
        await asyncio.to_thread(w.stop)
        kicked = [await next_error(c) for c in clients]
        assert kicked == [("SERVICE_UNAVAILABLE", True)] * 3
        return [c.tokens for c in clients]

    tokens = run(scenario())
    import sqlite3

    rows = (
        sqlite3.connect(w.config.db_path)
        .execute("SELECT session_id, state, receipt_tokens, settle_tx FROM sessions")
        .fetchall()
    )
    assert [r[1] for r in rows] == ["settled"] * 3
    assert len({r[3] for r in rows}) == 1  # one settleBatch transaction
    for s, n in zip(sessions, tokens, strict=True):
        assert hostenv.session(s.session_id).tokensUsed == n
    assert hostenv.earnings() - earnings0 == sum(tokens) * PRICE * 9 // 10


def test_rpc_outage_during_settlement(hostenv: HostEnv, start_worker: Any) -> None:
    target = urlparse(hostenv.rpc_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 8545)
    proxy.start()
    try:
        w = start_worker(rpc_url=proxy.url, rpc_retry_attempts=2, settlement_interval=0.3)
        opened = hostenv.open_session()

        async def serve_and_close() -> int:
            client = await start_session(w.url, opened)
            await client.ask("Name a planet.", 8)
            proxy.stop()  # the chain goes away before the client closes
            await client.close_session()
            return client.tokens

        tokens = run(serve_and_close())
        time.sleep(2.0)
        rec = w.record(opened.session_id)
        assert rec.state == "closing" and rec.receipt_tokens == tokens
        health = json.loads(http_get(w.http + "/health")[2])
        assert health["status"] == "degraded"
        assert health["sessions"]["closing"] == 1
        assert health["settlement"]["lag_seconds"] > 1
        assert "unreachable" in health["settlement"]["last_error"]
        body = http_get(w.http + "/metrics")[2]
        assert metric(body, "fabstir_host_settlement_failures_total") >= 2
        assert metric(body, "fabstir_host_settlement_lag_seconds") > 1

        proxy.start()  # back: the loop settles without anyone's help
        wait_until(lambda: settled(w, opened.session_id), timeout=30)
        assert hostenv.session(opened.session_id).tokensUsed == tokens
        health = json.loads(http_get(w.http + "/health")[2])
        assert health["status"] == "ok" and health["settlement"]["lag_seconds"] == 0
    finally:
        proxy.stop()


def test_model_file_must_match_the_registry(make_config: Any, tmp_path: Path) -> None:
    bad = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 4096)
    w = WorkerThread(make_config(model_path=bad), engine=None)
    with pytest.raises(ModelVerificationError) as info:
        w.start()
    assert info.value.code is SDKErrorCode.INVALID_MODEL_HASH
    w.stop()


def test_resume_from_a_receipt_the_client_put_on_chain(hostenv: HostEnv, start_worker: Any) -> None:
    """The host never saw the receipt (the client submitted it itself): on resume it
    continues from the chain's receipt, whose hash it reads from the event."""
    w = start_worker()
    opened = hostenv.open_session()
    sid = opened.session_id

    client, receipt = serve_unsigned_then_checkpoint(hostenv, w.url, opened)
    assert w.record(sid).receipt_tokens == 0

    tokens = resume_and_close(client, w.url, opened, receipt)
    wait_until(lambda: settled(w, sid))
    assert hostenv.session(sid).tokensUsed == tokens > receipt.tokens_used
