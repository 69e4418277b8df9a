"""Found by a clean-clone `make test` under load: the gateway opened 3 sessions with one
host although `sessions_per_host` is 2. A session that finished opening was counted
off `_opening` in one critical section and registered in a later one; a request
waiting on the pool could take the lock in between, count neither, and open one more
(and spend the deposit the first had just stopped reserving). Under load that
interleaving comes from requests arriving while the lock is held; here a task holding
the pool's lock forces it.

Real pool, real SDK, real host worker and llama.cpp, real anvil."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import test_gateway as tg

from fabstir.gateway.ledger import Ledger
from fabstir.gateway.pool import ModelEntry, PooledSession, SessionPool

# The two-host market and its second engine, shared with test_gateway.py.
market = tg.market
second_engine = tg.second_engine


def test_sessions_per_host_holds_when_a_waiter_runs_right_after_an_open(
    market: tg.Market, tmp_path: Path
) -> None:
    sdk = market.sdk(tmp_path / "storage")
    domain = sdk.receipt_domain()
    ledger = Ledger(
        tmp_path / "gateway.db",
        chain_id=domain.chain_id,
        marketplace=domain.verifying_contract,
        wallet=str(sdk.address),
    )
    pool = SessionPool(sdk, ledger, replace(tg.POOL, sessions_per_host=2))
    real_open = pool._open
    late: list[asyncio.Task[PooledSession]] = []

    async def hold_while_a_request_arrives(model: ModelEntry) -> None:
        # Hold the pool's lock while the open that just ended queues for it, and let a
        # new request queue behind it: the lock then goes to the opener first.
        async with pool._changed:
            await asyncio.sleep(0)
            late.append(asyncio.create_task(pool.acquire(model, 24, set())))
            await asyncio.sleep(0.05)

    async def open_then_contend(model: ModelEntry, *args: Any) -> PooledSession:
        opened = await real_open(model, *args)
        if not late:
            asyncio.get_running_loop().create_task(hold_while_a_request_arrives(model))
            await asyncio.sleep(0)  # the holder takes the lock before this returns
        return opened

    pool._open = open_then_contend  # type: ignore[method-assign,assignment]
    before = market.session_count()

    async def scenario() -> int:
        model = await pool.resolve(tg.MODEL)
        first = [asyncio.create_task(pool.acquire(model, 24, set())) for _ in range(2)]
        held = [await t for t in first]
        # Give a third session every chance to open, were the limit not held.
        await asyncio.sleep(3)
        count = market.session_count() - before + sum(pool._opening.values())
        for s in held:
            await pool.release(s)
        for t in late:
            await pool.release(await t)  # the late request gets one of the two
        await pool.close_all()
        return count

    try:
        count = asyncio.run(scenario())
    finally:
        ledger.close()
    assert late, "the late request was never made"
    assert count <= 2, f"{count} sessions opened with one host; the limit is 2"
