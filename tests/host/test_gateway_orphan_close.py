"""Found by the soak (issue 15): a session the gateway opened on chain, whose
start_session failed before the SDK kept any client state (an RPC outage between the
create transaction and the connect), could not be closed: complete_session raised
SESSION_NOT_FOUND, the pool gave up, and the deposit stayed locked until the session
expired and someone finalized it. The pool now asks the chain to close it with no
receipt (this wallet signed none). Real anvil, real contracts, real SQLite."""

from __future__ import annotations

import asyncio
from pathlib import Path

from support.host_env import HostEnv

from fabstir.gateway.ledger import Ledger
from fabstir.gateway.pool import PoolConfig, SessionPool
from fabstir.sdk.sdk import FabstirSDK
from fabstir.sdk.types import SessionStatus


def _pool(hostenv: HostEnv, tmp_path: Path) -> tuple[SessionPool, Ledger, FabstirSDK]:
    # Empty storage: the SDK has no client state for any session.
    sdk = hostenv.client_sdk(storage=tmp_path / "storage")
    ledger = Ledger(
        tmp_path / "gateway.db",
        chain_id=int(hostenv.chain.chain_id),
        marketplace=str(hostenv.mk.address),
        wallet=str(hostenv.client.address),
    )
    config = PoolConfig(budget=5_000_000, deposit=1_000_000, close_attempts=2)
    return SessionPool(sdk, ledger, config), ledger, sdk


def test_an_open_session_without_client_state_is_closed_on_chain(
    hostenv: HostEnv, tmp_path: Path
) -> None:
    opened = hostenv.open_session()  # on chain, but no SDK ever kept its state
    pool, ledger, sdk = _pool(hostenv, tmp_path)
    ledger.session_opened(
        opened.session_id, host=str(hostenv.host.address), model_id="0x" + hostenv.model_id.hex(),
        token="USDC", price=opened.price, deposit=opened.deposit, max_tokens=5000,
    )  # fmt: skip

    assert asyncio.run(pool.recover()) == [opened.session_id]
    info = sdk.get_session_job_manager().get_session(opened.session_id)
    assert info.status == SessionStatus.CLOSING  # the escrow comes back at finalize
    (record,) = ledger.sessions()
    assert (record.state, record.tokens) == ("closed", 0)
    ledger.close()


def test_a_session_already_closing_is_booked_closed_without_a_second_close(
    hostenv: HostEnv, tmp_path: Path
) -> None:
    opened = hostenv.open_session()
    hostenv.mk.requestClose(opened.session_id, sender=hostenv.client)
    pool, ledger, _sdk = _pool(hostenv, tmp_path)
    ledger.session_opened(
        opened.session_id, host=str(hostenv.host.address), model_id="0x" + hostenv.model_id.hex(),
        token="USDC", price=opened.price, deposit=opened.deposit, max_tokens=5000,
    )  # fmt: skip
    assert asyncio.run(pool.recover()) == [opened.session_id]
    assert ledger.sessions()[0].state == "closed"
    ledger.close()
