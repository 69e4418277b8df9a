"""Value at risk on the host: with `post_receipt_value`, the worker posts the newest
receipt on chain (submitCheckpoint) once a session's unposted value reaches the
threshold, without ending the session, and /metrics shows what is at risk."""

from __future__ import annotations

import asyncio
from typing import Any

from support.host_env import PRICE, HostEnv
from support.protocol_client import start_session
from support.waits import run, wait_until
from support.worker import http_get


def _unposted(body: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("fabstir_host_unposted_value{")
    )


def test_receipts_are_posted_once_the_value_at_risk_reaches_the_threshold(
    hostenv: HostEnv, start_worker: Any
) -> None:
    threshold = 8 * PRICE  # 8 tokens' worth
    w = start_worker(settlement_interval=0.3, post_receipt_value=threshold)
    opened = hostenv.open_session()
    sid = opened.session_id

    def metrics() -> str:
        return http_get(w.http + "/metrics")[2]

    async def scenario() -> None:
        client = await start_session(w.url, opened)
        await client.ask("Name three birds.", 12)  # signed receipts as chunks arrive
        assert client.tokens >= 8
        # Posted on chain while the session stays open for more prompts.
        info = await asyncio.to_thread(
            wait_until,
            lambda: s if (s := hostenv.session(sid)).tokensUsed == client.tokens else None,
            20,
        )
        assert info.status == 1  # Active
        rec = await asyncio.to_thread(
            wait_until,
            lambda: r if (r := w.record(sid)).submitted_tokens == client.tokens else None,
        )
        assert rec.state == "open"
        await asyncio.to_thread(wait_until, lambda: _unposted(metrics()) == 0.0 or None)

        await client.ask("And two fish.", 4)  # below the threshold: stays off chain
        body = await asyncio.to_thread(
            wait_until, lambda: b if _unposted(b := metrics()) > 0 else None, 20
        )
        assert _unposted(body) == (client.tokens - rec.submitted_tokens) * PRICE < threshold
        assert hostenv.session(sid).tokensUsed == rec.submitted_tokens
        await client.aclose()

    run(scenario())
