"""The worker behind an RPC that caps eth_getLogs (the fault proxy in front of anvil):
a restarted host still finds the receipt the client put on chain, by a bounded scan
from the deployment's first block (one request from block 0 was refused)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from support.client_checkpoint import resume_and_close, serve_unsigned_then_checkpoint
from support.host_env import HostEnv
from support.rpc_proxy import FaultProxy
from support.waits import wait_until
from support.worker import WorkerThread


def settled(w: WorkerThread, session_id: int) -> Any:
    rec = w.record(session_id)
    return rec if rec is not None and rec.state == "settled" else None


@pytest.fixture
def capped(hostenv: HostEnv) -> Iterator[FaultProxy]:
    with FaultProxy(hostenv.rpc_url) as proxy:
        proxy.cap_logs(max_range=4, message="block range too large")
        yield proxy


def test_resume_reads_the_onchain_receipt_through_capped_log_ranges(
    hostenv: HostEnv, start_worker: Any, capped: FaultProxy
) -> None:
    w = start_worker(rpc_url=capped.url)
    opened = hostenv.open_session()
    sid = opened.session_id

    client, receipt = serve_unsigned_then_checkpoint(hostenv, w.url, opened)
    tokens = resume_and_close(client, w.url, opened, receipt)
    assert capped.calls["eth_getLogs"] >= 1
    assert capped.injected["logs_refused"] >= 1  # the cap did bite, and was handled
    wait_until(lambda: settled(w, sid))
    assert hostenv.session(sid).tokensUsed == tokens > receipt.tokens_used
