"""Every kind of bad input gets an `error` frame with its code; none crashes the worker
or stops it serving (docs/protocol.md, "Which codes a host sends, and when")."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import websockets
from support.host_env import HostEnv
from support.protocol_client import ProtocolClient, start_session
from support.waits import run

from fabstir.host.config import Limits
from fabstir.protocol.messages import (
    Cancel,
    Chunk,
    ErrorMessage,
    Prompt,
    ReceiptMessage,
    SessionInit,
    SessionReady,
)
from fabstir.protocol.receipts import SECP256K1_N, ReceiptSigner, sign_receipt

pytestmark = pytest.mark.usefixtures("hostenv")


async def closed(client: ProtocolClient, timeout: float = 10.0) -> bool:
    """True when the host closes the connection (after any frames still queued)."""
    try:
        while True:
            await asyncio.wait_for(client.ws.recv(), timeout)
    except websockets.ConnectionClosed:
        return True
    except TimeoutError:
        return False


def high_s(signature: str) -> str:
    """The malleable twin of a valid signature (same signer, s > n/2)."""
    raw = bytes.fromhex(signature[2:])
    s = SECP256K1_N - int.from_bytes(raw[32:64], "big")
    v = 27 if raw[64] == 28 else 28
    return "0x" + (raw[:32] + s.to_bytes(32, "big") + bytes([v])).hex()


def test_malformed_frames_get_error_frames(hostenv: HostEnv, start_worker: Any) -> None:
    w = start_worker(limits=Limits(max_frame_bytes=4096))
    opened = hostenv.open_session()
    cases: list[tuple[str | bytes, str]] = [
        ("not json", "MALFORMED_MESSAGE"),
        ("[1, 2]", "MALFORMED_MESSAGE"),
        ('{"type": "nope"}', "UNKNOWN_MESSAGE_TYPE"),
        ('{"type": "ping", "ts": 1, "ts": 2}', "MALFORMED_MESSAGE"),
        ('{"type": "ping", "ts": NaN}', "MALFORMED_MESSAGE"),
        ('{"type": "ping", "ts": 1, "extra": 0}', "MALFORMED_MESSAGE"),
        (Chunk(id="x", text="hi", tokens_used=1, content_hash="0x" + "00" * 32).to_json(),
         "UNKNOWN_MESSAGE_TYPE"),
        ("[" * 1000 + "]" * 1000, "MALFORMED_MESSAGE"),
        ('{"type":"prompt","id":"a","text":"\\ud800","max_tokens":4}', "MALFORMED_MESSAGE"),
        (b"\xff\xfe\x00", "MALFORMED_MESSAGE"),
        ("x" * 5000, "MESSAGE_TOO_LARGE"),
    ]  # fmt: skip

    async def scenario() -> tuple[list[str], list[str], str]:
        client = await ProtocolClient.connect(w.url)
        before = []
        for raw, _ in cases:
            await client.send_raw(raw)
            before.append((await client.error()).code)
        # Before session_init only ping and session_init are allowed.
        await client.send(Prompt(id="early", text="hi", max_tokens=2))
        early = await client.error()
        assert early.code == "NOT_INITIALIZED"
        await client.ping()
        ready = await client.init(opened.session_id, opened.key)
        assert isinstance(ready, SessionReady)
        after = []
        for raw, _ in cases:
            await client.send_raw(raw)
            after.append((await client.error()).code)
        await client.send(SessionInit(session_id=opened.session_id, signature="0x" + "11" * 65))
        again = await client.error()
        reply = await client.ask("Say hello.", 8)
        assert reply.end is not None and not reply.errors
        # Above twice the limit websockets itself closes the connection (1009)...
        await client.send_raw("[" * 9000)
        assert await closed(client)
        assert client.ws.close_code == 1009
        # ...and the session can be resumed on a new one.
        again_client = await client.reconnect(w.url, opened)
        await again_client.ping()
        await again_client.aclose()
        return before, after, again.code

    before, after, again = run(scenario())
    want = [code for _, code in cases]
    assert before == want and after == want
    assert again == "INVALID_SESSION_STATE"


def test_session_init_rejections(hostenv: HostEnv, start_worker: Any) -> None:
    w = start_worker(expiry_margin=120.0, limits=Limits(init_timeout=1.0))
    other_host = hostenv.open_session(host=hostenv.other_host)
    other_model = hostenv.open_session(model_id=hostenv.other_model_id)
    good = hostenv.open_session()
    short = hostenv.open_session(duration=90)  # ends inside the host's expiry margin
    settled = hostenv.open_session()
    hostenv.mk.settle(settled.session_id, sender=hostenv.host)
    closing = hostenv.open_session()
    hostenv.mk.requestClose(closing.session_id, sender=hostenv.client)
    spent = hostenv.open_session(deposit=1_000_000, price=100_000, proof_interval=10)
    receipt = sign_receipt(
        spent.key.key,
        hostenv.domain,
        spent.session_id,
        10,
        "0x" + "ab" * 32,
    )
    hostenv.mk.submitCheckpoint(
        spent.session_id, 10, bytes.fromhex("ab" * 32), receipt.signature_bytes,
        sender=hostenv.client,
    )  # fmt: skip
    stranger = hostenv.new_key()

    async def attempt(session_id: int, key: Any, signature: str | None = None) -> tuple[str, bool]:
        client = await ProtocolClient.connect(w.url)
        msg = await client.init(session_id, key, signature=signature)
        assert isinstance(msg, ErrorMessage), msg
        return msg.code, await closed(client)

    async def scenario() -> dict[str, tuple[str, bool]]:
        out = {
            "unknown": await attempt(9999, good.key),
            "other_host": await attempt(other_host.session_id, other_host.key),
            "other_model": await attempt(other_model.session_id, other_model.key),
            "wrong_signer": await attempt(good.session_id, stranger),
            "expired": await attempt(short.session_id, short.key),
            "settled": await attempt(settled.session_id, settled.key),
            "closing": await attempt(closing.session_id, closing.key),
            "spent": await attempt(spent.session_id, spent.key),
        }
        client = await ProtocolClient.connect(w.url)
        sig = ReceiptSigner(good.key.key, client.domain).sign_session_init(
            good.session_id, client.hello.nonce
        )
        await client.aclose()
        client = await ProtocolClient.connect(w.url)
        # A proof made for another connection's nonce is refused (single use).
        out["replayed_nonce"] = await attempt_with(client, good, sig)
        client = await ProtocolClient.connect(w.url)
        own = ReceiptSigner(good.key.key, client.domain).sign_session_init(
            good.session_id, client.hello.nonce
        )
        out["high_s"] = await attempt_with(client, good, high_s(own))
        client = await ProtocolClient.connect(w.url)
        timeout = await client.error(timeout=5)
        out["no_init"] = (timeout.code, await closed(client))
        # The worker still serves a good session after all of that.
        ok = await start_session(w.url, good)
        reply = await ok.ask("Say hi.", 4)
        await ok.aclose()
        assert reply.end is not None
        return out

    async def attempt_with(client: ProtocolClient, opened: Any, sig: str) -> tuple[str, bool]:
        msg = await client.init(opened.session_id, opened.key, signature=sig)
        assert isinstance(msg, ErrorMessage), msg
        return msg.code, await closed(client)

    out = run(scenario())
    assert out == {
        "unknown": ("SESSION_NOT_FOUND", True),
        "other_host": ("WRONG_HOST", True),
        "other_model": ("MODEL_MISMATCH", True),
        "wrong_signer": ("WRONG_SIGNER", True),
        "expired": ("SESSION_EXPIRED", True),
        "settled": ("INVALID_SESSION_STATE", True),
        "closing": ("INVALID_SESSION_STATE", True),
        "spent": ("SESSION_BUDGET_EXHAUSTED", True),
        "replayed_nonce": ("WRONG_SIGNER", True),
        "high_s": ("INVALID_PROOF", True),
        "no_init": ("NOT_INITIALIZED", True),
    }


def test_receipt_rejections(hostenv: HostEnv, start_worker: Any) -> None:
    w = start_worker()
    opened = hostenv.open_session(proof_interval=20)
    stranger = hostenv.new_key()

    async def scenario() -> dict[str, str]:
        client = await start_session(w.url, opened)
        reply = await client.ask("Name three colours.", 12)
        assert reply.end is not None and client.acked == reply.end.tokens_used
        tokens, digest = reply.end.tokens_used, reply.end.content_hash
        signer = client.signer
        assert signer is not None
        out = {}

        async def send(label: str, receipt: ReceiptMessage) -> None:
            await client.send(receipt)
            out[label] = (await client.error()).code

        mid = reply.chunks[len(reply.chunks) // 2]
        await send(
            "stale", ReceiptMessage.from_receipt(signer.sign(opened.session_id, tokens, digest))
        )
        await send(
            "older",
            ReceiptMessage.from_receipt(
                signer.sign(opened.session_id, mid.tokens_used, mid.content_hash)
            ),
        )
        # A state the host never sent: more tokens than it streamed, or another hash.
        await send(
            "forged_tokens",
            ReceiptMessage.from_receipt(signer.sign(opened.session_id, tokens + 1, digest)),
        )
        reply2 = await client.ask("And three animals.", 12, sign=False)
        assert reply2.end is not None
        t2, h2 = reply2.end.tokens_used, reply2.end.content_hash
        await send(
            "forged_hash",
            ReceiptMessage.from_receipt(signer.sign(opened.session_id, t2, "0x" + "cd" * 32)),
        )
        other = ReceiptSigner(stranger.key, client.domain)
        await send(
            "wrong_signer", ReceiptMessage.from_receipt(other.sign(opened.session_id, t2, h2))
        )
        good = signer.sign(opened.session_id, t2, h2)
        await send(
            "high_s",
            ReceiptMessage(
                session_id=opened.session_id,
                tokens_used=t2,
                content_hash=h2,
                signature=high_s(good.signature),
            ),
        )
        await send(
            "other_session", ReceiptMessage.from_receipt(signer.sign(opened.session_id + 1, t2, h2))
        )
        # The valid one is still accepted afterwards, and the session goes on.
        await client.sign(t2, h2)
        await client.wait_ack(t2)
        reply3 = await client.ask("Thanks!", 4)
        await client.aclose()
        assert reply3.end is not None and not reply3.errors
        return out

    out = run(scenario())
    assert out == {
        "stale": "STALE_RECEIPT",
        "older": "STALE_RECEIPT",
        "forged_tokens": "PROOF_VERIFICATION_FAILED",
        "forged_hash": "PROOF_VERIFICATION_FAILED",
        "wrong_signer": "WRONG_SIGNER",
        "high_s": "INVALID_PROOF",
        "other_session": "PROOF_VERIFICATION_FAILED",
    }


def test_prompt_limits(hostenv: HostEnv, start_worker: Any) -> None:
    w = start_worker(
        limits=Limits(max_prompt_chars=200, prompts_per_minute=4, max_tokens_per_request=64)
    )
    opened = hostenv.open_session()

    async def scenario() -> dict[str, Any]:
        client = await start_session(w.url, opened)
        out: dict[str, Any] = {}
        big = await client.ask("x" * 201, 4)
        out["oversize"] = (big.end, big.codes)
        empty = await client.ask("   ", 4)
        out["empty"] = (empty.end, empty.codes)
        # A second prompt while one runs; then cancel the first.
        await client.send(Prompt(id="long", text="Write a long essay about rivers.", max_tokens=64))
        await client.send(Prompt(id="second", text="Hi", max_tokens=4))
        busy = await client.error()
        await client.send(Cancel(id="long"))
        end = None
        while end is None:
            msg = await client.recv()
            if msg.TYPE == "chunk":
                client.tokens = msg.tokens_used  # type: ignore[attr-defined]
            if msg.TYPE == "end":
                end = msg
        out["busy"] = (busy.code, busy.id)
        out["cancelled"] = end.finish_reason  # type: ignore[attr-defined]
        out["cancelled_tokens"] = end.tokens_used  # type: ignore[attr-defined]
        rate = await client.ask("One more?", 2, sign=False)
        out["rate"] = rate.codes
        await client.aclose()
        return out

    out = run(scenario())
    assert out["oversize"] == (None, ["PROMPT_TOO_LARGE"])
    assert out["empty"] == (None, ["INVALID_ARGUMENT"])
    assert out["busy"] == ("INVALID_SESSION_STATE", "second")
    assert out["cancelled"] == "cancelled" and out["cancelled_tokens"] < 64
    assert out["rate"] == ["RATE_LIMITED"]


def test_too_many_connections_from_one_client(hostenv: HostEnv, start_worker: Any) -> None:
    w = start_worker(limits=Limits(max_connections_per_ip=2))

    async def scenario() -> tuple[str, bool]:
        a = await ProtocolClient.connect(w.url)
        b = await ProtocolClient.connect(w.url)
        ws = await websockets.connect(w.url)
        refusal = ErrorMessage.parse(await ws.recv())
        try:
            await asyncio.wait_for(ws.recv(), 10)
            was_closed = False
        except websockets.ConnectionClosed:
            was_closed = True
        await a.aclose()
        await asyncio.sleep(0.2)
        c = await ProtocolClient.connect(w.url)  # a slot is free again
        await b.aclose()
        await c.aclose()
        return refusal.code, was_closed

    code, was_closed = run(scenario())
    assert code == "TOO_MANY_CONNECTIONS" and was_closed


def test_paid_sessions_count_per_wallet_not_per_address(
    hostenv: HostEnv, start_worker: Any
) -> None:
    # A gateway opens many paid sessions from one machine: once a connection holds a
    # session it counts against the depositor, and only connections without one
    # count against the address.
    w = start_worker(limits=Limits(max_connections_per_ip=2, max_sessions_per_wallet=3))
    opened = [hostenv.open_session() for _ in range(4)]

    async def scenario() -> tuple[list[Any], str, list[str]]:
        clients, ready = [], []
        for o in opened[:3]:
            clients.append(c := await ProtocolClient.connect(w.url))
            ready.append(await c.init(o.session_id, o.key))
        fourth = await ProtocolClient.connect(w.url)
        refused = await fourth.init(opened[3].session_id, opened[3].key)
        await fourth.aclose()
        await asyncio.sleep(0.3)  # the refused connection's slot is freed on close
        idle = [await ProtocolClient.connect(w.url) for _ in range(2)]  # the address's 2
        ws = await websockets.connect(w.url)
        over = ErrorMessage.parse(await ws.recv())
        for c in [*clients, *idle]:
            await c.aclose()
        await ws.close()
        return ready, getattr(refused, "code", ""), [over.code]

    ready, fourth_code, over = run(scenario())
    assert all(isinstance(r, SessionReady) for r in ready), "3 sessions beyond 2 per address"
    assert fourth_code == "TOO_MANY_CONNECTIONS", "but the wallet's limit holds"
    assert over == ["TOO_MANY_CONNECTIONS"], "unauthenticated connections stay limited"
