"""A client's close handshake while the host's RPC is down (the fault proxy in front of
anvil answers every call with 503): the host admits the session from its store for
receipts and `close` only, marks it closing at once, and the settlement loop settles it
with the final receipt once the RPC is back. Before, session_init was answered
SERVICE_UNAVAILABLE and the session waited for the idle timeout."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from support.host_env import HostEnv
from support.protocol_client import ProtocolClient, start_session
from support.rpc_proxy import FaultProxy
from support.waits import run, wait_until
from support.worker import WorkerThread

from fabstir.protocol.messages import ErrorMessage


@pytest.fixture
def proxy(hostenv: HostEnv) -> Iterator[FaultProxy]:
    with FaultProxy(hostenv.rpc_url) as p:
        yield p


def _outage(proxy: FaultProxy) -> None:
    proxy.fail_next(-1, status=503)


def _settled(w: WorkerThread, session_id: int) -> Any:
    rec = w.record(session_id)
    return rec if rec is not None and rec.state == "settled" else None


def test_close_during_an_rpc_outage_is_accepted_and_settled_when_the_rpc_returns(
    hostenv: HostEnv, start_worker: Any, proxy: FaultProxy
) -> None:
    # Idle timeout far beyond the test: only the close can make the session closing.
    w = start_worker(rpc_url=proxy.url, rpc_retry_attempts=1, idle_session_timeout=3600.0)
    opened = hostenv.open_session()
    sid = opened.session_id

    async def serve() -> ProtocolClient:
        client = await start_session(w.url, opened)
        await client.ask("Name a planet.", 8)  # the final receipt is signed and acked
        await client.aclose()  # the connection drops; the client comes back to close
        return client

    client = run(serve())
    tokens = client.tokens
    assert tokens > 0 and w.record(sid).receipt_tokens == tokens
    _outage(proxy)

    async def close_again() -> tuple[int, list[str]]:
        again = await client.reconnect(w.url, opened)  # session_ready, from the store
        # Nothing is served without the chain's word on the session...
        refused = await again.ask("One more word.", 4)
        # ...but the close is taken.
        await again.close_session()
        return again.tokens, refused.codes

    resumed_at, codes = run(close_again())
    assert resumed_at == tokens
    assert codes == ["SERVICE_UNAVAILABLE"]
    rec = w.record(sid)
    assert rec.state == "closing" and rec.close_reason == "client"
    assert rec.receipt_tokens == tokens
    assert proxy.injected["status"] > 0
    assert hostenv.session(sid).status == 1  # still active on chain: nothing got through

    proxy.clear()  # the RPC is back: the loop settles without anyone's help
    rec = wait_until(lambda: _settled(w, sid), timeout=30)
    info = hostenv.session(sid)
    assert info.status == 3 and info.tokensUsed == tokens == rec.submitted_tokens


def test_during_an_outage_only_known_open_sessions_are_admitted(
    hostenv: HostEnv, start_worker: Any, proxy: FaultProxy
) -> None:
    w = start_worker(rpc_url=proxy.url, rpc_retry_attempts=1)
    known, unknown = hostenv.open_session(), hostenv.open_session()

    async def serve() -> None:
        client = await start_session(w.url, known)
        await client.ask("Name a colour.", 4)
        await client.aclose()

    run(serve())
    _outage(proxy)

    async def init(opened: Any, key: Any) -> str:
        c = await ProtocolClient.connect(w.url)
        try:
            msg = await c.init(opened.session_id, key)
        except websockets.ConnectionClosed:
            return "closed"
        finally:
            await c.aclose()
        return msg.code if isinstance(msg, ErrorMessage) else msg.TYPE

    # Never seen by this host: its terms can only come from the chain.
    assert run(init(unknown, unknown.key)) == "SERVICE_UNAVAILABLE"
    # Known, but the init is not signed by the session's key.
    assert run(init(known, unknown.key)) == "WRONG_SIGNER"
    assert w.record(known.session_id).state == "open"
    proxy.clear()  # so that the worker's shutdown settles at once
