"""The SDK's SessionManager against a real host worker: streaming (iterator and
callback forms), receipts signed as chunks arrive, pause and resume from another
SDK instance, completion and settlement, and the errors a client can meet."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.host_env import HostEnv
from support.waits import run
from support.worker import WorkerThread
from websockets.asyncio.server import serve

from fabstir.chain.local import free_port
from fabstir.protocol.messages import (
    Chunk,
    Hello,
    Prompt,
    SessionInit,
    SessionReady,
    new_nonce,
    parse_message,
)
from fabstir.protocol.receipts import ContentHasher, Receipt, check_receipt
from fabstir.sdk.errors import SDKError, SDKErrorCode
from fabstir.sdk.sdk import FabstirSDK
from fabstir.sdk.types import SessionStatus

CLIENT = 8
CONFIG = {"deposit_amount": "1.0", "price_per_token": 250, "duration": 3600, "proof_interval": 16}


@pytest.fixture
def make_sdk(hostenv: HostEnv, tmp_path: Path) -> Callable[[], FabstirSDK]:
    """A fresh client SDK each call, sharing one storage directory (like two
    processes of the same user)."""

    def make() -> FabstirSDK:
        return hostenv.client_sdk(CLIENT, tmp_path / "storage")

    return make


def _model(hostenv: HostEnv) -> str:
    return "0x" + hostenv.model_id.hex()


def test_stream_sign_and_settle(
    hostenv: HostEnv, start_worker: Callable[..., WorkerThread], make_sdk: Callable[[], FabstirSDK]
) -> None:
    worker = start_worker()
    sdk = make_sdk()
    sessions = sdk.get_session_manager()
    before = hostenv.balance(hostenv.client)

    async def scenario() -> tuple[Any, list[Any], str, str]:
        started = await sessions.start_session(
            _model(hostenv), hostenv.host.address, CONFIG, worker.url
        )
        chunks = [
            c
            async for c in sessions.send_prompt_streaming(
                started.session_id, "Count from one to ten.", max_tokens=40
            )
        ]
        pieces: list[str] = []
        whole = await sessions.send_prompt_streaming(
            started.session_id, "Say hello.", pieces.append, max_tokens=12
        )
        third = await sessions.send_prompt(started.session_id, "Thanks!", max_tokens=8)
        result = await sessions.complete_session(started.session_id)
        history = await sessions.get_session_history(started.session_id)
        return result, chunks, whole + "|" + "".join(pieces), third + str(history)

    result, chunks, both, _ = run(scenario())
    # Chunks carry the running token count; receipts were signed while streaming
    # (proof interval 16 < 40 tokens), so the host never stalled for long.
    counts = [c.tokens for c in chunks]
    assert counts == sorted(counts) and counts[-1] > 16
    whole, pieces = both.split("|")
    assert whole == pieces and whole
    assert result.status == SessionStatus.SETTLED and result.settled_by_host
    assert result.close_tx_hash is None and result.conversation_cid
    info = hostenv.session(result.session_id)
    assert info.tokensUsed == result.tokens_used == sessions.tokens_received(result.session_id)
    cost = result.tokens_used * CONFIG["price_per_token"]
    # The refund went back to the client's in-contract balance.
    assert hostenv.balance(hostenv.client) == before - cost


def test_pause_and_resume_from_another_sdk(
    hostenv: HostEnv, start_worker: Callable[..., WorkerThread], make_sdk: Callable[[], FabstirSDK]
) -> None:
    worker = start_worker()
    first = make_sdk().get_session_manager()

    async def part_one() -> int:
        started = await first.start_session(
            _model(hostenv), hostenv.host.address, CONFIG, worker.url
        )
        await first.send_prompt(started.session_id, "My name is Ada.", max_tokens=12)
        await first.pause_session(started.session_id)
        with pytest.raises(SDKError) as paused:
            await first.send_prompt(started.session_id, "Still there?")
        assert paused.value.code is SDKErrorCode.INVALID_SESSION_STATE
        return started.session_id

    sid = run(part_one())
    second = make_sdk().get_session_manager()  # a new process, same wallet

    async def part_two() -> Any:
        await second.resume_session(sid)
        await second.send_prompt(sid, "What is my name?", max_tokens=12)
        history = await second.get_session_history(sid)
        result = await second.complete_session(sid)
        return history, result

    history, result = run(part_two())
    assert [m.role for m in history.messages] == ["user", "assistant", "user", "assistant"]
    assert history.messages[0].content == "My name is Ada."
    assert result.status == SessionStatus.SETTLED
    assert result.tokens_used == history.tokens_received


def test_client_errors(
    hostenv: HostEnv, start_worker: Callable[..., WorkerThread], make_sdk: Callable[[], FabstirSDK]
) -> None:
    worker = start_worker()
    sessions = make_sdk().get_session_manager()

    async def scenario() -> None:
        with pytest.raises(SDKError) as unknown:
            await sessions.send_prompt(999_999, "hi")
        assert unknown.value.code is SDKErrorCode.SESSION_NOT_FOUND
        started = await sessions.start_session(
            _model(hostenv), hostenv.host.address, CONFIG, worker.url
        )
        with pytest.raises(SDKError) as empty:
            await sessions.send_prompt(started.session_id, "   ")
        assert empty.value.code is SDKErrorCode.INVALID_ARGUMENT
        await sessions.complete_session(started.session_id)
        with pytest.raises(SDKError) as done:
            await sessions.send_prompt(started.session_id, "more?")
        assert done.value.code is SDKErrorCode.INVALID_SESSION_STATE

    run(scenario())


def test_unreachable_host_leaves_nothing_stuck(
    hostenv: HostEnv, make_sdk: Callable[[], FabstirSDK]
) -> None:
    sessions = make_sdk().get_session_manager()
    dead = f"ws://127.0.0.1:{free_port()}"

    async def scenario() -> Any:
        with pytest.raises(SDKError) as refused:
            await sessions.start_session(_model(hostenv), hostenv.host.address, CONFIG, dead)
        return refused.value

    error = run(scenario())
    assert error.code is SDKErrorCode.WEBSOCKET_CONNECTION_FAILED
    # Escrowed before the host was tried: the SDK closed what it could not use, and
    # the error names the session and the close (after the window anyone may
    # finalize and the whole deposit comes back).
    sid = int(hostenv.mk.sessionCount())
    assert error.details["session_id"] == sid and error.details["close_tx"]
    assert f"session {sid} was opened on chain" in error.message
    assert "requested its close" in error.message
    info = hostenv.session(sid)
    assert info.status == int(SessionStatus.CLOSING) and info.tokensUsed == 0

    async def keep_open() -> Any:
        with pytest.raises(SDKError) as refused:
            await sessions.start_session(
                _model(hostenv), hostenv.host.address, CONFIG, dead, close_on_failure=False
            )
        return refused.value

    kept = run(keep_open())
    assert kept.details["session_id"] == sid + 1 and "close_tx" not in kept.details
    assert "still open" in kept.message
    assert hostenv.session(sid + 1).status == int(SessionStatus.ACTIVE)


def test_host_lying_about_the_transcript_gets_no_receipt(
    hostenv: HostEnv, make_sdk: Callable[[], FabstirSDK]
) -> None:
    """A host whose chunk hash does not match its text: the SDK stops and signs nothing."""
    port = free_port()
    domain = hostenv.domain

    async def liar(ws: Any) -> None:
        await ws.send(
            Hello(
                v=1,
                nonce=new_nonce(),
                host=hostenv.host.address,
                chain_id=domain.chain_id,
                marketplace=domain.verifying_contract,
                model_id=_model(hostenv),
            ).to_json()
        )
        init = parse_message(await ws.recv())
        assert isinstance(init, SessionInit)
        await ws.send(
            SessionReady(
                session_id=init.session_id,
                tokens_used=0,
                content_hash="0x" + "00" * 32,
                max_tokens=100,
                proof_interval=16,
                price_per_token=250,
            ).to_json()
        )
        prompt = parse_message(await ws.recv())
        assert isinstance(prompt, Prompt)
        bogus = Chunk(id=prompt.id, text="Paris", tokens_used=5, content_hash="0x" + "ab" * 32)
        await ws.send(bogus.to_json(1))
        await asyncio.sleep(5)

    sessions = make_sdk().get_session_manager()

    async def scenario() -> None:
        async with serve(liar, "127.0.0.1", port):
            started = await sessions.start_session(
                _model(hostenv), hostenv.host.address, CONFIG, f"ws://127.0.0.1:{port}"
            )
            with pytest.raises(SDKError) as lied:
                await sessions.send_prompt(started.session_id, "Capital of France?")
            assert lied.value.code is SDKErrorCode.PROOF_VERIFICATION_FAILED
            assert sessions.latest_receipt(started.session_id) is None
            await sessions.close_all()

    run(scenario())


def test_sdk_speaks_version_1_to_a_version_1_host(
    hostenv: HostEnv, make_sdk: Callable[[], FabstirSDK]
) -> None:
    """A host that speaks protocol version 1 (the frames as they were, scripted
    here byte for byte): the SDK sends no `v` in session_init, reads `tokens`
    in chunk/end/receipt_ack, and signs a receipt sent with `tokens` that the
    core checker accepts for the session's key."""
    port = free_port()
    domain = hostenv.domain
    seen: dict[str, Any] = {}

    async def old_host(ws: Any) -> None:
        nonce = new_nonce()
        await ws.send(
            json.dumps(
                {
                    "type": "hello",
                    "v": 1,
                    "nonce": nonce,
                    "host": hostenv.host.address,
                    "chain_id": domain.chain_id,
                    "marketplace": domain.verifying_contract,
                    "model_id": _model(hostenv),
                }
            )
        )
        seen["init"] = json.loads(await ws.recv())
        await ws.send(
            json.dumps(
                {
                    "type": "session_ready",
                    "session_id": seen["init"]["session_id"],
                    "tokens_used": 0,
                    "content_hash": "0x" + "00" * 32,
                    "max_tokens": 4000,
                    "proof_interval": 16,
                    "price_per_token": "250",
                }
            )
        )
        prompt = json.loads(await ws.recv())
        hasher = ContentHasher()
        hasher.update_prompt(prompt["text"])
        for n, text in enumerate(["Par", "is."], start=1):
            digest = hasher.update_chunk(text)
            await ws.send(
                json.dumps(
                    {
                        "type": "chunk",
                        "id": prompt["id"],
                        "text": text,
                        "tokens": n,
                        "content_hash": "0x" + digest.hex(),
                    }
                )
            )
        await ws.send(
            json.dumps(
                {
                    "type": "end",
                    "id": prompt["id"],
                    "tokens": 2,
                    "content_hash": hasher.hexdigest,
                    "finish_reason": "stop",
                }
            )
        )
        seen["receipt"] = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "receipt_ack", "tokens": 2}))
        await asyncio.sleep(5)

    sessions = make_sdk().get_session_manager()

    async def scenario() -> tuple[int, str]:
        async with serve(old_host, "127.0.0.1", port):
            started = await sessions.start_session(
                _model(hostenv), hostenv.host.address, CONFIG, f"ws://127.0.0.1:{port}"
            )
            answer = await sessions.send_prompt(started.session_id, "Capital of France?")
            await sessions.close_all()
            return started.session_id, answer

    sid, answer = run(scenario())
    assert answer == "Paris."
    assert "v" not in seen["init"] and seen["init"]["type"] == "session_init"
    raw = seen["receipt"]
    assert raw["type"] == "receipt" and raw["tokens"] == 2 and "tokens_used" not in raw
    receipt = Receipt(sid, raw["tokens"], raw["content_hash"], raw["signature"])
    info = make_sdk().get_session_job_manager().get_session(sid)
    check_receipt(receipt, domain, session_id=sid, signer=info.session_key)
