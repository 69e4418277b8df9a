"""A whole session through the worker: greeting, on-chain checks, streaming with receipts,
the unsigned-token cap, close, and settlement on chain with the right amounts."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support.host_env import FEE_BPS, PRICE, HostEnv
from support.protocol_client import ProtocolClient, start_session
from support.waits import run, wait_until
from support.worker import http_get, metric

from fabstir.host.config import Limits
from fabstir.protocol.messages import PROTOCOL_VERSION, End, ErrorMessage, ReceiptAck, SessionReady
from fabstir.protocol.receipts import GENESIS_HASH

pytestmark = pytest.mark.usefixtures("hostenv")


def settled(worker: Any, session_id: int) -> Any:
    rec = worker.record(session_id)
    return rec if rec is not None and rec.state == "settled" else None


def test_full_session_streams_receipts_and_settles(hostenv: HostEnv, start_worker: Any) -> None:
    w = start_worker()
    opened = hostenv.open_session(proof_interval=8)
    earnings0, fees0 = hostenv.earnings(), hostenv.fees()
    balance0 = hostenv.balance(hostenv.client)

    async def scenario() -> tuple[list[Any], ProtocolClient]:
        client = await ProtocolClient.connect(w.url)
        hello = client.hello
        assert hello.v == PROTOCOL_VERSION == 2 and hello.chain_id == hostenv.chain.chain_id
        assert hello.host == hostenv.host.address
        assert hello.marketplace == hostenv.mk.address
        assert hello.model_id == "0x" + hostenv.model_id.hex()
        ready = await client.init(opened.session_id, opened.key)
        assert isinstance(ready, SessionReady)
        assert ready.tokens_used == 0 and ready.content_hash == "0x" + GENESIS_HASH.hex()
        assert ready.max_tokens == opened.deposit // PRICE
        assert ready.proof_interval == 8 and ready.price_per_token == PRICE
        first = await client.ask("Write a short story about a robot who paints.", max_tokens=24)
        second = await client.ask("And of Italy?", max_tokens=24, sign_every=3)
        await client.close_session()
        return [first, second], client

    replies, client = run(scenario())
    for reply in replies:
        assert reply.end is not None and reply.end.finish_reason in ("stop", "length")
        assert reply.text and not reply.errors
    # A version-2 client gets version-2 frames: the count is `tokens_used`.
    chunks = [json.loads(r) for r in client.raw if '"type":"chunk"' in r]
    assert chunks and all("tokens_used" in c and "tokens" not in c for c in chunks)
    # 24 tokens with a proof interval of 8: the host had to stop and ask.
    assert replies[0].requests
    total = client.tokens
    assert total == replies[1].end.tokens_used and client.acked == total  # type: ignore[union-attr]

    rec = wait_until(lambda: settled(w, opened.session_id))
    assert rec.receipt_tokens == total and rec.settle_tx
    info = hostenv.session(opened.session_id)
    assert info.status == 3 and info.tokensUsed == total
    payment = total * PRICE
    fee = payment * FEE_BPS // 10_000
    assert hostenv.earnings() - earnings0 == payment - fee
    assert hostenv.fees() - fees0 == fee
    # The refund of everything unused landed back in the client's balance.
    assert hostenv.balance(hostenv.client) - balance0 == opened.deposit - payment

    status, ctype, body = http_get(w.http + "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    assert metric(body, "fabstir_host_tokens_served_total") == total
    assert metric(body, "fabstir_host_settlements_total", outcome="ok") == 1
    assert metric(body, "fabstir_host_settled_tokens_total") == total


def test_unsigned_token_cap(hostenv: HostEnv, start_worker: Any) -> None:
    """A client that never signs gets proof_interval tokens, a receipt_request, and after
    the receipt timeout an `end` with "error" and RECEIPT_REQUIRED; nothing unsigned is
    ever paid."""
    w = start_worker(limits=Limits(max_tokens_per_request=64, receipt_timeout=1.0))
    opened = hostenv.open_session(proof_interval=5)

    async def scenario() -> Any:
        client = await start_session(w.url, opened)
        reply = await client.ask("Tell me a long story about dragons.", 40, sign=False)
        # The session is paused: a new prompt is refused until a receipt comes.
        again = await client.ask("More please.", 10, sign=False)
        await client.aclose()
        return client, reply, again

    _, reply, again = run(scenario())
    assert reply.requests and reply.requests[0].tokens_used == reply.chunks[-1].tokens_used
    assert reply.end is not None and reply.end.finish_reason == "error"
    assert reply.end.tokens_used <= 5
    assert reply.codes == ["RECEIPT_REQUIRED"]
    assert again.end is None and again.codes == ["RECEIPT_REQUIRED"]
    assert w.record(opened.session_id).receipt_tokens == 0


def test_cap_resumes_when_the_receipt_arrives(hostenv: HostEnv, start_worker: Any) -> None:
    w = start_worker()
    opened = hostenv.open_session(proof_interval=4)

    async def scenario() -> Any:
        client = await start_session(w.url, opened)
        reply = await client.ask("Count from one to twenty.", 20)
        await client.aclose()
        return reply, client

    reply, client = run(scenario())
    assert reply.end is not None and reply.end.finish_reason in ("stop", "length")
    assert len(reply.requests) >= 2
    # Never more than 4 tokens beyond the newest acknowledged receipt.
    acked, unsigned_max = 0, 0
    for msg in client.seen:
        if isinstance(msg, ReceiptAck):
            acked = max(acked, msg.tokens_used)
        elif hasattr(msg, "tokens") and not isinstance(msg, ErrorMessage):
            unsigned_max = max(unsigned_max, msg.tokens_used - acked)
    assert unsigned_max <= 4
    assert w.record(opened.session_id).receipt_tokens == reply.end.tokens_used


def test_budget_is_never_exceeded(hostenv: HostEnv, start_worker: Any) -> None:
    w = start_worker()
    # 1 USDC at 0.1 USDC per token: the deposit pays for 10 tokens.
    opened = hostenv.open_session(deposit=1_000_000, price=100_000, proof_interval=10)

    async def scenario() -> Any:
        client = await start_session(w.url, opened)
        first = await client.ask("Write a poem about the sea.", 50)
        second = await client.ask("Another one.", 50)
        await client.aclose()
        return first, second

    first, second = run(scenario())
    assert first.end is not None and first.end.finish_reason == "budget"
    assert first.end.tokens_used == 10
    assert first.codes == ["SESSION_BUDGET_EXHAUSTED"]
    assert second.end is None and second.codes == ["SESSION_BUDGET_EXHAUSTED"]


def test_health_and_models(hostenv: HostEnv, start_worker: Any) -> None:
    w = start_worker()
    status, ctype, body = http_get(w.http + "/health")
    assert status == 200 and ctype == "application/json"
    health = json.loads(body)
    assert health["status"] == "ok"
    assert health["address"] == hostenv.host.address
    assert health["model_id"] == "0x" + hostenv.model_id.hex()
    assert health["chain_id"] == hostenv.chain.chain_id
    assert health["sessions"]["open"] == 0 and health["settlement"]["lag_seconds"] == 0
    status, _, body = http_get(w.http + "/v1/models")
    models = json.loads(body)
    assert status == 200 and models["object"] == "list"
    assert models["data"][0]["model_id"] == health["model_id"]
    assert http_get(w.http + "/nope")[0] == 404
    assert End  # the message module is what the client speaks


def test_version_1_client_is_served_in_version_1(hostenv: HostEnv, start_worker: Any) -> None:
    """A client that speaks protocol version 1 (no `v` in session_init, receipts with
    `tokens`) gets every frame in version 1 and is paid for like any other."""
    w = start_worker()
    opened = hostenv.open_session(proof_interval=4)

    async def scenario() -> tuple[Any, ProtocolClient]:
        client = await ProtocolClient.connect(w.url, version=1)
        assert isinstance(await client.init(opened.session_id, opened.key), SessionReady)
        reply = await client.ask("Name a colour.", max_tokens=10)
        await client.close_session()
        return reply, client

    reply, client = run(scenario())
    assert reply.end is not None and not reply.errors and reply.acks
    sent = [json.loads(r) for r in client.raw]
    counted = [f for f in sent if f["type"] in ("chunk", "end", "receipt_request", "receipt_ack")]
    assert counted and all("tokens" in f and "tokens_used" not in f for f in counted)
    rec = wait_until(lambda: settled(w, opened.session_id))
    assert rec.receipt_tokens == client.tokens == hostenv.session(opened.session_id).tokensUsed
