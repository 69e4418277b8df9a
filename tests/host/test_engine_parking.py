"""The in-process llama.cpp engine stops decoding a sequence whose consumer stops reading
(a session held at its unsigned-token cap), keeps its KV cells, and resumes it: a client
that never signs costs the host no compute beyond one proofInterval (plus the engine's
small read-ahead), not a receipt timeout's worth of generation."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from support.host_env import HostEnv
from support.protocol_client import start_session
from support.waits import run

from fabstir.host.config import Limits
from fabstir.host.engines.base import ChatMessage
from fabstir.host.engines.llama import LlamaBatchEngine

pytestmark = pytest.mark.usefixtures("hostenv")

PROMPT = [ChatMessage("user", "Write a long story about a lighthouse keeper.")]
READ_AHEAD = 8  # LlamaBatchEngine's default


def test_a_consumer_that_stops_reading_parks_its_sequence(engine: LlamaBatchEngine) -> None:
    async def whole() -> str:
        return "".join([c.text async for c in engine.generate(PROMPT, max_tokens=60)])

    async def paused() -> tuple[str, int, int]:
        stream = engine.generate(PROMPT, max_tokens=60)
        text, n = "", 0
        it = aiter(stream)
        while n < 5:
            chunk = await anext(it)
            text, n = text + chunk.text, n + chunk.n_tokens
        before = engine.tokens_generated
        await asyncio.sleep(1.5)  # a whole answer takes well under this when not parked
        parked = engine.tokens_generated - before
        async for chunk in it:  # reading again resumes the same sequence
            text += chunk.text
        return text, parked, n

    want = run(whole())
    text, parked, _ = run(paused())
    # Parked at most read_ahead tokens past what was read (plus the one being decoded).
    assert parked <= READ_AHEAD + 1
    assert text == want  # resumed from its own KV cells: the same greedy answer


def test_a_client_that_never_signs_costs_one_interval_of_compute(
    hostenv: HostEnv, start_worker: Any, engine: LlamaBatchEngine
) -> None:
    w = start_worker(limits=Limits(max_tokens_per_request=200, receipt_timeout=3.0))
    opened = hostenv.open_session(proof_interval=8)
    before = engine.tokens_generated

    async def scenario() -> Any:
        client = await start_session(w.url, opened)
        started = time.monotonic()
        reply = await client.ask("Write a long story about a lighthouse keeper.", 200, sign=False)
        await client.aclose()
        return reply, time.monotonic() - started

    reply, elapsed = run(scenario())
    assert reply.requests and reply.end is not None and reply.end.finish_reason == "error"
    assert elapsed >= 3.0  # it waited out the receipt timeout...
    # ...without decoding on: 8 streamed tokens, one held back, the read-ahead at most.
    assert engine.tokens_generated - before <= 8 + READ_AHEAD + 4
