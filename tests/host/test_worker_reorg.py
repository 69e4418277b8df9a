"""A reorg that drops the worker's settlement (found by the soak, issue 15): with
`confirmations` deeper than the reorg, the worker re-sends the same settlement and the
client's receipt is paid; before, the worker took one block as final on a local chain
and a reorg left the session unpaid by the host (finalized later with an older receipt)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from support.host_env import HostEnv
from support.protocol_client import ask_and_close
from support.waits import run, wait_until

from fabstir.host.config import ConfigError


def test_settlement_dropped_by_a_reorg_is_sent_again(hostenv: HostEnv, start_worker: Any) -> None:
    w = start_worker(settlement_interval=0.5, settlement_coalesce=0.1, confirmations=3)
    assert w.worker is not None and w.worker.chain is not None
    assert w.worker.chain.sender.confirmations == 3
    opened = hostenv.open_session()
    sid = opened.session_id

    tokens = run(ask_and_close(w.url, opened, "Name a river.", 8))
    assert tokens > 0
    mk = hostenv.mk
    wait_until(lambda: mk.getSession(sid).status == 3 or None, timeout=30)  # Settled
    # The block holding the settlement is replaced by an empty one.
    hostenv.rpc("anvil_reorg", 1, [])
    assert mk.getSession(sid).status != 3
    stop = threading.Event()

    def miner() -> None:
        while not stop.wait(0.3):
            hostenv.rpc("evm_mine")

    t = threading.Thread(target=miner)
    t.start()
    try:
        wait_until(lambda: mk.getSession(sid).status == 3 or None, timeout=60)
    finally:
        stop.set()
        t.join()
    assert mk.getSession(sid).tokensUsed == tokens


def test_confirmations_must_be_at_least_one(make_config: Any) -> None:
    with pytest.raises(ConfigError):
        make_config(confirmations=0)
