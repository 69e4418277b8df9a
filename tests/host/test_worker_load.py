"""50 clients at once on loopback: every one served completely and correctly, every
session settled on chain with exactly the tokens its client signed for."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support.host_env import PRICE, HostEnv
from support.protocol_client import Reply, start_session
from support.waits import run, wait_until
from support.worker import http_get, metric

from fabstir.host.config import Limits

pytestmark = pytest.mark.usefixtures("hostenv")

N_CLIENTS = 50
TOPICS = ["cats", "rain", "bread", "trains", "music", "snow", "bees", "maps", "tea", "kites"]


def test_fifty_concurrent_clients(hostenv: HostEnv, start_worker: Any) -> None:
    w = start_worker(
        limits=Limits(max_connections_per_ip=N_CLIENTS + 4, max_tokens_per_request=8),
        settlement_interval=0.5,
        settlement_coalesce=0.5,
    )
    sessions = [hostenv.open_session(proof_interval=4) for _ in range(N_CLIENTS)]
    earnings0 = hostenv.earnings()

    async def one(i: int) -> tuple[int, Reply]:
        client = await start_session(w.url, sessions[i])
        reply = await client.ask(
            f"Write one sentence about {TOPICS[i % len(TOPICS)]}.", 8, timeout=150
        )
        await client.close_session()
        return client.tokens, reply

    async def everyone() -> list[tuple[int, Reply]]:
        return await asyncio.gather(*(one(i) for i in range(N_CLIENTS)))

    results = run(everyone(), timeout=240)
    for tokens, reply in results:
        assert reply.end is not None and reply.end.finish_reason in ("stop", "length")
        assert not reply.errors and reply.text
        assert 0 < tokens <= 8 and tokens == reply.end.tokens_used

    assert w.worker is not None and w.worker.store is not None
    store = w.worker.store

    async def settled_count() -> int:
        return len(await store.by_state("settled"))

    wait_until(lambda: w.call(settled_count) == N_CLIENTS, timeout=60)
    for opened, (tokens, _) in zip(sessions, results, strict=True):
        info = hostenv.session(opened.session_id)
        assert info.status == 3 and info.tokensUsed == tokens
    total = sum(tokens for tokens, _ in results)
    assert hostenv.earnings() - earnings0 == total * PRICE - total * PRICE // 10
    body = http_get(w.http + "/metrics")[2]
    assert metric(body, "fabstir_host_settled_tokens_total") == total
    # Closes that arrive together are settled together.
    assert metric(body, "fabstir_host_settlement_transactions_total") < N_CLIENTS
