"""Re-verifying a deployment's roles through an RPC that caps eth_getLogs ranges:
the role replay shrinks its range instead of failing with a raw RPC error."""

from __future__ import annotations

from typing import Any

from support.rpc_proxy import FaultProxy
from web3 import Web3

from fabstir.chain.system import DEFAULT_ADMIN_ROLE
from fabstir.chain.verify import role_holders_from_logs


def test_role_replay_through_capped_log_ranges(chain: Any, deployed: Any, deployer: Any) -> None:
    dep = deployed.deployment
    market = dep.addresses["JobMarketplace"]
    head = chain.blocks.head.number
    direct = role_holders_from_logs(
        Web3(Web3.HTTPProvider(chain.provider.uri)), market, dep.first_block, head
    )
    with FaultProxy(chain.provider.uri) as proxy:
        proxy.cap_logs(max_range=2, message="eth_getLogs is limited to a 2 block range")
        capped = role_holders_from_logs(
            Web3(Web3.HTTPProvider(proxy.url)), market, dep.first_block, head
        )
        assert proxy.injected["logs_refused"] >= 1
    assert capped == direct
    assert deployer.address in capped[DEFAULT_ADMIN_ROLE]
