"""Found by the short soak (issue 15): a reorg dropped a client's createSession and the
next session (another client's) got the same id. The SDK then took that session for
its own: complete_session reported the other client's settlement as this client's
("settled by the host", its cost and refund), and resume_session tried to use it.
Now both say SESSION_NOT_FOUND: the chain's session under that id has another
session key. Real anvil (anvil_reorg), real contracts, a real host worker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from support.host_env import HostEnv
from support.waits import run
from support.worker import WorkerThread

from fabstir.sdk.errors import SDKError, SDKErrorCode
from fabstir.sdk.types import SessionStatus

CONFIG = {"deposit_amount": "1.0", "price_per_token": 250, "duration": 3600, "proof_interval": 16}


def test_a_session_reorganised_away_is_not_taken_for_the_one_that_got_its_id(
    hostenv: HostEnv, start_worker: Callable[..., WorkerThread], tmp_path: Path
) -> None:
    worker = start_worker()
    sessions = hostenv.client_sdk(storage=tmp_path / "storage").get_session_manager()
    escrowed_before = int(hostenv.mk.escrowedOf(hostenv.client, hostenv.usdc))

    async def scenario() -> tuple[int, SDKError, SDKError]:
        before = int(await asyncio.to_thread(hostenv.rpc, "eth_blockNumber"), 16)
        started = await sessions.start_session(
            "0x" + hostenv.model_id.hex(), hostenv.host.address, CONFIG, worker.url
        )
        sid = started.session_id
        await sessions.send_prompt(sid, "Name a river.", max_tokens=8)
        # The blocks since `before` (the creation) are replaced by empty ones...
        now = int(await asyncio.to_thread(hostenv.rpc, "eth_blockNumber"), 16)
        await asyncio.to_thread(hostenv.rpc, "anvil_reorg", now - before, [])
        # ...and another client's session gets the id, and is settled.
        other = await asyncio.to_thread(hostenv.open_session, depositor=hostenv.client2)
        assert other.session_id == sid
        hostenv.mk.requestClose(sid, sender=hostenv.client2)
        with pytest.raises(SDKError) as completing:
            await sessions.complete_session(sid, settle_timeout=1.0)
        with pytest.raises(SDKError) as resuming:
            await sessions.resume_session(sid)
        return sid, completing.value, resuming.value

    sid, completing, resuming = run(scenario())
    assert completing.code is SDKErrorCode.SESSION_NOT_FOUND, completing
    assert "reorganised away" in completing.message
    assert resuming.code is SDKErrorCode.SESSION_NOT_FOUND, resuming
    # The other client's session is untouched, and none of this client's money is held.
    info = hostenv.client_sdk(storage=tmp_path / "other").get_session_job_manager().get_session(sid)
    assert info.depositor == hostenv.client2.address and info.status == SessionStatus.CLOSING
    assert int(hostenv.mk.escrowedOf(hostenv.client, hostenv.usdc)) == escrowed_before
